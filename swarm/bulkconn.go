package swarm

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Bulk connections. Between two nodes the peer wire used to be a yamux stream
// inside their libp2p connection, and yamux costs each side a copy of every
// byte and two goroutine hand-offs per frame (the session's send loop, its
// receive loop, the stream's buffer). So the peer wire gets a TCP connection
// of its own beside the libp2p one: TLS 1.3 with libp2p's certificates (each
// side proves its peer ID), batched system calls as on the libp2p connection
// (batchConn), no muxer, and in a fleet with a PSK a proof of the key bound
// to the TLS session (see bulkHandshake) instead of pnet's second cipher.
//
// A node learns where a peer takes bulk connections by asking it over
// BulkProtocol, and dials the IP of its libp2p connection to that peer at the
// port it is told. A bulk connection is accepted only from a peer that passes
// the gate and already has a libp2p connection with this node, and it is
// closed when that libp2p connection goes: it never outlives the mesh's own
// authentication. Where a bulk connection cannot be made (a firewall, an
// older node, a relayed libp2p connection), the peer wire falls back to a
// libp2p stream, as before.

// BulkProtocol answers with the TCP port of the node's bulk listener: two
// bytes, big-endian.
const BulkProtocol protocol.ID = "/ballena/bt-bulk/1.0.0"

const (
	// bulkDialTimeout bounds asking for the port, dialing and the handshake.
	bulkDialTimeout = 5 * time.Second
	// bulkRetry is how long a peer whose bulk connection failed gets streams.
	bulkRetry = time.Minute
	// maxBulkHandshakes bounds the inbound handshakes in flight.
	maxBulkHandshakes = 32
	// bulkProtectTag keeps the libp2p connection of a peer with bulk
	// connections from the connection manager's trimming: it carries no
	// streams while the bulk connection works, and closing it closes that.
	bulkProtectTag = "ballena-bulk"
	// bulkALPN names the protocol in the TLS handshake, so neither a libp2p
	// connection nor a bulk one can be taken for the other.
	bulkALPN = "/ballena/bt-bulk/1.0.0"
	// bulkProofLabel is the TLS exporter label of the PSK proof.
	bulkProofLabel = "EXPORTER-ballena-bulk-psk-proof-1"
)

// errNoBulk says a peer takes no bulk connections now; the caller uses a stream.
var errNoBulk = errors.New("peer takes no bulk connections")

// BulkOff as EngineConfig.BulkListen turns bulk connections off.
const BulkOff = "off"

// bulkConfig is what bulk connections are made with.
type bulkConfig struct {
	listen string   // host:port; "" for the host's first TCP listen IP, any port
	psk    pnet.PSK // the host's private network key; nil for none
	gate   *Gate    // the host's gate; nil lets every peer in
	log    *slog.Logger
	// deliver hands an accepted connection to anacrolix; false if it is
	// not taking any (the caller then closes it).
	deliver func(net.Conn, peer.ID) bool
}

// bulkNet makes and takes bulk connections for one host.
type bulkNet struct {
	h       host.Host
	cfg     bulkConfig
	id      *libp2ptls.Identity
	psk     *[32]byte
	ln      net.Listener // nil: this node dials but takes none
	port    uint16
	sem     chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
	closeMu sync.Once
	refused atomic.Int64 // inbound connections that did not get through secure

	mu     sync.Mutex
	closed bool
	peers  map[peer.ID]*bulkPeer
}

// bulkPeer is what a node knows of one peer's bulk connections.
type bulkPeer struct {
	ep         netip.AddrPort // zero: not asked yet
	retryAfter time.Time      // a failure: streams until then
	live       map[*bulkConn]struct{}
}

func newBulkNet(h host.Host, cfg bulkConfig) (*bulkNet, error) {
	key := h.Peerstore().PrivKey(h.ID())
	if key == nil {
		return nil, errors.New("bulk connections: the host has no private key")
	}
	id, err := libp2ptls.NewIdentity(key)
	if err != nil {
		return nil, fmt.Errorf("bulk connections: %w", err)
	}
	b := &bulkNet{
		h:     h,
		cfg:   cfg,
		id:    id,
		sem:   make(chan struct{}, maxBulkHandshakes),
		done:  make(chan struct{}),
		peers: make(map[peer.ID]*bulkPeer),
	}
	if cfg.psk != nil {
		if len(cfg.psk) != 32 {
			return nil, fmt.Errorf("bulk connections: psk: want 32 bytes, got %d", len(cfg.psk))
		}
		b.psk = new([32]byte)
		copy(b.psk[:], cfg.psk)
	}
	listen := cfg.listen
	if listen == "" {
		listen = bulkListenAddr(h.Network().ListenAddresses())
	}
	if listen == "" {
		return b, nil // no TCP listener to sit beside: dial only
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("bulk connections: listen %s: %w", listen, err)
	}
	b.ln = ln
	b.port = uint16(ln.Addr().(*net.TCPAddr).Port)
	h.SetStreamHandler(BulkProtocol, b.answerPort)
	b.wg.Go(b.accept)
	return b, nil
}

