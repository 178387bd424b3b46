package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	stockpnet "github.com/libp2p/go-libp2p/p2p/net/pnet"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	manet "github.com/multiformats/go-multiaddr/net"
)

func pskHost(t *testing.T, psk pnet.PSK) host.Host {
	t.Helper()
	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(HostConfig{Key: sk, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, PSK: psk})
	if err != nil {
		t.Fatal(err)
	}
	return echoHost(t, h)
}

// stockPSKHost is a libp2p host with libp2p's own private network.
func stockPSKHost(t *testing.T, psk pnet.PSK) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.PrivateNetwork(psk))
	if err != nil {
		t.Fatal(err)
	}
	return echoHost(t, h)
}

// echoRoundTrip sends one byte and then a few MiB of odd length over a new
// stream from a to b and checks that they come back.
func echoRoundTrip(t *testing.T, a, b host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
	s, err := a.NewStream(ctx, b.ID(), echoProto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	s.SetDeadline(time.Now().Add(20 * time.Second))
	one := []byte{7}
	if _, err := s.Write(one); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, one); err != nil || one[0] != 7 {
		t.Fatalf("one byte: got %v, %v", one, err)
	}
	payload := make([]byte, 3<<20+5)
	rand.Read(payload)
	echoBack(t, s, payload)
}

// echoBack writes payload to an echo stream, closes its write side, and
// checks the same bytes come back.
func echoBack(t *testing.T, s network.Stream, payload []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo of %d bytes came back as %d different bytes", len(payload), len(got))
	}
}

// TestPSKInterop: nodes with the AES extension talk to each other and to
// stock libp2p private-network hosts under the same key, either side dialing.
func TestPSKInterop(t *testing.T) {
	psk := testPSK(t)
	t.Run("ballena to ballena", func(t *testing.T) { echoRoundTrip(t, pskHost(t, psk), pskHost(t, psk)) })
	t.Run("ballena to stock", func(t *testing.T) { echoRoundTrip(t, pskHost(t, psk), stockPSKHost(t, psk)) })
	t.Run("stock to ballena", func(t *testing.T) { echoRoundTrip(t, stockPSKHost(t, psk), pskHost(t, psk)) })
}

// tcpPair is two ends of a loopback TCP connection, as multiaddr conns.
func tcpPair(t *testing.T) (dialed, accepted manet.Conn) {
	t.Helper()
	d, a := loopbackTCP(t)
	dc, err := manet.WrapNetConn(d)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := manet.WrapNetConn(a)
	if err != nil {
		t.Fatal(err)
	}
	return dc, ac
}

// loopbackTCP is two ends of a loopback TCP connection, closed when the test ends.
func loopbackTCP(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		got <- c
	}()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d, a
}

// exchange writes msg both ways at once and returns what each end read.
func exchange(t *testing.T, x, y net.Conn, msg []byte) (atX, atY []byte) {
	t.Helper()
	x.SetDeadline(time.Now().Add(10 * time.Second))
	y.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 2)
	go func() { _, err := x.Write(msg); errc <- err }()
	go func() { _, err := y.Write(msg); errc <- err }()
	atX, atY = make([]byte, len(msg)), make([]byte, len(msg))
	if _, err := io.ReadFull(x, atX); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(y, atY); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	return atX, atY
}

// TestPSKConnCiphers checks the cipher each pair agrees on: AES-CTR between
// two marked nonces, XSalsa20 (pnet v1) against a stock end, and garbage
// under another key.
func TestPSKConnCiphers(t *testing.T) {
	var k [32]byte
	rand.Read(k[:])
	msg := make([]byte, 600<<10+3) // more than one encryption chunk
	rand.Read(msg)

	d, a := tcpPair(t)
	x, y := newPSKConn(d, &k), newPSKConn(a, &k)
	atX, atY := exchange(t, x, y, msg)
	if !bytes.Equal(atX, msg) || !bytes.Equal(atY, msg) {
		t.Fatal("ballena ends: the bytes changed on the way")
	}
	for _, c := range []*pskConn{x, y} {
		if !isAESCTR(c.w) || !isAESCTR(c.r) {
			t.Fatalf("two marked nonces: want AES-CTR both ways, got %T and %T", c.w, c.r)
		}
	}

	d, a = tcpPair(t)
	stock, err := stockpnet.NewProtectedConn(pnet.PSK(k[:]), a)
	if err != nil {
		t.Fatal(err)
	}
	x = newPSKConn(d, &k)
	atX, atStock := exchange(t, x, stock, msg)
	if !bytes.Equal(atX, msg) || !bytes.Equal(atStock, msg) {
		t.Fatal("against stock pnet: the bytes changed on the way")
	}
	if isAESCTR(x.w) || isAESCTR(x.r) {
		t.Fatal("against stock pnet: AES-CTR chosen, which it cannot read")
	}

	var other [32]byte
	rand.Read(other[:])
	d, a = tcpPair(t)
	x, y = newPSKConn(d, &k), newPSKConn(a, &other)
	atX, atY = exchange(t, x, y, msg)
	if bytes.Equal(atX, msg) || bytes.Equal(atY, msg) {
		t.Fatal("another key read the plaintext")
	}
}

func isAESCTR(s any) bool {
	_, ok := s.(aesCTR)
	return ok
}
