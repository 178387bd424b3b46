package registry

import (
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"ballena.dev/signing"
)

// firstByte times a GET until the first byte of the body arrives, then reads
// the rest.
func firstByte(tb testing.TB, url string) time.Duration {
	tb.Helper()
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	one := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, one); err != nil || resp.StatusCode != 200 {
		tb.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	d := time.Since(start)
	io.Copy(io.Discard, resp.Body)
	return d
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkPull50MiB: a 50 MiB image (one random layer) pulled from a node
// that holds it and from one that must fetch it from the mesh first: the
// first-byte latency of the manifest and of the big layer, and the time of a
// whole `ctr image pull` from each, beside `skopeo copy` of the same image
// from a plain OCI layout directory. Blobs reach a client only once the whole
// release verified (fetched, sha256 of the file, each blob's digest).
// Root (containerd): go test -run '^$' -bench Pull50MiB -benchtime 1x ./registry/
func BenchmarkPull50MiB(b *testing.B) {
	c := startContainerd(b)
	skopeo := requireTool(b, "skopeo", "skopeo")
	m := newMesh(b)
	holder := newEnv(b, envOpts{store: m.holderStore})
	holder.pub, holder.priv = m.e.pub, m.e.priv
	holder.policy.Store(signing.PolicyForKeys(m.e.pub))
	hostOf := func(e *env) string { return strings.TrimPrefix(e.url, "http://") }
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// Two different images, so containerd holds nothing of the second.
		dir := b.TempDir()
		pa, imgA := testImage(b, dir, 50<<20)
		pb, imgB := testImage(b, b.TempDir(), 50<<20)
		va, vb := "1.0."+strconv.Itoa(2*i), "1.0."+strconv.Itoa(2*i+1)
		m.publish(b, pa, "big", va, m.e.priv)
		m.publish(b, pb, "big", vb, m.e.priv)
		ma, _ := imgA.Manifest()
		mb, _ := imgB.Manifest()
		b.StartTimer()

		// Held: the first request indexes the release (hashes the 50 MiB file).
		cold := firstByte(b, holder.url+"/v2/big/manifests/"+va)
		warm := firstByte(b, holder.url+"/v2/big/manifests/"+va)
		layer := firstByte(b, holder.url+"/v2/big/blobs/"+ma.Layers[1].Digest.String())
		start := time.Now()
		c.ctr(b, "images", "pull", "--plain-http", "--snapshotter", "native", hostOf(holder)+"/big:"+va)
		pullHeld := time.Since(start)

		// Fetched: the first request waits for the fetch from the mesh.
		meshFirst := firstByte(b, m.e.url+"/v2/big/manifests/"+vb)
		meshLayer := firstByte(b, m.e.url+"/v2/big/blobs/"+mb.Layers[1].Digest.String())
		b.StopTimer()
		// The same through ctr, of a third image the fetcher never held.
		pc, _ := testImage(b, b.TempDir(), 50<<20)
		vc := "1.0." + strconv.Itoa(1000+i)
		m.publish(b, pc, "big", vc, m.e.priv)
		b.StartTimer()
		start = time.Now()
		c.ctr(b, "images", "pull", "--plain-http", "--snapshotter", "native", hostOf(m.e)+"/big:"+vc)
		pullMesh := time.Since(start)

		// Baseline: skopeo copy from a plain OCI layout.
		b.StopTimer()
		layoutDir := filepath.Join(dir, "layout")
		runTool(b, skopeo, "--insecure-policy", "copy", "docker-archive:"+pa, "oci:"+layoutDir+":big")
		b.StartTimer()
		start = time.Now()
		runTool(b, skopeo, "--insecure-policy", "copy", "oci:"+layoutDir+":big", "oci:"+filepath.Join(dir, "out")+":big")
		skopeoLayout := time.Since(start)
		start = time.Now()
		runTool(b, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+hostOf(holder)+"/big:"+va, "oci:"+filepath.Join(dir, "out2")+":big")
		skopeoRegistry := time.Since(start)

		b.ReportMetric(ms(cold), "ms-held-manifest-cold")
		b.ReportMetric(ms(warm), "ms-held-manifest-warm")
		b.ReportMetric(ms(layer), "ms-held-layer")
		b.ReportMetric(ms(meshFirst), "ms-mesh-manifest")
		b.ReportMetric(ms(meshLayer), "ms-mesh-layer")
		b.ReportMetric(ms(pullHeld), "ms-ctr-pull-held")
		b.ReportMetric(ms(pullMesh), "ms-ctr-pull-mesh")
		b.ReportMetric(ms(skopeoLayout), "ms-skopeo-layout")
		b.ReportMetric(ms(skopeoRegistry), "ms-skopeo-registry")
	}
}
