package swarm

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/internal/testnet"
	"ballena.dev/swarm/internal/dirstore"
)

// TestAria2cDownloads exports a .torrent from an engine and has aria2c, a
// standard client, fetch the blob through the node's tracker and plain TCP.
func TestAria2cDownloads(t *testing.T) {
	aria, err := exec.LookPath("aria2c")
	if err != nil {
		t.Fatal("aria2c is needed: apt-get install aria2 (.ci/run installs it)")
	}
	e := newTestEngine(t, EngineConfig{PlainListen: "127.0.0.1:0", TrackerListen: "127.0.0.1:0"})
	rel := publish(t, e.store, 5<<20+777)
	if err := e.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	mi, err := e.MetaInfo(rel)
	if err != nil {
		t.Fatal(err)
	}
	if got := mi.HashInfoBytes().HexString(); got != rel.InfoHash {
		t.Fatalf("exported torrent has infohash %s, release %s", got, rel.InfoHash)
	}
	dir := t.TempDir()
	tf := filepath.Join(dir, "api.torrent")
	f, err := os.Create(tf)
	if err != nil {
		t.Fatal(err)
	}
	if err := mi.Write(f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out := filepath.Join(dir, "out")
	// aria2c wants a port of its own for BitTorrent; borrow a free one.
	_, port, _ := net.SplitHostPort(testnet.FreeAddr(t))
	cmd := exec.CommandContext(ctx, aria,
		"--dir="+out, "--seed-time=0",
		"--bt-enable-lpd=false", "--enable-dht=false", "--enable-dht6=false", "--enable-peer-exchange=false",
		"--disable-ipv6=true", "--bt-tracker-connect-timeout=5", "--bt-tracker-timeout=10",
		"--listen-port="+port, "--summary-interval=0", "--console-log-level=warn", "--file-allocation=none",
		tf)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Run(); err != nil {
		t.Fatalf("aria2c: %v", err)
	}
	got, err := dirstore.SHA256File(filepath.Join(out, rel.Digest))
	if err != nil {
		t.Fatal(err)
	}
	if got != rel.Digest {
		t.Fatalf("aria2c got sha256 %s, want %s", got, rel.Digest)
	}
	var up int64
	for _, ts := range e.Transfers() {
		up += ts.BytesUploaded
	}
	if up < rel.Size {
		t.Errorf("engine uploaded %d bytes, want the whole %d: did aria2c get it elsewhere?", up, rel.Size)
	}
}

func TestTrackerAnnounce(t *testing.T) {
	var held metainfo.Hash
	held[0] = 1
	self := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6881}
	tr, err := startTracker("127.0.0.1:0", self, func(ih metainfo.Hash) bool { return ih == held }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	announce := func(ih metainfo.Hash, port int) announceResponse {
		t.Helper()
		q := url.Values{"info_hash": {string(ih[:])}, "peer_id": {"-XX0000-000000000000"},
			"port": {strconv.Itoa(port)}, "compact": {"1"}}
		resp, err := http.Get(tr.url() + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ar announceResponse
		if err := bencode.NewDecoder(resp.Body).Decode(&ar); err != nil {
			t.Fatal(err)
		}
		return ar
	}
	peers := func(b []byte) (out []netip.AddrPort) {
		for ; len(b) >= 6; b = b[6:] {
			out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5])))
		}
		return out
	}
	first := announce(held, 7001)
	if first.FailureReason != "" {
		t.Fatal(first.FailureReason)
	}
	if got := peers(first.Peers); len(got) != 1 || got[0].String() != "127.0.0.1:6881" {
		t.Fatalf("first announcer got peers %v, want only the node", got)
	}
	second := peers(announce(held, 7002).Peers)
	if len(second) != 2 || second[1].String() != "127.0.0.1:7001" {
		t.Fatalf("second announcer got peers %v, want the node and the first", second)
	}
	var other metainfo.Hash
	if r := announce(other, 7003); r.FailureReason == "" {
		t.Fatal("announce for a torrent the node does not serve succeeded")
	}
}

func TestPeerAddrs(t *testing.T) {
	h1, err := newTestHost(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	m := newPeerAddrs()
	a := m.addrOf(h1.ID())
	if !a.Addr().Is6() || a.Addr().As16()[0] != 0xfd {
		t.Fatalf("synthetic address %s is not in fd00::/8", a)
	}
	id, ok := m.peerOf(p2pAddr(a).String())
	if !ok || id != h1.ID() {
		t.Fatalf("peerOf(%s) = %s, %v", a, id, ok)
	}
	if _, ok := newPeerAddrs().peerOf(p2pAddr(a).String()); ok {
		t.Fatal("an unknown synthetic address maps to a peer")
	}
	if _, err := (plainDialer{}).Dial(context.Background(), p2pAddr(a).String()); err == nil {
		t.Fatal("plain TCP dialer dialed a libp2p peer address")
	}
}
