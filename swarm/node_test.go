package swarm

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"ballena.dev/signing"
)

// testLogger logs through t when -v asks for it, else nowhere.
func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func ntKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// ntNode starts a node on loopback with its own store, trusting pubs.
type ntOpts struct {
	bootstrap []*Node
	psk       pnet.PSK
	trust     []ed25519.PublicKey
	autoFetch []string
	dir       string // data dir; default a new one
	allow     string // allowlist file
	metrics   prometheus.Registerer
	rack      string
	stall     time.Duration // the engine's stall timeout; default 20s
}

func ntNode(t testing.TB, o ntOpts) *Node {
	t.Helper()
	dir := o.dir
	if dir == "" {
		dir = t.TempDir()
	}
	st, err := artifact.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	var boot []peer.AddrInfo
	for _, b := range o.bootstrap {
		boot = append(boot, peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()})
	}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := NewNode(ctx, NodeConfig{
		DataDir:      dir,
		Listen:       []string{"/ip4/127.0.0.1/tcp/0"},
		Bootstrap:    boot,
		PSK:          o.psk,
		Store:        st,
		Policy:       signing.PolicyForKeys(o.trust...),
		AutoFetch:    o.autoFetch,
		AllowPeers:   o.allow,
		StallTimeout: cmp.Or(o.stall, 20*time.Second),
		Logger:       testLogger(t).With("node", len(o.bootstrap)),
		Metrics:      o.metrics,
		Rack:         o.rack,
	})
	if err != nil {
		cancel()
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := n.Close(); err != nil {
			t.Logf("close node: %v", err)
		}
		st.Close()
	})
	return n
}

// ntPublish stores a random blob of size bytes as name@version signed by priv
// on n, announces it, and returns the release.
func ntPublish(t testing.TB, n *Node, name, version string, size int, priv ed25519.PrivateKey) artifact.Release {
	t.Helper()
	ctx := context.Background()
	rel, env := ntSign(t, name, version, size, priv)
	if _, err := n.st.Import(ctx, rel.path, env); err != nil {
		t.Fatal(err)
	}
	if err := n.Announce(ctx, rel.Release, env); err != nil {
		t.Fatal(err)
	}
	return rel.Release
}

type ntRelease struct {
	artifact.Release
	path string
}

