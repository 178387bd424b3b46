package swarm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"golang.org/x/time/rate"
)

// BTProtocol is the libp2p protocol that carries the BitTorrent peer wire between
// fleet nodes, so every byte is encrypted and bound to a node identity.
const BTProtocol protocol.ID = "/ballena/bt/1.0.0"

// p2pNetwork names the dialer network of libp2p peer connections in anacrolix.
const p2pNetwork = "libp2p"

// p2pPort is the port of every synthetic peer address; anacrolix wants host:port.
const p2pPort = 1

// peerAddrs maps libp2p peer IDs to synthetic IPv6 addresses and back.
//
// anacrolix keys bans, smart bans and duplicate detection on the remote IP of a
// connection, so a libp2p peer gets a stable IP of its own: fd (unique local) and
// 15 bytes of sha256(peer ID). A corrupt peer is then banned by identity, and
// AddPeers(peer.ID) becomes an address anacrolix can hand to our dialer. These
// addresses never reach the IP stack: only the libp2p dialer can reach them.
type peerAddrs struct {
	mu   sync.Mutex
	byIP map[netip.Addr]peer.ID
}

func newPeerAddrs() *peerAddrs {
	return &peerAddrs{byIP: make(map[netip.Addr]peer.ID)}
}

// addrOf returns the synthetic address of id and remembers the mapping.
func (m *peerAddrs) addrOf(id peer.ID) netip.AddrPort {
	sum := sha256.Sum256([]byte(id))
	var b [16]byte
	b[0] = 0xfd
	copy(b[1:], sum[:15])
	ip := netip.AddrFrom16(b)
	m.mu.Lock()
	m.byIP[ip] = id
	m.mu.Unlock()
	return netip.AddrPortFrom(ip, p2pPort)
}

// forget drops id's mapping, when the peer has gone and nothing refers to it.
func (m *peerAddrs) forget(id peer.ID, keep func(netip.Addr) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for ip, p := range m.byIP {
		if p == id && !keep(ip) {
			delete(m.byIP, ip)
		}
	}
}

func (m *peerAddrs) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byIP)
}

// peerOf returns the libp2p peer behind a synthetic address string.
func (m *peerAddrs) peerOf(addr string) (peer.ID, bool) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.byIP[ap.Addr()]
	return id, ok
}

// p2pTransport is an anacrolix Listener and Dialer over libp2p streams.
type p2pTransport struct {
	h     host.Host
	addrs *peerAddrs
	ss    *superSeeder  // nil: no super-seeding
	racks *racks        // nil: rack-blind; set before the first stream
	bulk  *bulkNet      // nil: streams only; set before the first dial
	up    *rate.Limiter // nil: no upload cap
	log   *slog.Logger
	// opened counts peer wire connections by what carries them.
	opened struct{ bulk, stream atomic.Int64 }
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newP2PTransport(h host.Host, addrs *peerAddrs, ss *superSeeder, up *rate.Limiter, log *slog.Logger) *p2pTransport {
	t := &p2pTransport{
		h:      h,
		log:    log,
		addrs:  addrs,
		ss:     ss,
		up:     up,
		conns:  make(chan net.Conn),
		closed: make(chan struct{}),
	}
	h.SetStreamHandler(BTProtocol, t.handle)
	return t
}

func (t *p2pTransport) handle(s network.Stream) {
	if !t.deliver(s, s.Conn().RemotePeer()) {
		s.Reset()
	}
}

// deliver hands an incoming peer wire connection (a stream or a bulk
// connection) to Accept; false if the transport is closed.
func (t *p2pTransport) deliver(wc wireConn, remote peer.ID) bool {
	select {
	case t.conns <- t.wrap(wc, remote):
		return true
	case <-t.closed:
		return false
	}
}

func (t *p2pTransport) wrap(wc wireConn, remote peer.ID) net.Conn {
	if _, ok := wc.(network.Stream); ok {
		t.opened.stream.Add(1)
	} else {
		t.opened.bulk.Add(1)
	}
	var c net.Conn = &p2pConn{
		wireConn: wc,
		local:    t.addrs.addrOf(t.h.ID()),
		remote:   t.addrs.addrOf(remote),
	}
	if t.up != nil {
		c = uploadLimitedConn{c, t.up}
	}
	if t.ss != nil {
		c = t.ss.wrap(c)
	}
	if t.racks != nil {
		c = t.racks.wrap(c, remote)
	}
	return c
}

// Accept returns the next incoming peer wire stream.
func (t *p2pTransport) Accept() (net.Conn, error) {
	select {
	case c := <-t.conns:
		return c, nil
	case <-t.closed:
		return nil, net.ErrClosed
	}
}

// Addr is this node's synthetic address.
func (t *p2pTransport) Addr() net.Addr {
	return p2pAddr(t.addrs.addrOf(t.h.ID()))
}

// Close stops accepting streams; open ones stay with anacrolix.
func (t *p2pTransport) Close() error {
	t.once.Do(func() {
		t.h.RemoveStreamHandler(BTProtocol)
		close(t.closed)
	})
	return nil
}

// Dial opens a peer wire connection to the node behind a synthetic address: a
// bulk connection where the peer takes one, else a libp2p stream. Other
// addresses fail at once, so anacrolix falls back to its other dialers.
func (t *p2pTransport) Dial(ctx context.Context, addr string) (net.Conn, error) {
	id, ok := t.addrs.peerOf(addr)
	if !ok {
		return nil, fmt.Errorf("dial %s: not a libp2p peer address", addr)
	}
	if id == t.h.ID() {
		return nil, errors.New("dial self")
	}
	if t.bulk != nil {
		c, err := t.bulk.dial(ctx, id)
		if err == nil {
			return t.wrap(c, id), nil
		}
		if !errors.Is(err, errNoBulk) {
			t.log.Debug("bulk connection failed; using a libp2p stream", "peer", id, "err", err)
		}
	}
	s, err := t.h.NewStream(ctx, id, BTProtocol)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", id, err)
	}
	return t.wrap(s, id), nil
}

// DialerNetwork names the network for anacrolix's bookkeeping.
func (t *p2pTransport) DialerNetwork() string { return p2pNetwork }

// wireConn is what carries the peer wire between two nodes: a libp2p stream
// or a bulk connection.
type wireConn interface {
	io.ReadWriteCloser
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// p2pConn is a peer wire connection seen as a net.Conn with synthetic addresses.
type p2pConn struct {
	wireConn
	local, remote netip.AddrPort
}

func (c *p2pConn) LocalAddr() net.Addr  { return p2pAddr(c.local) }
func (c *p2pConn) RemoteAddr() net.Addr { return p2pAddr(c.remote) }

// p2pAddr is a synthetic peer address; String is host:port so anacrolix can parse it.
type p2pAddr netip.AddrPort

func (a p2pAddr) Network() string { return p2pNetwork }
func (a p2pAddr) String() string {
	ap := netip.AddrPort(a)
	return net.JoinHostPort(ap.Addr().String(), strconv.Itoa(int(ap.Port())))
}
