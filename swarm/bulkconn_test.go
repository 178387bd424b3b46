package swarm

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"

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

// errKept says a node kept a stranger's bulk connection open.
var errKept = errors.New("the node kept the connection open")

// strangerHandshake dials addr as a node with key and psk would, expecting
// peer want, and reads until the node closes the connection, failing t if
// anything arrives. It returns errKept if the node does not close it.
func strangerHandshake(t *testing.T, addr net.Addr, key crypto.PrivKey, psk pnet.PSK, want peer.ID) error {
	t.Helper()
	id, err := libp2ptls.NewIdentity(key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var k *[32]byte
	if psk != nil {
		k = new([32]byte)
		copy(k[:], psk)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fc, _, err := bulkHandshake(ctx, raw, id, k, network.DirOutbound, want)
	if err != nil {
		return err
	}
	// A bound, not a timing: a connection the node accepted would wait for
	// the BitTorrent handshake until then.
	fc.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(fc)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errKept
	}
	if len(got) > 0 {
		// Not even the node's proof of the fleet key: that comes only
		// after the dialer's.
		t.Errorf("the node sent a stranger %d bytes", len(got))
	}
	return errors.New("closed by the node")
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
			} else if err := strangerHandshake(t, node.bulk.Addr(), strangerKey, tc.peerPSK, node.cfg.Host.ID()); errors.Is(err, errKept) {
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

// TestBulkHandshake: both sides learn each other's peer ID; in a fleet with a
// PSK, each side proves the key, and a side that cannot is refused by the
// other, whatever its TLS identity.
func TestBulkHandshake(t *testing.T) {
	fleet, other := newPSK(t), newPSK(t)
	for _, tc := range []struct {
		name                   string
		dialerPSK, listenerPSK pnet.PSK
		wrongPeer              bool
		dialerErr, listenerErr string // "" for none
	}{
		{name: "no psk"},
		{name: "same psk", dialerPSK: fleet, listenerPSK: fleet},
		{name: "other psk", dialerPSK: other, listenerPSK: fleet, dialerErr: "private network", listenerErr: "does not hold the fleet key"},
		{name: "dialer without psk", listenerPSK: fleet, listenerErr: "proof of the fleet key"},
		{name: "listener without psk", dialerPSK: fleet, dialerErr: "proof of the fleet key"},
		{name: "not the peer dialed", wrongPeer: true, dialerErr: "handshake", listenerErr: "handshake"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dk, _, _ := crypto.GenerateEd25519Key(rand.Reader)
			lk, _, _ := crypto.GenerateEd25519Key(rand.Reader)
			did, _ := peer.IDFromPrivateKey(dk)
			lid, _ := peer.IDFromPrivateKey(lk)
			want := lid
			if tc.wrongPeer {
				want = did
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			type result struct {
				c   flushConn
				p   peer.ID
				err error
			}
			side := func(raw net.Conn, key crypto.PrivKey, psk pnet.PSK, dir network.Direction, want peer.ID) result {
				id, err := libp2ptls.NewIdentity(key)
				if err != nil {
					t.Error(err)
					return result{err: err}
				}
				var k *[32]byte
				if psk != nil {
					k = new([32]byte)
					copy(k[:], psk)
				}
				c, p, err := bulkHandshake(ctx, raw, id, k, dir, want)
				if err == nil && psk == nil {
					// A side without a proof to give hangs up, as a
					// stranger would: the other side must not wait for ever.
					defer c.Close()
				}
				return result{c, p, err}
			}
			lres := make(chan result, 1)
			go func() {
				raw, err := ln.Accept()
				if err != nil {
					lres <- result{err: err}
					return
				}
				lres <- side(raw, lk, tc.listenerPSK, network.DirInbound, "")
			}()
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			d := side(raw, dk, tc.dialerPSK, network.DirOutbound, want)
			l := <-lres
			for _, s := range []struct {
				who     string
				r       result
				wantErr string
				peer    peer.ID
			}{{"dialer", d, tc.dialerErr, lid}, {"listener", l, tc.listenerErr, did}} {
				switch {
				case s.wantErr == "" && s.r.err != nil:
					t.Errorf("%s: %v", s.who, s.r.err)
				case s.wantErr != "" && (s.r.err == nil || !strings.Contains(s.r.err.Error(), s.wantErr)):
					t.Errorf("%s: error %v, want one with %q", s.who, s.r.err, s.wantErr)
				case s.wantErr == "" && s.r.p != s.peer:
					t.Errorf("%s: peer %s, want %s", s.who, s.r.p, s.peer)
				}
				if s.r.err == nil {
					s.r.c.Close()
				}
			}
		})
	}
}
