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

// BenchmarkPull50MiB: 50 MiB images (one random layer each) pulled from a
// node that holds them and from one that must fetch them from the mesh first:
// the first-byte latency of the manifest and of the big layer, and the time of
// `ctr content fetch` (download only) and `ctr image pull` (download and
// unpack, native snapshotter) from each, beside `skopeo copy` of the same
// image from a plain OCI layout directory and from the holder's registry.
// Blobs reach a client only once the whole release verified (fetched, sha256
// of the file, each blob's digest).
// Root (containerd): go test -run '^$' -bench Pull50MiB -benchtime 1x ./registry/
func BenchmarkPull50MiB(b *testing.B) {
	c := startContainerd(b)
	skopeo := requireTool(b, "skopeo", "skopeo")
	m := newMesh(b)
	holder := newEnv(b, envOpts{store: m.holderStore})
	holder.pub, holder.priv = m.e.pub, m.e.priv
	holder.policy.Store(signing.PolicyForKeys(m.e.pub))
	hostOf := func(e *env) string { return strings.TrimPrefix(e.url, "http://") }
	n := 0
	// next publishes a new 50 MiB image on the holder: containerd holds
	// nothing of it and the fetcher has never seen it.
	next := func() (path, version string, layer string) {
		b.Helper()
		p, img := testImage(b, b.TempDir(), 50<<20)
		n++
		version = "1.0." + strconv.Itoa(n)
		m.publish(b, p, "big", version, m.e.priv)
		mf, _ := img.Manifest()
		return p, version, mf.Layers[1].Digest.String()
	}
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		pa, va, la := next()
		_, vb, lb := next()
		_, vc, _ := next()
		_, vd, _ := next()
		_, ve, _ := next()
		layoutDir := filepath.Join(b.TempDir(), "layout")
		runTool(b, skopeo, "--insecure-policy", "copy", "docker-archive:"+pa, "oci:"+layoutDir+":big")
		b.StartTimer()

		// Held: the first request reads the release (hashes the 50 MiB file).
		cold := firstByte(b, holder.url+"/v2/big/manifests/"+va)
		warm := firstByte(b, holder.url+"/v2/big/manifests/"+va)
		layer := firstByte(b, holder.url+"/v2/big/blobs/"+la)
		fetchHeld := timed(func() { c.ctr(b, "content", "fetch", "--plain-http", hostOf(holder)+"/big:"+vc) })
		pullHeld := timed(func() {
			c.ctr(b, "images", "pull", "--plain-http", "--snapshotter", "native", hostOf(holder)+"/big:"+va)
		})
		// Fetched: the first request waits for the release to come from the mesh.
		meshFirst := firstByte(b, m.e.url+"/v2/big/manifests/"+vb)
		meshLayer := firstByte(b, m.e.url+"/v2/big/blobs/"+lb)
		fetchMesh := timed(func() { c.ctr(b, "content", "fetch", "--plain-http", hostOf(m.e)+"/big:"+vd) })
		pullMesh := timed(func() {
			c.ctr(b, "images", "pull", "--plain-http", "--snapshotter", "native", hostOf(m.e)+"/big:"+ve)
		})
		skopeoLayout := timed(func() {
			runTool(b, skopeo, "--insecure-policy", "copy", "oci:"+layoutDir+":big", "oci:"+filepath.Join(b.TempDir(), "out")+":big")
		})
		skopeoRegistry := timed(func() {
			runTool(b, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+hostOf(holder)+"/big:"+va,
				"oci:"+filepath.Join(b.TempDir(), "out")+":big")
		})

		b.ReportMetric(ms(cold), "ms-held-manifest-cold")
		b.ReportMetric(ms(warm), "ms-held-manifest-warm")
		b.ReportMetric(ms(layer), "ms-held-layer")
		b.ReportMetric(ms(meshFirst), "ms-mesh-manifest")
		b.ReportMetric(ms(meshLayer), "ms-mesh-layer")
		b.ReportMetric(ms(fetchHeld), "ms-ctr-fetch-held")
		b.ReportMetric(ms(fetchMesh), "ms-ctr-fetch-mesh")
		b.ReportMetric(ms(pullHeld), "ms-ctr-pull-held")
		b.ReportMetric(ms(pullMesh), "ms-ctr-pull-mesh")
		b.ReportMetric(ms(skopeoLayout), "ms-skopeo-layout")
		b.ReportMetric(ms(skopeoRegistry), "ms-skopeo-registry")
	}
}