func ntSign(t testing.TB, name, version string, size int, priv ed25519.PrivateKey) (ntRelease, *signing.Envelope) {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	digest, err := artifact.HashFile(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	info, err := artifact.TorrentInfo(p, digest)
	if err != nil {
		t.Fatal(err)
	}
	ih, err := artifact.InfoHash(info)
	if err != nil {
		t.Fatal(err)
	}
	rel := artifact.Release{
		Name: name, Version: version, Kind: artifact.KindWhale, Digest: digest, Size: int64(size),
		Arch: "amd64", InfoHash: ih, PieceLength: info.PieceLength, PublishedAt: time.Now().UTC().Truncate(time.Second),
	}
	env, err := artifact.Sign(rel, p, artifact.PublishOptions{Keys: []ed25519.PrivateKey{priv}, SourceRepo: "test", SourceCommit: "0"})
	if err != nil {
		t.Fatal(err)
	}
	return ntRelease{rel, p}, env
}

// waitMesh waits until every node sees the others it is connected to on the
// release topic, so an announcement reaches them.
func waitGossip(t testing.TB, n *Node, want ...*Node) {
	t.Helper()
	poll.Until(t, 20*time.Second, "gossip peers", func() bool {
		ps := n.Gossip().Peers()
		for _, w := range want {
			if !slices.Contains(ps, w.ID()) {
				return false
			}
		}
		return true
	})
}

func TestFetchAcrossLine(t *testing.T) {
	pub, priv := ntKey(t)
	seed := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	mid := ntNode(t, ntOpts{bootstrap: []*Node{seed}, trust: []ed25519.PublicKey{pub}})
	leech := ntNode(t, ntOpts{bootstrap: []*Node{mid}, trust: []ed25519.PublicKey{pub}})
	waitGossip(t, mid, seed, leech)

	rel := ntPublish(t, seed, "api", "1.4.0", 3<<20+12345, priv)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last Progress
	got, err := leech.Fetch(ctx, rel.Ref(), func(p Progress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != rel.Digest {
		t.Fatalf("fetched digest %s, want %s", got.Digest, rel.Digest)
	}
	if last.Have != rel.Size {
		t.Errorf("last progress has %d of %d bytes", last.Have, last.Total)
	}
	if _, _, err := leech.st.Verify(ctx, rel.Ref(), signing.PolicyForKeys(pub), artifact.VerifyOptions{}); err != nil {
		t.Fatalf("fetched release does not verify: %v", err)
	}
	// The leecher now seeds: the middle node can fetch from either.
	if _, err := mid.Fetch(ctx, rel.Ref(), nil); err != nil {
		t.Fatal(err)
	}
	st, err := leech.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Holds) != 1 || st.Holds[0].Digest != rel.Digest {
		t.Errorf("status holds %v", st.Holds)
	}
	// Once the key is no longer trusted, a fetch of what is held refuses it.
	leech.SetPolicy(nil)
	if _, err := leech.Fetch(ctx, rel.Ref(), nil); !signing.IsVerification(err) {
		t.Fatalf("fetch under a policy that no longer trusts the key: got %v", err)
	}
}

func TestUntrustedAnnouncementDropped(t *testing.T) {
	pubGood, privGood := ntKey(t)
	_, privEvil := ntKey(t)
	pub := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pubGood}})
	recv := ntNode(t, ntOpts{bootstrap: []*Node{pub}, trust: []ed25519.PublicKey{pubGood}, autoFetch: []string{"*"}})
	waitGossip(t, pub, recv)

	evil := ntPublish(t, pub, "api", "6.6.6", 100<<10, privEvil)
	// The same publisher's next announcement arrives after the first one on the
	// same stream: once the trusted one is fetched, the untrusted one was judged.
	good := ntPublish(t, pub, "api", "1.0.0", 100<<10, privGood)
	poll.Until(t, 30*time.Second, "auto-fetch of the trusted release", func() bool {
		_, _, err := recv.st.Release(good.Ref())
		return err == nil
	})
	if recv.st.HasBlob(evil.Digest) {
		t.Fatal("the untrusted release was fetched")
	}
	recv.mu.Lock()
	_, known := recv.known[evil.Ref()]
	recv.mu.Unlock()
	if known {
		t.Fatal("the untrusted announcement was accepted")
	}
	for _, tr := range recv.Engine().Transfers() {
		if tr.Digest == evil.Digest {
			t.Fatal("the engine started on the untrusted release")
		}
	}
	// And an explicit fetch refuses it as a verification failure.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := recv.Fetch(ctx, evil.Ref(), nil)
	if !signing.IsVerification(err) {
		t.Fatalf("fetch of an untrusted release: got %v, want a verification refusal", err)
	}
	if recv.st.HasBlob(evil.Digest) {
		t.Fatal("the untrusted release was fetched")
	}
}

func TestAutoFetch(t *testing.T) {
	pub, priv := ntKey(t)
	src := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	auto := ntNode(t, ntOpts{bootstrap: []*Node{src}, trust: []ed25519.PublicKey{pub}, autoFetch: []string{"api*"}})
	waitGossip(t, src, auto)

	other := ntPublish(t, src, "db", "1.0.0", 64<<10, priv)
	rel := ntPublish(t, src, "api-gw", "2.0.0", 1<<20, priv)
	poll.Until(t, 30*time.Second, "auto-fetch", func() bool {
		_, _, err := auto.st.Release(rel.Ref())
		return err == nil
	})
	if !auto.st.HasBlob(rel.Digest) {
		t.Fatal("release stored without its blob")
	}
	if auto.st.HasBlob(other.Digest) {
		t.Fatal("auto-fetch took a release its glob does not match")
	}
}

