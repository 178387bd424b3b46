package swarm

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/internal/poll"
)

// TestInfoFromAPeerThatGotItLate is the push to a fleet that stalled in CI: a
// leecher connected to a peer while neither had the torrent's info. Over
// BitTorrent the peer announces the info's size once per connection, in its
// extended handshake, so when it got the info later the leecher never heard;
// the one seed was gone. The leecher must get the info from that peer over
// InfoProtocol and download from it.
func TestInfoFromAPeerThatGotItLate(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{})
	// Long stall timeouts: without the info exchange the leecher waits out
	// the test's context, not its own timeout.
	mid := newTestEngine(t, EngineConfig{StallTimeout: 5 * time.Minute})
	late := newTestEngine(t, EngineConfig{StallTimeout: 5 * time.Minute})
	rel := publish(t, seed.store, 3<<20+777)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := seed.Seed(ctx, rel); err != nil {
		t.Fatal(err)
	}
	introduce(mid.h, addrInfo(late.h))
	introduce(late.h, addrInfo(mid.h))
	introduce(mid.h, addrInfo(seed.h))

	lateDone := make(chan error, 1)
	midDone := make(chan error, 1)
	late.AddPeers(rel.InfoHash, []peer.ID{mid.h.ID()})
	go func() { lateDone <- late.Download(ctx, rel, nil) }()
	go func() { midDone <- mid.Download(ctx, rel, nil) }()
	poll.Until(t, time.Minute, "late and mid to connect without the info", func() bool {
		return late.peerConns(rel.Digest) > 0 && mid.peerConns(rel.Digest) > 0
	})
	if late.transferTorrent(rel.Digest).Info() != nil {
		t.Fatal("the leecher has the info before anyone who holds it was in reach")
	}
	mid.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
	if err := <-midDone; err != nil {
		t.Fatalf("mid: %v", err)
	}
	if err := seed.Drop(rel.Digest); err != nil {
		t.Fatal(err)
	}
	if err := <-lateDone; err != nil {
		t.Fatalf("late, connected to mid before mid had the info: %v", err)
	}
	checkBlob(t, late.store, rel.Digest)
}

// TestAskInfo covers the protocol's answers: the info of a torrent the peer
// has, nothing for one it lacks, and an error for a peer that lies.
func TestAskInfo(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{})
	asker := newTestEngine(t, EngineConfig{})
	rel := publish(t, seed.store, 1<<20+1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := seed.Seed(ctx, rel); err != nil {
		t.Fatal(err)
	}
	introduce(asker.h, addrInfo(seed.h))
	ih := metainfo.NewHashFromHex(rel.InfoHash)

	b, err := asker.askInfo(ctx, seed.h.ID(), ih)
	if err != nil {
		t.Fatal(err)
	}
	if metainfo.HashBytes(b) != ih {
		t.Fatalf("answer hashes to %s, want %s", metainfo.HashBytes(b), ih)
	}
	if _, err := asker.askInfo(ctx, seed.h.ID(), metainfo.NewHashFromHex(strings.Repeat("ab", 20))); !errors.Is(err, errNoInfo) {
		t.Errorf("asking for a torrent the peer lacks: %v, want errNoInfo", err)
	}

	// A liar answers with another torrent's info: the asker refuses it.
	other := publish(t, seed.store, 2<<20+3)
	if err := seed.Seed(ctx, other); err != nil {
		t.Fatal(err)
	}
	otherInfo, err := asker.askInfo(ctx, seed.h.ID(), metainfo.NewHashFromHex(other.InfoHash))
	if err != nil {
		t.Fatal(err)
	}
	liar, err := newTestHost(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer liar.Close()
	liar.SetStreamHandler(InfoProtocol, func(s network.Stream) {
		defer s.Close()
		_, _ = io.ReadFull(s, make([]byte, 20))
		_, _ = s.Write(otherInfo)
	})
	introduce(asker.h, addrInfo(liar))
	if _, err := asker.askInfo(ctx, liar.ID(), ih); err == nil || errors.Is(err, errNoInfo) {
		t.Errorf("an answer that does not hash to the infohash: %v, want it refused", err)
	}
}

// peerConns counts the connections of digest's torrent, 0 before it exists.
func (e *Engine) peerConns(digest string) int {
	t := e.transferTorrent(digest)
	if t == nil {
		return 0
	}
	return len(t.PeerConns())
}
