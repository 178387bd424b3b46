package registry

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/internal/metricstest"
	"ballena.dev/internal/poll"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// meshNode is a swarm node on loopback with its own store, trusting pub.
func meshNode(t testing.TB, pub ed25519.PublicKey, boot *swarm.Node) (*swarm.Node, *artifact.Store) {
	t.Helper()
	dir := t.TempDir()
	st, err := artifact.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	var bootstrap []peer.AddrInfo
	if boot != nil {
		bootstrap = []peer.AddrInfo{{ID: boot.ID(), Addrs: boot.Host().Addrs()}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := swarm.NewNode(ctx, swarm.NodeConfig{
		DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: bootstrap,
		Store: st, Policy: signing.PolicyForKeys(pub), StallTimeout: 30 * time.Second,
		Logger: logger(t),
	})
	if err != nil {
		cancel()
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		n.Close()
		st.Close()
	})
	return n, st
}

// mesh is a holder node that published images and a fetcher node, that never
// held them, serving a registry that fetches from the mesh.
type mesh struct {
	holder, fetcher *swarm.Node
	holderStore     *artifact.Store
	e               *env // the fetcher's registry
}

func newMesh(t testing.TB, maps ...string) *mesh {
	t.Helper()
	pub, priv, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{}
	m.holder, m.holderStore = meshNode(t, pub, nil)
	var fst *artifact.Store
	m.fetcher, fst = meshNode(t, pub, m.holder)
	m.e = newEnv(t, envOpts{store: fst, maps: maps, fetch: func(ctx context.Context, ref artifact.Ref, found func()) (artifact.Release, error) {
		return m.fetcher.Fetch(ctx, ref, func(swarm.Progress) { found() })
	}})
	m.e.pub, m.e.priv = pub, priv
	m.e.policy.Store(signing.PolicyForKeys(pub))
	poll.Until(t, 20*time.Second, "the two nodes connected", func() bool {
		return slices.Contains(m.fetcher.Host().Network().Peers(), m.holder.ID())
	})
	return m
}

// publish signs the tarball at p as name@version with key on the holder and announces it.
func (m *mesh) publish(t testing.TB, p, name, version string, key ed25519.PrivateKey) artifact.Release {
	t.Helper()
	ctx := context.Background()
	rel, env, err := artifact.Publish(ctx, m.holderStore, p, artifact.PublishOptions{
		Name: name, Version: version, Kind: artifact.KindOCI, Keys: []ed25519.PrivateKey{key},
		SourceRepo: "test", SourceCommit: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.holder.Announce(ctx, rel, env); err != nil {
		t.Fatal(err)
	}
	return rel
}

// TestPullFromMesh: a node that never held a release serves it once a client
// asks: two clients at once cause one fetch, whose bytes cross the mesh once,
// and the node then holds and seeds it. A release the node's policy refuses
// is never fetched into its store and answers 404.
func TestPullFromMesh(t *testing.T) {
	m := newMesh(t)
	p, img := testImage(t, m.e.dir, 3<<20)
	rel := m.publish(t, p, "api", "1.4.0", m.e.priv)
	digest, _ := img.Digest()

	var wg sync.WaitGroup
	codes := make([]int, 2)
	digests := make([]string, 2)
	for i := range 2 {
		wg.Go(func() {
			resp, err := http.Get(m.e.url + "/v2/api/manifests/1.4.0")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[i], digests[i] = resp.StatusCode, resp.Header.Get("Docker-Content-Digest")
		})
	}
	wg.Wait()
	for i := range 2 {
		if codes[i] != 200 || digests[i] != digest.String() {
			t.Fatalf("client %d: %d %s, want 200 %s", i, codes[i], digests[i], digest)
		}
	}
	if got := metricstest.Gather(t, m.e.reg)["ballena_registry_fetches_total"]; got != 1 {
		t.Fatalf("%v fetches for two clients at once, want 1", got)
	}
	var sent int64
	for _, tr := range m.holder.Engine().Transfers() {
		if tr.Digest == rel.Digest {
			sent = tr.BytesUploaded
		}
	}
	if sent < rel.Size || sent > rel.Size+rel.Size/2 {
		t.Fatalf("the holder sent %d bytes of a %d-byte release: want it sent once", sent, rel.Size)
	}
	// The fetcher holds and verifies it, and serves its layers.
	if _, _, err := m.e.st.Verify(context.Background(), rel.Ref(), signing.PolicyForKeys(m.e.pub), artifact.VerifyOptions{}); err != nil {
		t.Fatalf("fetched release: %v", err)
	}
	mf, _ := img.Manifest()
	if resp, body := m.e.do("GET", "/v2/api/blobs/"+mf.Layers[1].Digest.String()); resp.StatusCode != 200 || sha(body) != mf.Layers[1].Digest.String() {
		t.Fatalf("layer from the fetcher: %d", resp.StatusCode)
	}

	// Signed by a key the fetcher does not trust: refused, never stored.
	_, other, _ := signing.GenerateKey()
	p2, _ := testImage(t, m.e.dir, 1000)
	m.publish(t, p2, "web", "1.0.0", other)
	if resp, body := m.e.do("GET", "/v2/web/manifests/1.0.0"); resp.StatusCode != 404 {
		t.Fatalf("an untrusted release from the mesh: %d %s", resp.StatusCode, body)
	}
	if _, _, err := m.e.st.Release(artifact.Ref{Name: "web", Version: "1.0.0"}); err == nil {
		t.Fatal("the untrusted release is in the fetcher's store")
	}
	if !m.e.logs.contains("web@1.0.0") || !m.e.logs.contains("not fetched from the mesh") {
		t.Fatal("no reason logged for the refused fetch")
	}
	// A tag that is no version: 404 without a fetch.
	before := metricstest.Gather(t, m.e.reg)["ballena_registry_fetches_total"]
	if resp, _ := m.e.do("GET", "/v2/api/manifests/latest"); resp.StatusCode != 404 {
		t.Fatalf("tag latest: %d", resp.StatusCode)
	}
	if after := metricstest.Gather(t, m.e.reg)["ballena_registry_fetches_total"]; after != before {
		t.Fatal("a tag that is no version was looked for in the mesh")
	}
	// Nobody has it: 404 once the mesh said so.
	if resp, _ := m.e.do("GET", "/v2/nothing/manifests/1.0.0"); resp.StatusCode != 404 {
		t.Fatalf("a release nobody has: %d", resp.StatusCode)
	}
}

// TestContainerdPullsFromMesh: containerd pulls, through the mirror path,
// from a node that must first fetch the image from the mesh.
func TestContainerdPullsFromMesh(t *testing.T) {
	c := startContainerd(t)
	m := newMesh(t, "registry.example.com/team/=")
	p, img := testImage(t, m.e.dir, 1<<20)
	m.publish(t, p, "api", "2.0.0", m.e.priv)
	digest, _ := img.Digest()
	hosts := filepath.Join(m.e.dir, "certs.d")
	if _, err := WriteContainerdConfig(hosts, []string{"registry.example.com"}, m.e.url); err != nil {
		t.Fatal(err)
	}
	ref := "registry.example.com/team/api:2.0.0"
	c.ctr(t, "images", "pull", "--hosts-dir", hosts, "--snapshotter", "native", ref)
	if got := c.imageDigest(t, ref); got != digest.String() {
		t.Fatalf("containerd pulled %s as %s, want %s", ref, got, digest)
	}
	if !m.e.logs.contains("fetched from the mesh for a client") {
		t.Fatal("the fetcher did not fetch from the mesh")
	}
	st, err := m.fetcher.Status()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(st.Holds)
	if !strings.Contains(string(b), "api") {
		t.Fatalf("the fetcher does not hold (and seed) the release: %s", b)
	}
}