// A new version of bytes a node holds already (a rebuild tagged anew) is
// taken without a download: only its signed record is new.
func TestAutoFetchSameBytesNewVersion(t *testing.T) {
	pub, priv := ntKey(t)
	src := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	auto := ntNode(t, ntOpts{bootstrap: []*Node{src}, trust: []ed25519.PublicKey{pub}, autoFetch: []string{"api"}})
	waitGossip(t, src, auto)
	ctx := context.Background()
	v1, env1 := ntSign(t, "api", "1.0.0", 1<<20, priv)
	v2 := v1.Release
	v2.Version = "1.1.0"
	env2, err := artifact.Sign(v2, v1.path, artifact.PublishOptions{Keys: []ed25519.PrivateKey{priv}, SourceRepo: "test", SourceCommit: "0"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		rel artifact.Release
		env *signing.Envelope
	}{{v1.Release, env1}, {v2, env2}} {
		if _, err := src.st.Import(ctx, v1.path, r.env); err != nil {
			t.Fatal(err)
		}
		if err := src.Announce(ctx, r.rel, r.env); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 30*time.Second, "auto-fetch of "+r.rel.Ref().String(), func() bool {
			_, _, err := auto.st.Release(r.rel.Ref())
			return err == nil
		})
	}
	var down int64
	for _, tr := range auto.Engine().Transfers() {
		down += tr.BytesDownloaded
	}
	if down > v1.Size+v1.Size/4 {
		t.Errorf("the node downloaded %d bytes for two releases of the same %d", down, v1.Size)
	}
}

func TestFetchNobodyHas(t *testing.T) {
	pub, _ := ntKey(t)
	a := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	b := ntNode(t, ntOpts{bootstrap: []*Node{a}, trust: []ed25519.PublicKey{pub}})
	waitGossip(t, b, a)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := b.Fetch(ctx, artifact.Ref{Name: "ghost", Version: "1.0.0"}, nil)
	if !errors.Is(err, ErrNobodyHas) || !errors.Is(err, artifact.ErrNotFound) {
		t.Fatalf("got %v, want ErrNobodyHas", err)
	}
	if rels, _ := b.st.Releases(); len(rels) != 0 {
		t.Fatalf("store holds %v", rels)
	}
	if len(b.Engine().Transfers()) != 0 {
		t.Fatalf("engine runs %v", b.Engine().Transfers())
	}
}

// A release everyone knows but whose only holder is gone: the fetch gives up
// after the bounded wait and leaves no trace, not even staged files.
func TestFetchHolderGone(t *testing.T) {
	pub, priv := ntKey(t)
	a := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	b := ntNode(t, ntOpts{bootstrap: []*Node{a}, trust: []ed25519.PublicKey{pub}})
	waitGossip(t, b, a)
	rel, env := ntSign(t, "api", "1.0.0", 256<<10, priv)
	// b learns of the release (as from an announcement) from a node that never
	// held it: nobody serves the blob.
	b.mu.Lock()
	b.known[rel.Ref()] = knownRelease{rel.Release, env}
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := b.Fetch(ctx, rel.Ref(), nil)
	if !errors.Is(err, ErrNobodyHas) {
		t.Fatalf("got %v, want ErrNobodyHas", err)
	}
	if b.st.HasBlob(rel.Digest) || len(b.Engine().Transfers()) != 0 {
		t.Fatal("fetch left a blob or a transfer behind")
	}
	b.mu.Lock()
	advertised := b.provided[rel.Digest]
	b.mu.Unlock()
	if advertised {
		t.Fatal("the node advertised a blob it never had a source for")
	}
	ntNoFiles(t, b.st.TempDir())
}