// bulkListenAddr is the first TCP listen address's IP with any port: the bulk
// listener is reachable wherever the libp2p one is.
func bulkListenAddr(addrs []ma.Multiaddr) string {
	for _, a := range addrs {
		if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
			continue
		}
		ip, err := manet.ToIP(a)
		if err != nil {
			continue
		}
		return net.JoinHostPort(ip.String(), "0")
	}
	return ""
}

// Addr is where the node takes bulk connections; nil if it takes none.
func (b *bulkNet) Addr() net.Addr {
	if b.ln == nil {
		return nil
	}
	return b.ln.Addr()
}

func (b *bulkNet) answerPort(s network.Stream) {
	defer s.Close()
	s.SetWriteDeadline(time.Now().Add(bulkDialTimeout))
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], b.port)
	s.Write(p[:])
}

func (b *bulkNet) accept() {
	for {
		raw, err := b.ln.Accept()
		if err != nil {
			select {
			case <-b.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			b.cfg.log.Warn("bulk connections: accept", "err", err)
			return
		}
		select {
		case b.sem <- struct{}{}:
		default:
			raw.Close() // a handshake flood: the peer falls back to a stream
			continue
		}
		b.wg.Go(func() {
			defer func() { <-b.sem }()
			c, p, err := b.secure(raw, network.DirInbound, "")
			if err != nil {
				b.refused.Add(1)
				b.cfg.log.Debug("bulk connection refused", "from", raw.RemoteAddr(), "err", err)
				return
			}
			if !b.cfg.deliver(c, p) {
				c.Close()
			}
		})
	}
}

// dial makes a bulk connection to p, or says why not. errNoBulk (wrapped)
// means p is known not to take one now.
func (b *bulkNet) dial(ctx context.Context, p peer.ID) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, bulkDialTimeout)
	defer cancel()
	ep, err := b.endpoint(ctx, p)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", ep.String())
	if err == nil {
		var c net.Conn
		if c, _, err = b.secure(raw, network.DirOutbound, p); err == nil {
			return c, nil
		}
	}
	b.failed(p)
	return nil, fmt.Errorf("bulk connection to %s at %s: %w", p, ep, err)
}

// endpoint is where p takes bulk connections: the IP of the libp2p connection
// to it, at the port it gives over BulkProtocol (asked once).
func (b *bulkNet) endpoint(ctx context.Context, p peer.ID) (netip.AddrPort, error) {
	b.mu.Lock()
	bp := b.peers[p]
	if bp != nil && time.Now().Before(bp.retryAfter) {
		b.mu.Unlock()
		return netip.AddrPort{}, errNoBulk
	}
	// Without a libp2p connection, the port is asked again: the stream that
	// asks makes the connection, and the peer has it before we dial.
	if bp != nil && bp.ep.IsValid() && b.h.Network().Connectedness(p) == network.Connected {
		ep := bp.ep
		b.mu.Unlock()
		return ep, nil
	}
	b.mu.Unlock()

	ep, err := b.askPort(ctx, p)
	if err != nil {
		b.failed(p)
		return netip.AddrPort{}, fmt.Errorf("%w: %w", errNoBulk, err)
	}
	b.mu.Lock()
	b.peerLocked(p).ep = ep
	b.mu.Unlock()
	return ep, nil
}

func (b *bulkNet) askPort(ctx context.Context, p peer.ID) (netip.AddrPort, error) {
	s, err := b.h.NewStream(ctx, p, BulkProtocol)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		s.SetReadDeadline(d)
	}
	var port [2]byte
	if _, err := io.ReadFull(s, port[:]); err != nil {
		s.Reset()
		return netip.AddrPort{}, fmt.Errorf("read the bulk port: %w", err)
	}
	ip, err := manet.ToIP(s.Conn().RemoteMultiaddr())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("libp2p connection %s: %w", s.Conn().RemoteMultiaddr(), err)
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("libp2p connection %s: no IP", s.Conn().RemoteMultiaddr())
	}
	return netip.AddrPortFrom(addr.Unmap(), binary.BigEndian.Uint16(port[:])), nil
}

