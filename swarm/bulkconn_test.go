package swarm

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	manet "github.com/multiformats/go-multiaddr/net"

	"ballena.dev/internal/poll"
)

// bulkHost is a node's libp2p host on loopback TCP, as NewHost makes it.
func bulkHost(t *testing.T, psk pnet.PSK, gate *Gate) host.Host {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(HostConfig{Key: key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, PSK: psk, Gate: gate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func newPSK(t *testing.T) pnet.PSK {
	psk := make(pnet.PSK, 32)
	if _, err := rand.Read(psk); err != nil {
		t.Fatal(err)
	}
	return psk
}

// fetchOnce publishes size bytes on seed and downloads them on leech.
func fetchOnce(t *testing.T, seed, leech *testEngine, size int64) {
	t.Helper()
	rel := publish(t, seed.store, size)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	introduce(leech.cfg.Host, addrInfo(seed.cfg.Host))
	leech.AddPeers(rel.InfoHash, []peer.ID{seed.cfg.Host.ID()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := leech.Download(ctx, rel, nil); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, leech.store, rel.Digest)
}

// TestBulkConnCarriesThePeerWire: between two nodes the pieces travel on a
// bulk connection, not in a libp2p stream, with and without a fleet PSK; the
// blob arrives whole (its size is not a multiple of the piece length).
func TestBulkConnCarriesThePeerWire(t *testing.T) {
	for _, tc := range []struct {
		name string
		psk  pnet.PSK
	}{
		{"no psk", nil},
		{"psk", newPSK(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seed := newTestEngine(t, EngineConfig{Host: bulkHost(t, tc.psk, nil), PSK: tc.psk})
			leech := newTestEngine(t, EngineConfig{Host: bulkHost(t, tc.psk, nil), PSK: tc.psk, StallTimeout: 20 * time.Second})
			if seed.bulk.Addr() == nil {
				t.Fatal("the seed takes no bulk connections")
			}
			fetchOnce(t, seed, leech, 5<<20+777)
			if n := leech.p2p.opened.bulk.Load() + seed.p2p.opened.bulk.Load(); n == 0 {
				t.Error("no bulk connection was opened")
			}
			if n := leech.p2p.opened.stream.Load() + seed.p2p.opened.stream.Load(); n != 0 {
				t.Errorf("%d peer wire streams opened; want none with bulk connections", n)
			}
			if n := seed.bulk.refused.Load(); n != 0 {
				t.Errorf("seed refused %d bulk connections", n)
			}
		})
	}
}

// TestBulkConnFallsBackToStreams: where a peer takes no bulk connection (it
// turned them off, or its port does not answer) the peer wire runs in a
// libp2p stream, and the download completes.
func TestBulkConnFallsBackToStreams(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      EngineConfig
		sabotage func(*testEngine)
	}{
		{"peer has them off", EngineConfig{BulkListen: BulkOff}, func(*testEngine) {}},
		// The port is still given out, but nothing listens on it.
		{"port closed", EngineConfig{}, func(e *testEngine) { e.bulk.ln.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Host = bulkHost(t, nil, nil)
			seed := newTestEngine(t, cfg)
			tc.sabotage(seed)
			leech := newTestEngine(t, EngineConfig{Host: bulkHost(t, nil, nil), StallTimeout: 20 * time.Second})
			fetchOnce(t, seed, leech, 3<<20+5)
			if n := leech.p2p.opened.stream.Load(); n == 0 {
				t.Error("the leecher opened no peer wire stream")
			}
			if n := leech.p2p.opened.bulk.Load() + seed.p2p.opened.bulk.Load(); n != 0 {
				t.Errorf("%d bulk connections opened", n)
			}
		})
	}
}

// strangerHandshake dials addr as a node with key and psk would, runs the
// handshake expecting peer want, and returns what a first read gives.
func strangerHandshake(t *testing.T, addr net.Addr, key crypto.PrivKey, psk pnet.PSK, want peer.ID) error {
	t.Helper()
	tr, err := newBatchedTLS(libp2ptls.ID, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// A bound, not a timing: a connection the node accepted would wait for
	// the BitTorrent handshake forever.
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	var under net.Conn = raw
	if psk != nil {
		mc, err := manet.WrapNetConn(raw)
		if err != nil {
			t.Fatal(err)
		}
		var k [32]byte
		copy(k[:], psk)
		under = newPSKConn(mc, &k)
	}
	sc, err := tr.secureOutbound(context.Background(), under, want)
	if err != nil {
		return err
	}
	_, err = sc.Read(make([]byte, 1))
	return err
}

// TestBulkConnRefusesStrangers: the bulk listener lets in only a peer the
// host would let in, and that already has a libp2p connection with the node.
// Each refusal is counted, closes the connection and hands nothing to the
// BitTorrent client.
func TestBulkConnRefusesStrangers(t *testing.T) {
	psk := newPSK(t)
	strangerKey, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := peer.IDFromPrivateKey(strangerKey)
	if err != nil {
		t.Fatal(err)
	}
	// The allowlisted test lists the stranger: only the libp2p connection
	// it lacks keeps it out.
	allow := filepath.Join(t.TempDir(), "allow")
	if err := os.WriteFile(allow, []byte(stranger.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	allowStranger, err := NewGate(allow)
	if err != nil {
		t.Fatal(err)
	}
	deny := filepath.Join(t.TempDir(), "deny")
	if err := os.WriteFile(deny, []byte("# nobody\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	denyAll, err := NewGate(deny)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		nodePSK  pnet.PSK
		gate     *Gate
		peerPSK  pnet.PSK
		garbage  bool
		gateSays bool // the gate counts a refusal
	}{
		{name: "no libp2p connection", gate: allowStranger},
		{name: "not on the allowlist", gate: denyAll, gateSays: true},
		{name: "without the psk", nodePSK: psk},
		{name: "with another psk", nodePSK: psk, peerPSK: newPSK(t)},
		{name: "not tls", garbage: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := newTestEngine(t, EngineConfig{Host: bulkHost(t, tc.nodePSK, tc.gate), PSK: tc.nodePSK, Gate: tc.gate})
			if tc.garbage {
				c, err := net.Dial("tcp", node.bulk.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(30 * time.Second))
				c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
				if _, err := c.Read(make([]byte, 1)); err == nil {
					t.Error("the node answered garbage")
				} else if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Error("the node kept a connection that is not TLS open")
				}
				c.Close()
			} else if err := strangerHandshake(t, node.bulk.Addr(), strangerKey, tc.peerPSK, node.cfg.Host.ID()); err == nil {
				t.Error("a stranger's bulk connection got through")
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Error("the node kept a stranger's bulk connection open")
			}
			poll.Until(t, 30*time.Second, "the refusal counted", func() bool { return node.bulk.refused.Load() == 1 })
			if n := node.p2p.opened.bulk.Load(); n != 0 {
				t.Errorf("%d bulk connections handed to the BitTorrent client", n)
			}
			if tc.gateSays && tc.gate.Status().Refused[RefusedInbound] == 0 {
				t.Error("the gate counted no refusal")
			}
		})
	}
}

// TestBulkConnEndsWithTheLibp2pConn: a bulk connection does not outlive the
// libp2p connection of its peer (say the allowlist dropped the peer); the
// transfer it carried goes on over a new one.
func TestBulkConnEndsWithTheLibp2pConn(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{Host: bulkHost(t, nil, nil)})
	// Capped so that the transfer is still running when its connection goes.
	leech := newTestEngine(t, EngineConfig{Host: bulkHost(t, nil, nil), DownloadLimit: 2 << 20, StallTimeout: 30 * time.Second})
	rel := publish(t, seed.store, 8<<20+1)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	introduce(leech.cfg.Host, addrInfo(seed.cfg.Host))
	leech.AddPeers(rel.InfoHash, []peer.ID{seed.cfg.Host.ID()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- leech.Download(ctx, rel, nil) }()

	lid := leech.cfg.Host.ID()
	var first []*bulkConn
	poll.Until(t, 30*time.Second, "a bulk connection from the leecher", func() bool {
		first = seed.bulk.live(lid)
		return len(first) > 0
	})
	opened := seed.p2p.opened.bulk.Load() + leech.p2p.opened.bulk.Load()
	if err := seed.cfg.Host.Network().ClosePeer(lid); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "the bulk connections of the closed libp2p connection closed", func() bool {
		for _, c := range first {
			if !c.closed.Load() {
				return false
			}
		}
		return true
	})
	select {
	case err := <-done:
		t.Fatalf("the download ended (%v) before its bulk connections were closed", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatalf("download after its connection was closed: %v", err)
	}
	checkBlob(t, leech.store, rel.Digest)
	if now := seed.p2p.opened.bulk.Load() + leech.p2p.opened.bulk.Load(); now <= opened {
		t.Errorf("bulk connections opened: %d when the first closed, %d after the download; want a new one", opened, now)
	}
}
