package swarm

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"ballena.dev/swarm/policy"
)

// Rack-aware peers. A node labelled rack=R (the machine label of `ballena
// node --label`) asks whoever it connects to for its rack, and applies
// policy.RackView on its read side: a peer of another rack is shown to
// anacrolix holding only the pieces no connected peer of the node's own rack
// announced, so anacrolix asks its own rack for everything its rack holds
// and crosses racks only for the rest. A piece hidden from a cross-rack
// connection is shown there (a Have, injected between messages) once no
// same-rack peer holds it any more. A peer whose rack is unknown counts as
// another rack's; a node without a label is rack-blind.

// RackProtocol answers with the node's rack label, nothing else.
const RackProtocol protocol.ID = "/ballena/rack/1.0.0"

const (
	rackLookupTimeout = 3 * time.Second
	maxRackLabel      = 256
	// maxRackBuffered bounds what a cross-rack connection reads ahead of
	// anacrolix.
	maxRackBuffered = 4 << 20
)

// racks keeps the node's rack, its peers' racks and, per torrent, what the
// node's own rack holds.
type racks struct {
	self      string
	h         host.Host
	numPieces func(metainfo.Hash) int // 0: torrent unknown
	log       *slog.Logger

	mu       sync.Mutex
	of       map[peer.ID]string
	torrents map[metainfo.Hash]*rackTorrent
}

// rackTorrent is policy.RackView of one torrent and the cross-rack
// connections that hide pieces because of it. Guarded by racks.mu.
type rackTorrent struct {
	view  *policy.RackView
	n     int
	cross map[*rackConn]struct{}
}

func newRacks(h host.Host, self string, numPieces func(metainfo.Hash) int, log *slog.Logger) *racks {
	r := &racks{self: self, h: h, numPieces: numPieces, log: log,
		of: make(map[peer.ID]string), torrents: make(map[metainfo.Hash]*rackTorrent)}
	h.SetStreamHandler(RackProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(rackLookupTimeout))
		_, _ = io.WriteString(s, self)
	})
	return r
}

func (r *racks) close() { r.h.RemoveStreamHandler(RackProtocol) }

// rackOf asks p for its rack once and remembers the answer; "" if unknown.
func (r *racks) rackOf(ctx context.Context, p peer.ID) string {
	r.mu.Lock()
	rk, ok := r.of[p]
	r.mu.Unlock()
	if ok {
		return rk
	}
	ctx, cancel := context.WithTimeout(ctx, rackLookupTimeout)
	defer cancel()
	s, err := r.h.NewStream(ctx, p, RackProtocol)
	if err != nil {
		r.log.Debug("rack lookup", "peer", p, "err", err)
		return "" // not remembered: a node without a label, or not yet reachable
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(rackLookupTimeout))
	b, err := io.ReadAll(io.LimitReader(s, maxRackLabel))
	if err != nil {
		return ""
	}
	rk = string(b)
	r.mu.Lock()
	if len(r.of) >= 4096 {
		clear(r.of) // a bound; labels are asked again
	}
	r.of[p] = rk
	r.mu.Unlock()
	return rk
}

// known is p's rack if this node learnt it, else ""; r may be nil.
func (r *racks) known(p peer.ID) string {
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.of[p]
}

// torrentLocked returns the rack state of ih, or nil if the torrent is unknown.
func (r *racks) torrentLocked(ih metainfo.Hash) *rackTorrent {
	if t := r.torrents[ih]; t != nil {
		return t
	}
	n := r.numPieces(ih)
	if n <= 0 {
		return nil
	}
	t := &rackTorrent{view: policy.NewRackView(n), n: n, cross: make(map[*rackConn]struct{})}
	r.torrents[ih] = t
	return t
}

// wrap applies the rack rule to a connection to remote.
func (r *racks) wrap(c net.Conn, remote peer.ID) net.Conn {
	// A peer not known to be of this rack (no label, no answer) counts as
	// another rack's.
	rk := r.rackOf(context.Background(), remote)
	rc := &rackConn{Conn: c, rk: r, same: policy.SameRack(r.self, rk)}
	if !rc.same {
		rc.cond = sync.NewCond(&rc.rk.mu)
		go rc.pump()
	}
	return rc
}