// failed gives p streams for a while and asks its port again after.
func (b *bulkNet) failed(p peer.ID) {
	b.mu.Lock()
	bp := b.peerLocked(p)
	bp.ep = netip.AddrPort{}
	bp.retryAfter = time.Now().Add(bulkRetry)
	b.mu.Unlock()
}

func (b *bulkNet) peerLocked(p peer.ID) *bulkPeer {
	bp := b.peers[p]
	if bp == nil {
		bp = &bulkPeer{}
		b.peers[p] = bp
	}
	return bp
}

// secure runs the handshake over raw, then checks the peer as the host
// would: the gate, and a libp2p connection to it. want is the peer expected
// on an outbound connection.
func (b *bulkNet) secure(raw net.Conn, dir network.Direction, want peer.ID) (_ net.Conn, _ peer.ID, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), bulkDialTimeout)
	defer cancel()
	fc, p, err := bulkHandshake(ctx, raw, b.id, b.psk, dir, want)
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			fc.Close()
		}
	}()
	if b.cfg.gate != nil && !b.cfg.gate.InterceptSecured(dir, p, nil) {
		return nil, "", fmt.Errorf("peer %s is not on the allowlist", p)
	}
	if !b.connected(ctx, p) {
		return nil, "", fmt.Errorf("peer %s has no libp2p connection with this node", p)
	}
	c := &bulkConn{flushConn: fc, b: b, p: p, opened: time.Now()}
	if !b.track(c) {
		return nil, "", net.ErrClosed
	}
	// The libp2p connection may have gone between the check and track;
	// peerGone ran then, so look again.
	if b.h.Network().Connectedness(p) != network.Connected {
		c.Close()
		return nil, "", fmt.Errorf("peer %s has no libp2p connection with this node", p)
	}
	return c, p, nil
}

