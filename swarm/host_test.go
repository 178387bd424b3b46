package swarm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
)

func TestIdentityPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFile)
	k1, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("node key mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := peer.IDFromPrivateKey(k1)
	id2, _ := peer.IDFromPrivateKey(k2)
	if id1 != id2 {
		t.Fatalf("identity changed across loads: %s then %s", id1, id2)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := LoadIdentity(path); err == nil {
		t.Fatal("a corrupt node key loaded")
	}
}

func TestPSKFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet.psk")
	if err := GeneratePSK(path); err != nil {
		t.Fatal(err)
	}
	if err := GeneratePSK(path); err == nil {
		t.Fatal("GeneratePSK overwrote an existing key")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("psk mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := LoadPSK(path); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.psk")
	os.WriteFile(bad, []byte("not a key\n"), 0o600)
	if _, err := LoadPSK(bad); err == nil {
		t.Fatal("a malformed psk loaded")
	}
}

func testPSK(t testing.TB) pnet.PSK {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fleet.psk")
	if err := GeneratePSK(path); err != nil {
		t.Fatal(err)
	}
	psk, err := LoadPSK(path)
	if err != nil {
		t.Fatal(err)
	}
	return psk
}

func testHost(t testing.TB, psk pnet.PSK) host.Host {
	t.Helper()
	key, err := LoadIdentity(filepath.Join(t.TempDir(), KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(HostConfig{Key: key, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, PSK: psk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestPSKKeepsOutsidersOut(t *testing.T) {
	fleet := testPSK(t)
	a := testHost(t, fleet)
	member := testHost(t, fleet)
	open := testHost(t, nil)
	stranger := testHost(t, testPSK(t))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	target := peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()}
	if err := member.Connect(ctx, target); err != nil {
		t.Fatalf("fleet member cannot connect: %v", err)
	}
	for name, h := range map[string]host.Host{"no psk": open, "other psk": stranger} {
		// A handshake under the wrong key never completes: bound each attempt.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := h.Connect(ctx, target); err == nil {
			t.Errorf("%s: connected to a fleet node", name)
		}
		if h.Network().Connectedness(a.ID()) == 1 {
			t.Errorf("%s: still connected", name)
		}
		// Nor the other way round.
		if err := a.Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}); err == nil {
			t.Errorf("fleet node connected to %s", name)
		}
	}
}

func TestQUICRefusedWithPSK(t *testing.T) {
	key, err := LoadIdentity(filepath.Join(t.TempDir(), KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewHost(HostConfig{Key: key, Listen: []string{"/ip4/127.0.0.1/udp/0/quic-v1"}, PSK: testPSK(t)})
	if err == nil {
		t.Fatal("a PSK host listened on QUIC, which the PSK does not protect")
	}
}

func TestParseAddrInfos(t *testing.T) {
	h := testHost(t, nil)
	infos, err := ParseAddrInfos(FullAddrs(h))
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0].ID != h.ID() || len(infos[0].Addrs) != len(h.Addrs()) {
		t.Fatalf("parsed %v from %v", infos, FullAddrs(h))
	}
	for _, bad := range []string{"/ip4/127.0.0.1/tcp/7400", "nonsense"} {
		if _, err := ParseAddrInfos([]string{bad}); err == nil {
			t.Errorf("%q parsed as a bootstrap address", bad)
		}
	}
}

// Without a PSK, QUIC addresses work beside TCP.
func TestQUICWithoutPSK(t *testing.T) {
	mk := func() host.Host {
		key, err := LoadIdentity(filepath.Join(t.TempDir(), KeyFile))
		if err != nil {
			t.Fatal(err)
		}
		h, err := NewHost(HostConfig{Key: key, Listen: []string{"/ip4/127.0.0.1/udp/0/quic-v1"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	a, b := mk(), mk()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()}); err != nil {
		t.Fatal(err)
	}
	conns := b.Network().ConnsToPeer(a.ID())
	if len(conns) == 0 || !strings.Contains(conns[0].RemoteMultiaddr().String(), "/quic-v1") {
		t.Fatalf("connections %v, want QUIC", conns)
	}
}