// rackConn is a peer wire connection seen through the rack rule. On a
// same-rack connection it notes what the peer announces; on a cross-rack one
// it rewrites what the peer announces. Its cross-rack state is guarded by
// racks.mu, which the rack view's changes need too.
type rackConn struct {
	net.Conn
	rk   *racks
	same bool

	// Same-rack: the peer's announcements.
	p   wireParser
	t   *rackTorrent
	had []bool

	// Cross-rack: a goroutine reads the peer, rewrites, and queues for Read.
	cond    *sync.Cond
	out     []byte // rewritten bytes; Read has handed out out[:r]
	r       int
	err     error
	pass    bool // unknown torrent: no rewriting
	hs      []byte
	hdr     []byte
	left    int
	id      byte
	payload []byte
	keep    bool   // collecting the current message to rewrite it
	hidden  []bool // announced by the peer, not shown to anacrolix
	pending []byte // Haves to show at the next message boundary
}

// Read hands anacrolix the peer's bytes: as they come on a same-rack
// connection (noting its pieces), rewritten on a cross-rack one.
func (c *rackConn) Read(b []byte) (int, error) {
	if c.same {
		n, err := c.Conn.Read(b)
		if n > 0 {
			c.noteSame(b[:n])
		}
		return n, err
	}
	c.rk.mu.Lock()
	defer c.rk.mu.Unlock()
	for len(c.out) == c.r && c.err == nil {
		c.cond.Wait()
	}
	if len(c.out) == c.r {
		return 0, c.err
	}
	n := copy(b, c.out[c.r:])
	c.r += n
	if c.r == len(c.out) {
		c.out, c.r = c.out[:0], 0 // drained: reuse the buffer
	}
	c.cond.Broadcast() // the pump may wait for room
	return n, nil
}

func (c *rackConn) noteSame(b []byte) {
	haves, _ := c.p.parse(b)
	if len(haves) == 0 {
		return
	}
	c.rk.mu.Lock()
	defer c.rk.mu.Unlock()
	if c.t == nil {
		if len(c.p.hs) < btHandshakeLen {
			return
		}
		var ih metainfo.Hash
		copy(ih[:], c.p.hs[28:48])
		if c.t = c.rk.torrentLocked(ih); c.t == nil {
			return
		}
		c.had = make([]bool, c.t.n)
	}
	for _, i := range haves {
		if i == -1 {
			for k := range c.had {
				c.addLocked(k)
			}
		} else if i >= 0 && i < len(c.had) {
			c.addLocked(i)
		}
	}
}

func (c *rackConn) addLocked(i int) {
	if !c.had[i] {
		c.had[i] = true
		c.t.view.Add(i)
	}
}

// pump reads the cross-rack peer and queues what anacrolix may see.
func (c *rackConn) pump() {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Conn.Read(buf)
		c.rk.mu.Lock()
		if n > 0 {
			c.rewriteLocked(buf[:n])
		}
		if err != nil {
			c.err = err
		}
		c.cond.Broadcast()
		for len(c.out)-c.r > maxRackBuffered && c.err == nil {
			c.cond.Wait()
		}
		done := c.err != nil
		c.rk.mu.Unlock()
		if done {
			return
		}
	}
}

// rewriteLocked walks the cross-rack peer's stream: the handshake and every
// message but the announcements pass as they come; Have, Bitfield and Have
// All are held whole and shown only for the pieces the rack lacks.
func (c *rackConn) rewriteLocked(b []byte) {
	if c.pass {
		c.out = append(c.out, b...)
		return
	}
	for len(b) > 0 {
		if len(c.hs) < btHandshakeLen {
			n := min(btHandshakeLen-len(c.hs), len(b))
			c.hs = append(c.hs, b[:n]...)
			c.out = append(c.out, b[:n]...)
			b = b[n:]
			if len(c.hs) == btHandshakeLen {
				var ih metainfo.Hash
				copy(ih[:], c.hs[28:48])
				if c.t = c.rk.torrentLocked(ih); c.t == nil {
					c.pass = true
					c.out = append(c.out, b...)
					return
				}
				c.t.cross[c] = struct{}{}
				c.hidden = make([]bool, c.t.n)
			}
			continue
		}
		if c.left > 0 {
			n := min(c.left, len(b))
			if c.keep {
				c.payload = append(c.payload, b[:n]...)
			} else {
				c.out = append(c.out, b[:n]...)
			}
			c.left -= n
			b = b[n:]
			if c.left == 0 {
				c.endMessageLocked()
			}
			continue
		}
		n := min(5-len(c.hdr), len(b))
		c.hdr = append(c.hdr, b[:n]...)
		b = b[n:]
		if len(c.hdr) >= 4 && binary.BigEndian.Uint32(c.hdr) == 0 {
			c.out = append(c.out, c.hdr[:4]...) // keep-alive
			rest := c.hdr[4:]
			c.hdr = c.hdr[:0]
			b = append(rest[:len(rest):len(rest)], b...)
			c.flushPendingLocked()
			continue
		}
		if len(c.hdr) < 5 {
			continue
		}
		l := int(binary.BigEndian.Uint32(c.hdr))
		c.id = c.hdr[4]
		c.left = l - 1
		c.keep = (c.id == msgHave && l == 5) || (c.id == msgBitfield && c.left <= maxBitfield) || (c.id == msgHaveAll && l == 1)
		c.payload = c.payload[:0]
		if !c.keep {
			c.out = append(c.out, c.hdr...)
		}
		c.hdr = c.hdr[:0]
		if c.left == 0 {
			c.endMessageLocked()
		}
	}
}