// connected reports whether p has a libp2p connection with this node, waiting
// for one until ctx ends: a peer dials with its libp2p connection in hand,
// but this side may learn of that connection a moment after the dial.
func (b *bulkNet) connected(ctx context.Context, p peer.ID) bool {
	nw := b.h.Network()
	if nw.Connectedness(p) == network.Connected {
		return true
	}
	sub, err := b.h.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		return false
	}
	defer sub.Close()
	for nw.Connectedness(p) != network.Connected { // looked at again once subscribed
		select {
		case <-sub.Out():
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// bulkHandshake is TLS 1.3 with libp2p's certificates (a node proves its
// peer ID) under its own ALPN, then, in a fleet with a PSK, a proof of the
// key from each side: HMAC-SHA256 under the PSK of keying material exported
// from this TLS session and the side's role, so a proof is good for this
// connection alone. The dialer proves first and the listener answers only a
// good proof, so a stranger learns nothing of the fleet. The libp2p
// connection runs pnet under its TLS, which encrypts every byte a second
// time; here the key is proven once, and TLS alone protects the bytes.
func bulkHandshake(ctx context.Context, raw net.Conn, id *libp2ptls.Identity, psk *[32]byte, dir network.Direction, want peer.ID) (_ flushConn, _ peer.ID, err error) {
	defer func() {
		if err != nil {
			raw.Close()
		}
	}()
	if d, ok := ctx.Deadline(); ok {
		raw.SetDeadline(d)
	}
	cfg, keyCh := id.ConfigForPeer(want)
	cfg.NextProtos = []string{bulkALPN}
	bc := newBatchConn(raw)
	var tc *tls.Conn
	if dir == network.DirOutbound {
		tc = tls.Client(bc, cfg)
	} else {
		tc = tls.Server(bc, cfg)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return flushConn{}, "", fmt.Errorf("handshake: %w", err)
	}
	var pub crypto.PubKey
	select {
	case pub = <-keyCh:
	default:
	}
	if pub == nil || tc.ConnectionState().NegotiatedProtocol != bulkALPN {
		return flushConn{}, "", errors.New("handshake: not a bulk connection")
	}
	p, err := peer.IDFromPublicKey(pub)
	if err != nil {
		return flushConn{}, "", fmt.Errorf("handshake: %w", err)
	}
	if psk != nil {
		if err := provePSK(tc, psk, dir == network.DirOutbound); err != nil {
			return flushConn{}, "", fmt.Errorf("private network: %w", err)
		}
	}
	raw.SetDeadline(time.Time{})
	bc.startBatching()
	return flushConn{Conn: tc, bc: bc}, p, nil
}

// provePSK exchanges the two sides' proofs of the fleet key, the dialer's first.
func provePSK(tc *tls.Conn, psk *[32]byte, dialer bool) error {
	cs := tc.ConnectionState()
	ours, err := pskProof(cs, psk, dialer)
	if err != nil {
		return err
	}
	theirs, err := pskProof(cs, psk, !dialer)
	if err != nil {
		return err
	}
	check := func() error {
		got := make([]byte, len(theirs))
		if _, err := io.ReadFull(tc, got); err != nil {
			return fmt.Errorf("the peer's proof of the fleet key: %w", err)
		}
		if !hmac.Equal(got, theirs) {
			return errors.New("the peer does not hold the fleet key")
		}
		return nil
	}
	if !dialer {
		if err := check(); err != nil {
			return err
		}
	}
	if _, err := tc.Write(ours); err != nil {
		return err
	}
	if dialer {
		return check()
	}
	return nil
}

func pskProof(cs tls.ConnectionState, psk *[32]byte, dialer bool) ([]byte, error) {
	ekm, err := cs.ExportKeyingMaterial(bulkProofLabel, nil, 32)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, psk[:])
	m.Write(ekm)
	if dialer {
		m.Write([]byte("dialer"))
	} else {
		m.Write([]byte("listener"))
	}
	return m.Sum(nil), nil
}

func (b *bulkNet) track(c *bulkConn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	bp := b.peerLocked(c.p)
	if bp.live == nil {
		bp.live = make(map[*bulkConn]struct{})
	}
	if len(bp.live) == 0 {
		b.h.ConnManager().Protect(c.p, bulkProtectTag)
	}
	bp.live[c] = struct{}{}
	return true
}

func (b *bulkNet) untrack(c *bulkConn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bp := b.peers[c.p]
	if bp == nil {
		return
	}
	if _, ok := bp.live[c]; !ok {
		return
	}
	delete(bp.live, c)
	if len(bp.live) == 0 {
		b.h.ConnManager().Unprotect(c.p, bulkProtectTag)
	}
}

// live lists p's open bulk connections.
func (b *bulkNet) live(p peer.ID) []*bulkConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bp := b.peers[p]; bp != nil {
		return slices.Collect(maps.Keys(bp.live))
	}
	return nil
}

// peerGone closes p's bulk connections opened before its libp2p connection
// went at time gone (it left, or the allowlist dropped it): a bulk connection
// never outlives that. Those opened since belong to a new libp2p connection.
// Its port is asked again next time.
func (b *bulkNet) peerGone(p peer.ID, gone time.Time) {
	b.mu.Lock()
	bp := b.peers[p]
	if bp == nil {
		b.mu.Unlock()
		return
	}
	bp.ep = netip.AddrPort{}
	bp.retryAfter = time.Time{}
	var old []*bulkConn
	for c := range bp.live {
		if !c.opened.After(gone) {
			old = append(old, c)
		}
	}
	b.mu.Unlock()
	for _, c := range old {
		c.Close() // untracks it, and unprotects p with its last
	}
	b.mu.Lock()
	if b.peers[p] == bp && len(bp.live) == 0 {
		delete(b.peers, p)
	}
	b.mu.Unlock()
}

// Close stops taking bulk connections and closes those open.
func (b *bulkNet) Close() error {
	b.closeMu.Do(func() {
		close(b.done)
		if b.ln != nil {
			b.h.RemoveStreamHandler(BulkProtocol)
			b.ln.Close()
		}
		b.mu.Lock()
		b.closed = true
		peers := b.peers
		b.peers = make(map[peer.ID]*bulkPeer)
		b.mu.Unlock()
		for _, bp := range peers {
			for c := range bp.live {
				c.Close()
			}
		}
		b.wg.Wait()
	})
	return nil
}

// bulkConn is one bulk connection, tracked while open.
type bulkConn struct {
	flushConn
	b      *bulkNet
	p      peer.ID
	opened time.Time
	once   sync.Once
	closed atomic.Bool
}

func (c *bulkConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.flushConn.Close()
		c.closed.Store(true)
		c.b.untrack(c)
	})
	return err
}
