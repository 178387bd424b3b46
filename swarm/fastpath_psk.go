package swarm

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"

	"github.com/davidlazar/go-crypto/salsa20"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/transport"
	manet "github.com/multiformats/go-multiaddr/net"
)

// A fleet's private network (PSK), as libp2p's pnet v1 has it: each side sends
// a 24-byte nonce and then its bytes XORed with XSalsa20(psk, nonce). Without
// the key the peer reads garbage and the security handshake fails, so only
// key holders connect. XSalsa20 has no AES-NI, and on the nodes' busiest path
// it cost about as much as TLS's AES-GCM and the piece hashes together.
//
// pskConn speaks pnet v1 with one extension: a Ballena node marks its nonce
// (its last 8 bytes are an HMAC under the key of the first 16), and when both
// nonces carry the mark both directions use AES-256-CTR under a key derived
// from the PSK and the writer's nonce instead of XSalsa20. A stock libp2p
// node's nonce is unmarked, so against it both directions stay XSalsa20 and
// the two interoperate: a fleet can upgrade node by node. The mark only says
// which cipher follows; both are keyed by the PSK, and TLS above still
// authenticates and encrypts everything on its own.
//
// To choose, a side needs the peer's nonce before its first data byte, so a
// pskConn sends its nonce at its first Read or Write and reads the peer's
// before writing data. libp2p's multistream negotiation starts with a write
// on both sides (the listener sends its header at once, the dialer pipelines
// its proposal), so each side's nonce is on its way without waiting for the
// other.
const (
	pskNonceLen = 24
	pskMarkLen  = 8
	pskMarkTag  = "ballena pnet aes-ctr 1 mark"
	pskKeyTag   = "ballena pnet aes-ctr 1 key"
	// pskChunk bounds the encryption buffer: larger writes go out in pieces.
	pskChunk = 256 << 10
)

// pskUpgrader protects the connections of a TCP transport with pskConn
// before libp2p's upgrader secures them.
type pskUpgrader struct {
	transport.Upgrader
	psk *[32]byte
}

func newPSKUpgrader(u transport.Upgrader, psk pnet.PSK) (pskUpgrader, error) {
	if len(psk) != 32 {
		return pskUpgrader{}, fmt.Errorf("psk: want 32 bytes, got %d", len(psk))
	}
	var k [32]byte
	copy(k[:], psk)
	return pskUpgrader{Upgrader: u, psk: &k}, nil
}

func (u pskUpgrader) Upgrade(ctx context.Context, t transport.Transport, c manet.Conn, dir network.Direction, p peer.ID, scope network.ConnManagementScope) (transport.CapableConn, error) {
	return u.Upgrader.Upgrade(ctx, t, newPSKConn(c, u.psk), dir, p, scope)
}

func (u pskUpgrader) UpgradeGatedMaListener(t transport.Transport, l transport.GatedMaListener) transport.Listener {
	return u.Upgrader.UpgradeGatedMaListener(t, pskListener{GatedMaListener: l, psk: u.psk})
}

func (u pskUpgrader) UpgradeListener(t transport.Transport, l manet.Listener) transport.Listener {
	return u.UpgradeGatedMaListener(t, u.Upgrader.GateMaListener(l))
}

type pskListener struct {
	transport.GatedMaListener
	psk *[32]byte
}

func (l pskListener) Accept() (manet.Conn, network.ConnManagementScope, error) {
	c, scope, err := l.GatedMaListener.Accept()
	if err != nil {
		return nil, nil, err
	}
	return newPSKConn(c, l.psk), scope, nil
}

// pskConn is one protected connection.
type pskConn struct {
	manet.Conn
	psk *[32]byte
	own [pskNonceLen]byte

	sendOnce sync.Once
	sendErr  error

	peerMu   sync.Mutex
	peerDone bool
	peerErr  error
	r        cipher.Stream // decrypts the peer's bytes; set with peerDone
	w        cipher.Stream // encrypts ours; set with peerDone

	wmu  sync.Mutex
	wbuf []byte
}

func newPSKConn(c manet.Conn, psk *[32]byte) *pskConn {
	pc := &pskConn{Conn: c, psk: psk}
	rand.Read(pc.own[:pskNonceLen-pskMarkLen])
	copy(pc.own[pskNonceLen-pskMarkLen:], pskMark(psk, pc.own[:pskNonceLen-pskMarkLen]))
	return pc
}

func pskMark(psk *[32]byte, r []byte) []byte {
	m := hmac.New(sha256.New, psk[:])
	m.Write([]byte(pskMarkTag))
	m.Write(r)
	return m.Sum(nil)[:pskMarkLen]
}

func pskMarked(psk *[32]byte, nonce []byte) bool {
	return hmac.Equal(nonce[pskNonceLen-pskMarkLen:], pskMark(psk, nonce[:pskNonceLen-pskMarkLen]))
}

// pskStream is the keystream of the side that sent nonce.
func pskStream(psk *[32]byte, nonce []byte, useAES bool) cipher.Stream {
	if !useAES {
		return salsa20.New(psk, nonce)
	}
	m := hmac.New(sha256.New, psk[:])
	m.Write([]byte(pskKeyTag))
	m.Write(nonce)
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		panic(err) // a 32-byte key always makes a cipher
	}
	// The key is the nonce's own, so a zero IV never repeats a keystream.
	return aesCTR{cipher.NewCTR(block, make([]byte, aes.BlockSize))}
}

// aesCTR names the extension's keystream, for tests to see which was chosen.
type aesCTR struct{ cipher.Stream }

// handshake sends our nonce once and reads the peer's once, then sets the
// ciphers.
func (c *pskConn) handshake() error {
	c.sendOnce.Do(func() {
		_, c.sendErr = c.Conn.Write(c.own[:])
	})
	if c.sendErr != nil {
		return c.sendErr
	}
	c.peerMu.Lock()
	defer c.peerMu.Unlock()
	if c.peerDone {
		return c.peerErr
	}
	c.peerDone = true
	var peer [pskNonceLen]byte
	if _, err := io.ReadFull(c.Conn, peer[:]); err != nil {
		c.peerErr = fmt.Errorf("private network: could not read the peer's nonce: %w", err)
		return c.peerErr
	}
	fast := pskMarked(c.psk, peer[:]) // ours always is
	c.r = pskStream(c.psk, peer[:], fast)
	c.w = pskStream(c.psk, c.own[:], fast)
	return nil
}

// Read decrypts in place. libp2p reads a connection from one goroutine.
func (c *pskConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.r.XORKeyStream(b[:n], b[:n])
	}
	return n, err
}

// Write encrypts into a buffer of its own (the caller keeps b), reused.
func (c *pskConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	for len(b) > 0 {
		k := min(len(b), pskChunk)
		if cap(c.wbuf) < k {
			c.wbuf = make([]byte, k)
		}
		out := c.wbuf[:k]
		c.w.XORKeyStream(out, b[:k])
		m, err := c.Conn.Write(out)
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}