func ntNoFiles(t testing.TB, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

// A node that joins after the announcement finds the release by asking its
// peers over the lookup protocol.
func TestFetchLateJoiner(t *testing.T) {
	pub, priv := ntKey(t)
	seed := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	rel := ntPublish(t, seed, "api", "1.0.0", 512<<10, priv)
	late := ntNode(t, ntOpts{bootstrap: []*Node{seed}, trust: []ed25519.PublicKey{pub}})
	poll.Until(t, 20*time.Second, "connection", func() bool { return len(late.Host().Network().Peers()) > 0 })
	late.mu.Lock()
	_, known := late.known[rel.Ref()]
	late.mu.Unlock()
	if known {
		t.Fatal("the late node heard the announcement; the test would prove nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := late.Fetch(ctx, rel.Ref(), nil); err != nil {
		t.Fatal(err)
	}
	if !late.st.HasBlob(rel.Digest) {
		t.Fatal("blob not stored")
	}
}

// An announcement whose record is not the one its envelope signs is dropped,
// even when the envelope is trusted.
func TestForgedRecordDropped(t *testing.T) {
	pub, priv := ntKey(t)
	src := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	recv := ntNode(t, ntOpts{bootstrap: []*Node{src}, trust: []ed25519.PublicKey{pub}, autoFetch: []string{"*"}})
	waitGossip(t, src, recv)
	real, env := ntSign(t, "api", "1.0.0", 64<<10, priv)
	forged := real.Release
	forged.Name = "forged"
	if err := src.gossip.Announce(context.Background(), forged, env); err != nil {
		t.Fatal(err)
	}
	good := ntPublish(t, src, "db", "1.0.0", 64<<10, priv)
	poll.Until(t, 30*time.Second, "auto-fetch of the honest release", func() bool {
		_, _, err := recv.st.Release(good.Ref())
		return err == nil
	})
	recv.mu.Lock()
	defer recv.mu.Unlock()
	for ref := range recv.known {
		if ref.Name == "forged" || ref == real.Ref() {
			t.Fatalf("the forged announcement was accepted as %s", ref)
		}
	}
}

// An auto-fetch that finds a holder with nothing to serve fails for want of
// data, and is tried again: once the holder serves, the node gets the
// release with no new announcement or peer to prompt it.
func TestAutoFetchRetries(t *testing.T) {
	pub, priv := ntKey(t)
	src := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	rel := ntPublish(t, src, "api", "1.0.0", 256<<10, priv)
	if err := src.engine.Drop(rel.Digest); err != nil { // holds it, serves nothing
		t.Fatal(err)
	}
	auto := ntNode(t, ntOpts{bootstrap: []*Node{src}, trust: []ed25519.PublicKey{pub}, autoFetch: []string{"api"},
		stall: 2 * time.Second})
	downloading := func() bool {
		return slices.ContainsFunc(auto.engine.Transfers(), func(ts TransferStats) bool { return ts.Digest == rel.Digest })
	}
	poll.Until(t, 30*time.Second, "the first attempt", downloading)
	poll.Until(t, 30*time.Second, "the first attempt to fail", func() bool { return !downloading() })
	if auto.st.HasBlob(rel.Digest) {
		t.Fatal("fetched from a holder that served nothing")
	}
	if err := src.engine.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, time.Minute, "a retry to fetch it", func() bool {
		_, _, err := auto.st.Release(rel.Ref())
		return err == nil
	})
}

// A node that auto-fetches catches up, on joining, on what was announced
// before it came: the newest matching version only.
func TestAutoFetchCatchUp(t *testing.T) {
	pub, priv := ntKey(t)
	src := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	old := ntPublish(t, src, "api", "1.0.0", 64<<10, priv)
	cur := ntPublish(t, src, "api", "1.10.0", 64<<10, priv)
	auto := ntNode(t, ntOpts{bootstrap: []*Node{src}, trust: []ed25519.PublicKey{pub}, autoFetch: []string{"api"}})
	poll.Until(t, 30*time.Second, "catch-up fetch of api@1.10.0", func() bool {
		_, _, err := auto.st.Release(cur.Ref())
		return err == nil
	})
	if auto.st.HasBlob(old.Digest) {
		t.Fatal("catch-up fetched an older version too")
	}
}