func (c *rackConn) endMessageLocked() {
	if c.keep {
		c.keep = false
		switch c.id {
		case msgHave:
			if i := int(binary.BigEndian.Uint32(c.payload)); i < c.t.n && !c.t.view.Lacks(i) {
				c.hidden[i] = true
			} else {
				c.out = binary.BigEndian.AppendUint32(c.out, 5)
				c.out = append(c.out, msgHave)
				c.out = append(c.out, c.payload...)
			}
		case msgBitfield, msgHaveAll:
			show := make([]bool, c.t.n)
			for i := range c.t.n {
				has := c.id == msgHaveAll || (i/8 < len(c.payload) && c.payload[i/8]&(0x80>>(i%8)) != 0)
				if !has {
					continue
				}
				if c.t.view.Lacks(i) {
					show[i] = true
				} else {
					c.hidden[i] = true
				}
			}
			c.out = appendBitfield(c.out, show)
		}
	}
	c.flushPendingLocked()
}

func (c *rackConn) atBoundaryLocked() bool {
	return len(c.hs) == btHandshakeLen && len(c.hdr) == 0 && c.left == 0
}

func (c *rackConn) flushPendingLocked() {
	if len(c.pending) > 0 && c.atBoundaryLocked() {
		c.out = append(c.out, c.pending...)
		c.pending = c.pending[:0]
		c.cond.Broadcast()
	}
}

// showLocked shows a hidden piece: the rack no longer holds it.
func (c *rackConn) showLocked(i int) {
	if c.hidden == nil || !c.hidden[i] {
		return
	}
	c.hidden[i] = false
	c.pending = binary.BigEndian.AppendUint32(c.pending, 5)
	c.pending = append(c.pending, msgHave)
	c.pending = binary.BigEndian.AppendUint32(c.pending, uint32(i))
	c.flushPendingLocked()
}

// Close takes a same-rack peer's pieces out of the rack's view, showing on
// cross-rack connections the ones no one in the rack holds any more.
func (c *rackConn) Close() error {
	err := c.Conn.Close()
	c.rk.mu.Lock()
	defer c.rk.mu.Unlock()
	if c.t == nil {
		return err
	}
	if !c.same {
		delete(c.t.cross, c)
		return err
	}
	for i, ok := range c.had {
		if !ok {
			continue
		}
		c.had[i] = false
		c.t.view.Remove(i)
		if c.t.view.Lacks(i) {
			for x := range c.t.cross {
				x.showLocked(i)
			}
		}
	}
	return err
}

// numPieces is the piece count of a torrent the engine seeds or fetches, or
// 0. A download's comes from its signed release: the info dict arrives from
// peers only after their first announcements.
func (e *Engine) numPieces(ih metainfo.Hash) int {
	e.mu.Lock()
	for _, tr := range e.transfers {
		if tr.ih == ih && tr.rel.PieceLength > 0 {
			e.mu.Unlock()
			return int((tr.rel.Size + tr.rel.PieceLength - 1) / tr.rel.PieceLength)
		}
	}
	e.mu.Unlock()
	t, ok := e.cl.Torrent(ih)
	if !ok || t.Info() == nil {
		return 0
	}
	return t.Info().NumPieces()
}
