package swarm

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"ballena.dev/swarm/internal/dirstore"
)

// killMidDownload has a process download rel from src and kills it (SIGKILL)
// once a quarter is verified. It returns the process's dir and the staging
// file it left, which holds the blob's full reserved size.
func killMidDownload(t *testing.T, src *testEngine, rel artifact.Release) (dir, staged string) {
	t.Helper()
	dir = t.TempDir()
	leech := startProc(t, helperConfig{Dir: dir, Stall: time.Minute})
	introduce(src.h, leech.ai)
	leech.do(helperCmd{Op: "peers", Rel: rel, Peers: []peer.AddrInfo{addrInfo(src.h)}})
	leech.send(helperCmd{Op: "download", Rel: rel})
	m := leech.expect(time.Minute, "a quarter of the blob", func(m helperMsg) bool {
		return m.Progress != nil && m.Progress.Have >= rel.Size/4
	})
	if m.Progress.Have == rel.Size {
		t.Fatal("download finished before the kill; slow the seed down")
	}
	leech.kill()
	staged = filepath.Join(dir, "store", "tmp", stagingPrefix+rel.Digest, rel.Digest)
	fi, err := os.Stat(staged)
	if err != nil {
		t.Fatalf("no partial download after the kill: %v", err)
	}
	if fi.Size() != rel.Size {
		t.Fatalf("partial download is %d bytes, want its reserved %d", fi.Size(), rel.Size)
	}
	return dir, staged
}

// restartEngine starts an engine on a killed process's dir, as the node does
// when it comes back.
func restartEngine(t *testing.T, dir string, cfg EngineConfig) *testEngine {
	t.Helper()
	h, err := newTestHost(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	st, err := dirstore.New(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir, cfg.Host, cfg.Store = dir, h, st
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := NewEngine(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return &testEngine{Engine: e, h: h, store: st}
}

// TestKilledDownloadRemovedAfterTimeout: a download killed with SIGKILL and
// never asked for again does not keep its reserved room: once the node is
// back, the partial timeout removes it.
func TestKilledDownloadRemovedAfterTimeout(t *testing.T) {
	src := newTestEngine(t, EngineConfig{UploadLimit: 2 << 20})
	rel := publish(t, src.store, 16<<20)
	if err := src.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	dir, staged := killMidDownload(t, src, rel)
	restartEngine(t, dir, EngineConfig{PartialTimeout: 300 * time.Millisecond})
	poll.Until(t, 20*time.Second, "the abandoned partial removed", func() bool {
		_, err := os.Stat(filepath.Dir(staged))
		return errors.Is(err, os.ErrNotExist)
	})
}

// TestGCRemovesPartials: gc removes every abandoned partial download at once,
// whatever its age, and leaves a running download alone.
func TestGCRemovesPartials(t *testing.T) {
	src := newTestEngine(t, EngineConfig{UploadLimit: 2 << 20})
	killed := publish(t, src.store, 16<<20)
	running := publish(t, src.store, 8<<20)
	for _, rel := range []artifact.Release{killed, running} {
		if err := src.Seed(context.Background(), rel); err != nil {
			t.Fatal(err)
		}
	}
	dir, staged := killMidDownload(t, src, killed)
	e := restartEngine(t, dir, EngineConfig{StallTimeout: time.Minute}) // no partial timeout: only gc
	introduce(e.h, addrInfo(src.h))
	e.AddPeers(running.InfoHash, []peer.ID{src.h.ID()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Download(ctx, running, nil) }()
	poll.Until(t, time.Minute, "the other download under way", func() bool {
		return slices.ContainsFunc(e.Pieces(running.Digest), func(ok bool) bool { return ok })
	})

	removed, err := e.RemovePartials(0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{killed.Digest}) {
		t.Fatalf("gc removed %v, want only the abandoned %s", removed, killed.Digest)
	}
	if _, err := os.Stat(filepath.Dir(staged)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("abandoned partial still there: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the running download, after gc: %v", err)
	}
	checkBlob(t, e.store, running.Digest)

	// Without a node, gc's own sweep takes every staging dir, and nothing else.
	tmp := t.TempDir()
	orphan := filepath.Join(tmp, stagingPrefix+"0123")
	other := filepath.Join(tmp, "ingest-1")
	for _, d := range []string{orphan, other} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	removed, err = RemovePartials(tmp, 0, time.Now(), nil)
	if err != nil || !slices.Equal(removed, []string{"0123"}) {
		t.Fatalf("offline gc removed %v (%v)", removed, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("offline gc took more than partial downloads: %v", err)
	}
}

// TestPeerStateFreed: a seed remembers a leecher (its synthetic address) only
// while it is connected; once the leecher goes, nothing of it is left.
func TestPeerStateFreed(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{})
	rel := publish(t, seed.store, 1<<20)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	seed.addrs.addrOf(seed.h.ID()) // its own, made at its first connection
	base := seed.addrs.len()
	for range 3 {
		leech := restartEngine(t, t.TempDir(), EngineConfig{StallTimeout: time.Minute})
		introduce(leech.h, addrInfo(seed.h))
		leech.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := leech.Download(ctx, rel, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := seed.addrs.peerOf(leech.addrs.addrOf(leech.h.ID()).String()); !ok {
			t.Fatal("the seed never saw the leecher; the test proves nothing")
		}
		leech.h.Close() // the leecher goes away
	}
	poll.Until(t, 20*time.Second, "the leechers forgotten", func() bool { return seed.addrs.len() == base })
}
