package swarm

import (
	"context"
	"crypto/ed25519"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
)

// uploaded is what e sent of rel's blob so far.
func uploaded(e *testEngine, rel artifact.Release) int64 {
	for _, ts := range e.Transfers() {
		if ts.Digest == rel.Digest {
			return ts.BytesUploaded
		}
	}
	return 0
}

// rackHolds reports whether e's rack view of rel counts every piece as held
// in its rack.
func rackHolds(e *testEngine, rel artifact.Release) bool {
	var ih metainfo.Hash
	if err := ih.FromHexString(rel.InfoHash); err != nil {
		return false
	}
	e.racks.mu.Lock()
	defer e.racks.mu.Unlock()
	t := e.racks.torrents[ih]
	if t == nil {
		return false
	}
	for i := range t.n {
		if t.view.Lacks(i) {
			return false
		}
	}
	return true
}

// fetchBeside has a fresh node of rack fetch rel from a same-rack holder
// (capped, so the transfer lasts) and the seed of another rack, and returns
// how many bytes the seed sent it. The holder is connected first; the seed
// once the fetcher saw what its rack holds (if it is rack-aware).
func fetchBeside(t *testing.T, seed, holder *testEngine, rel artifact.Release, rack string) int64 {
	t.Helper()
	f := newTestEngine(t, EngineConfig{Rack: rack, StallTimeout: 20 * time.Second})
	introduce(f.h, addrInfo(holder.h))
	introduce(f.h, addrInfo(seed.h))
	f.AddPeers(rel.InfoHash, []peer.ID{holder.h.ID()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Download(ctx, rel, nil) }()
	if rack != "" {
		poll.Until(t, 30*time.Second, "the fetcher to see its rack's pieces", func() bool { return rackHolds(f, rel) })
	}
	before := uploaded(seed, rel)
	f.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f.store, rel.Digest)
	return uploaded(seed, rel) - before
}

// A rack-aware node fetches what its rack holds from its rack: the seed in
// another rack, though connected and faster, sends it nothing. A rack-blind
// node in the same place takes part of the blob from the seed.
func TestRackAwareFetchesFromOwnRack(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{Rack: "a"})
	holder := newTestEngine(t, EngineConfig{Rack: "b", UploadLimit: 1 << 20})
	rel := publish(t, seed.store, 3<<20)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	introduce(holder.h, addrInfo(seed.h))
	holder.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := holder.Download(ctx, rel, nil); err != nil {
		t.Fatal(err)
	}
	if got := fetchBeside(t, seed, holder, rel, "b"); got != 0 {
		t.Errorf("rack-aware: the other rack's seed sent %d bytes of what the rack holds", got)
	}
	if got := fetchBeside(t, seed, holder, rel, ""); got == 0 {
		t.Errorf("rack-blind: the seed sent nothing; the check above proves nothing")
	}
}

// When the rack's only holder goes, the pieces the rack no longer holds are
// shown on the cross-rack connection and the fetch completes from the seed.
func TestRackAwareCrossesWhenRackLoses(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{Rack: "a"})
	holder := newTestEngine(t, EngineConfig{Rack: "b", UploadLimit: 512 << 10})
	rel := publish(t, seed.store, 3<<20)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	copyBlob(t, seed.store, holder.store, rel.Digest)
	if err := holder.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	f := newTestEngine(t, EngineConfig{Rack: "b", StallTimeout: 20 * time.Second})
	introduce(f.h, addrInfo(holder.h))
	introduce(f.h, addrInfo(seed.h))
	f.AddPeers(rel.InfoHash, []peer.ID{holder.h.ID()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var have atomic.Int64
	done := make(chan error, 1)
	go func() { done <- f.Download(ctx, rel, func(p Progress) { have.Store(p.Have) }) }()
	poll.Until(t, 30*time.Second, "the fetcher to see its rack's pieces", func() bool { return rackHolds(f, rel) })
	f.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
	poll.Until(t, 30*time.Second, "a first piece from the rack", func() bool { return have.Load() > 0 })
	if uploaded(seed, rel) != 0 {
		t.Fatal("the seed sent pieces the rack holds")
	}
	holder.Close()
	if err := <-done; err != nil {
		t.Fatalf("after the rack's holder left: %v", err)
	}
	checkBlob(t, f.store, rel.Digest)
	if uploaded(seed, rel) == 0 {
		t.Fatal("the fetch completed without the seed: the holder did not leave in time to test anything")
	}
}

// A node's rack label (ballena node --label rack=R) reaches its engine: a
// peer asks it over /ballena/rack/1.0.0 and hears R.
func TestNodeRackLabelAnswers(t *testing.T) {
	pub, _ := ntKey(t)
	a := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}, rack: "r1"})
	b := ntNode(t, ntOpts{bootstrap: []*Node{a}, trust: []ed25519.PublicKey{pub}, rack: "r2"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := b.Engine().racks.rackOf(ctx, a.h.ID()); got != "r1" {
		t.Fatalf("b asked a for its rack: %q, want r1", got)
	}
	if got := a.Engine().racks.rackOf(ctx, b.h.ID()); got != "r2" {
		t.Fatalf("a asked b for its rack: %q, want r2", got)
	}
}
