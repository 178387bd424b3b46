package swarm

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/anacrolix/torrent"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
)

// A peer that goes away half-way through sending a piece costs the download
// nothing but that piece: the leecher finishes from another peer, with every
// byte right, although the blob is not a multiple of the piece size and its
// last piece ends off a block boundary (the direct-I/O path's tail).
func TestPeerDisconnectsMidPiece(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{PlainListen: "127.0.0.1:0"})
	leech := newTestEngine(t, EngineConfig{PlainListen: "127.0.0.1:0", StallTimeout: 30 * time.Second})
	pl := artifact.PieceLength(1 << 20)
	rel := publish(t, seed.store, 3*pl+1000)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := seed.Seed(ctx, rel); err != nil {
		t.Fatal(err)
	}

	// The first peer the leecher meets relays the seed, but cuts the
	// connection after half of the first piece message.
	cutter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cutter.Close()
	cut := make(chan int, 1) // bytes of the piece message it let through
	go cutMidPiece(cutter, seed.PlainAddr().String(), cut)

	done := make(chan error, 1)
	go func() { done <- leech.Download(ctx, rel, nil) }()
	var tor *torrent.Torrent
	poll.Until(t, 30*time.Second, "the leecher's torrent", func() bool {
		tor = leech.transferTorrent(rel.Digest)
		return tor != nil
	})
	tor.AddPeers([]torrent.PeerInfo{{Addr: addrString(cutter.Addr().String())}})
	select {
	case n := <-cut:
		if n <= 13 {
			t.Fatalf("the cut came %d bytes into the piece message, before any data", n)
		}
	case err := <-done:
		t.Fatalf("download ended before the cut: %v", err)
	}
	if got := verifiedBytes(tor, tor.Stats()); got != 0 {
		t.Fatalf("%d bytes verified from a peer that sent half a piece", got)
	}
	tor.AddPeers([]torrent.PeerInfo{{Addr: addrString(seed.PlainAddr().String())}})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkBlob(t, leech.store, rel.Digest)
}

// addrString is a peer address as anacrolix takes it.
type addrString string

func (a addrString) String() string { return string(a) }

// cutMidPiece accepts one connection, relays it to target, and closes both
// sides once half of the first piece message from target went through,
// reporting how many bytes of that message it relayed.
func cutMidPiece(ln net.Listener, target string, cut chan<- int) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	s, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer s.Close()
	go io.Copy(s, c)
	hs := make([]byte, 68)
	if _, err := io.ReadFull(s, hs); err != nil {
		return
	}
	c.Write(hs)
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(s, msg); err != nil {
			return
		}
		if len(msg) > 0 && msg[0] == 7 { // piece: index, begin, block
			half := 4 + 9 + (len(msg)-9)/2
			c.Write(append(hdr[:], msg...)[:half])
			cut <- half
			return
		}
		c.Write(append(hdr[:], msg...))
	}
}
