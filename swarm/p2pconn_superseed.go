package swarm

import (
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/anacrolix/torrent/metainfo"
)

// ssConn is one of the seed's connections to a fleet peer, rewriting what
// the seed shows it (see superseeder.go for the policy).
type ssConn struct {
	net.Conn
	ss *superSeeder

	// mu guards the state below and is never held while writing to the
	// stream. The read path takes only mu and never writes: a write blocked by
	// flow control must not stop our reads, or the peer, waiting on its own
	// writes to us, may stop reading too. wmu serializes writes; it is taken
	// before mu. Have messages the read path queues go out from a goroutine.
	mu       sync.Mutex
	wmu      sync.Mutex
	flushing bool
	w        wireParser
	t        *ssTorrent
	off      bool // no super-seeding on this conn: pass everything
	has      []bool
	seen     []bool
	win      map[int]int64 // shown pieces not yet fully sent: bytes sent
	holding  bool          // swallowing the seed's bitfield or have-all
	pending  []byte        // Have messages waiting for a message boundary
	early    []int         // peer's haves before the torrent was known; -1 is have-all
	emit     ssEmitter     // what the Write in progress sends; guarded by wmu
	scratch  []byte        // a bitfield being built
	asked    map[int]bool  // window pieces the peer has requested from the seed
	force    bool          // the peer stalled once: show it pieces shown elsewhere too
	limit    int           // window size
	progress time.Time     // last time the peer received a shown piece or was shown more

	rmu sync.Mutex
	r   wireParser
}

func (c *ssConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.off {
		c.mu.Unlock()
		return c.Conn.Write(b)
	}
	p := &c.w
	// What goes out is mostly b itself: runs of it pass by reference, and
	// only what the seed did not write (bitfields, Have and Suggest messages,
	// heads split across Writes) is built in c.emit. Copying piece payloads
	// here used to cost a fresh buffer the size of every Write.
	o := &c.emit
	o.reset()
	i := 0
	for i < len(b) {
		if !p.started || len(p.hs) < btHandshakeLen {
			p.started = true
			from := len(p.hs)
			n := min(btHandshakeLen-len(p.hs), len(b)-i)
			p.hs = append(p.hs, b[i:i+n]...)
			i += n
			if len(p.hs) == btHandshakeLen {
				if from == 0 {
					o.pass(i-btHandshakeLen, i)
				} else {
					o.add(p.hs)
				}
				if !c.decideLocked(p.hs) {
					c.off = true
					o.pass(i, len(b))
					break
				}
			}
			continue
		}
		if p.left > 0 {
			n := min(p.left, len(b)-i)
			if !c.holding {
				o.pass(i, i+n)
			}
			if p.id == msgPiece {
				if _, ok := c.win[p.piece]; ok {
					c.win[p.piece] += int64(n)
				}
			}
			p.left -= n
			i += n
			if p.left == 0 {
				c.endMessageLocked(o)
			}
			continue
		}
		// Message head: 4 length bytes, the id and, for pieces, the index.
		// Process it as soon as it is whole: a bodiless message such as
		// unchoke must not wait for the next Write.
		from := len(p.hdr) // head bytes that came in earlier Writes
		headStart := i
		keepAlive := false
		for len(p.hdr) < headNeed(p.hdr) && i < len(b) {
			n := min(headNeed(p.hdr)-len(p.hdr), len(b)-i)
			p.hdr = append(p.hdr, b[i:i+n]...)
			i += n
			if len(p.hdr) == 4 && binary.BigEndian.Uint32(p.hdr) == 0 {
				keepAlive = true
				break
			}
		}
		emitHead := func() {
			if from == 0 {
				o.pass(headStart, i)
			} else {
				o.add(p.hdr)
			}
		}
		if keepAlive {
			emitHead()
			p.hdr = p.hdr[:0]
			c.flushPendingLocked(o)
			continue
		}
		if len(p.hdr) < headNeed(p.hdr) {
			continue // the rest of the head comes in a later Write
		}
		l := int(binary.BigEndian.Uint32(p.hdr))
		p.id = p.hdr[4]
		p.left = l - (len(p.hdr) - 4)
		switch p.id {
		case msgBitfield, msgHaveAll:
			c.holding = true
		case msgPiece, msgReject:
			p.piece = int(binary.BigEndian.Uint32(p.hdr[5:9]))
			emitHead()
		default:
			emitHead()
		}
		p.hdr = p.hdr[:0]
		if p.left == 0 {
			c.endMessageLocked(o)
		}
	}
	segs := o.segments(b)
	c.mu.Unlock()
	for _, s := range segs {
		if _, err := c.Conn.Write(s); err != nil {
			return 0, err
		}
	}
	if err := c.drainW(); err != nil {
		return 0, err
	}
	return len(b), nil
}

// ssEmitter collects what one ssConn.Write sends: ranges of the caller's
// buffer and bytes of its own, in order. Its buffers are reused across Writes
// (the write lock covers them until the segments are written).
type ssEmitter struct {
	out  []byte  // bytes of our own
	segs []ssSeg // in stream order
	bufs [][]byte
}

// ssSeg is b[lo:hi] of the caller's buffer, or out[lo:hi] if own.
type ssSeg struct {
	own    bool
	lo, hi int
}

func (e *ssEmitter) reset() {
	e.out = e.out[:0]
	e.segs = e.segs[:0]
}

func (e *ssEmitter) pass(lo, hi int) {
	if lo == hi {
		return
	}
	if k := len(e.segs) - 1; k >= 0 && !e.segs[k].own && e.segs[k].hi == lo {
		e.segs[k].hi = hi
		return
	}
	e.segs = append(e.segs, ssSeg{lo: lo, hi: hi})
}

func (e *ssEmitter) add(p []byte) {
	if len(p) == 0 {
		return
	}
	lo := len(e.out)
	e.out = append(e.out, p...)
	if k := len(e.segs) - 1; k >= 0 && e.segs[k].own && e.segs[k].hi == lo {
		e.segs[k].hi = len(e.out)
		return
	}
	e.segs = append(e.segs, ssSeg{own: true, lo: lo, hi: len(e.out)})
}

// segments resolves the collected ranges against b, in order.
func (e *ssEmitter) segments(b []byte) [][]byte {
	e.bufs = e.bufs[:0]
	for _, s := range e.segs {
		if s.own {
			e.bufs = append(e.bufs, e.out[s.lo:s.hi])
		} else {
			e.bufs = append(e.bufs, b[s.lo:s.hi])
		}
	}
	return e.bufs
}

// drainW writes queued Have messages while the stream is between messages.
// The caller holds wmu.
func (c *ssConn) drainW() error {
	for {
		c.mu.Lock()
		if len(c.pending) == 0 || !c.atBoundaryLocked() {
			c.mu.Unlock()
			return nil
		}
		msg := c.pending
		c.pending = nil
		c.mu.Unlock()
		if _, err := c.Conn.Write(msg); err != nil {
			return err
		}
	}
}

// endMessageLocked runs after the last byte of a message the seed wrote.
func (c *ssConn) endMessageLocked(o *ssEmitter) {
	switch {
	case c.holding:
		// In place of the seed's "everything": the pieces shown to this peer.
		c.holding = false
		c.refillLocked(false)
		c.scratch = appendBitfield(c.scratch[:0], c.seen)
		o.add(c.scratch)
	case c.w.id == msgPiece:
		if sent, ok := c.win[c.w.piece]; ok && sent >= c.t.pieceLength(c.w.piece) {
			delete(c.win, c.w.piece)
			delete(c.asked, c.w.piece)
			c.ss.sent(c.t, c.w.piece)
			c.progress = time.Now()
			c.refillLocked(true)
		}
	case c.w.id == msgReject:
		// The peer cancelled its request of a shown piece. anacrolix plans no
		// new requests to a peer right after it rejects one, and nothing else
		// would make it look again: without a nudge the piece waits for the
		// stall rule, and at the end of a download every leecher waits with it.
		// Suggest Piece (BEP 6) makes it plan again, with the piece in view.
		if _, ok := c.win[c.w.piece]; ok && !c.has[c.w.piece] {
			delete(c.asked, c.w.piece)
			var m [9]byte
			binary.BigEndian.PutUint32(m[:], 5)
			m[4] = msgSuggest
			binary.BigEndian.PutUint32(m[5:], uint32(c.w.piece))
			o.add(m[:])
		}
	}
	c.w.id = 0
	c.flushPendingLocked(o)
}

func (c *ssConn) flushPendingLocked(o *ssEmitter) {
	if len(c.pending) > 0 {
		o.add(c.pending)
		c.pending = c.pending[:0]
	}
}

// atBoundaryLocked reports whether the seed's stream is between messages, after
// its bitfield, so a Have can be written at once.
func (c *ssConn) atBoundaryLocked() bool {
	p := &c.w
	return len(p.hs) == btHandshakeLen && len(p.hdr) == 0 && p.left == 0 && !c.holding && c.seen != nil && c.sentBitfield()
}

func (c *ssConn) sentBitfield() bool { return c.win != nil }

// decideLocked looks at the seed's handshake: super-seed if it is for a torrent
// registered with the super-seeder.
func (c *ssConn) decideLocked(hs []byte) bool {
	if hs[0] != 19 || string(hs[1:20]) != "BitTorrent protocol" {
		return false
	}
	var ih metainfo.Hash
	copy(ih[:], hs[28:48])
	c.ss.mu.Lock()
	t := c.ss.torrents[ih]
	c.ss.mu.Unlock()
	if t == nil {
		return false
	}
	c.t = t
	c.limit = superSeedWindow
	c.progress = time.Now()
	c.ss.register(c)
	c.has = make([]bool, t.numPieces())
	c.seen = make([]bool, t.numPieces())
	for _, i := range c.early {
		c.peerHasLocked(i)
	}
	c.early = nil
	return true
}

// refillLocked shows the peer more pieces until its window is full; with
// announce, as Have messages queued for the next message boundary.
func (c *ssConn) refillLocked(announce bool) {
	if c.win == nil {
		c.win = make(map[int]int64)
	}
	for len(c.win) < c.limit {
		i := c.ss.pick(c.t, c.has, c.seen, c.force)
		if i < 0 {
			return
		}
		c.seen[i] = true
		c.win[i] = 0
		if announce {
			c.pending = binary.BigEndian.AppendUint32(c.pending, 5)
			c.pending = append(c.pending, msgHave)
			c.pending = binary.BigEndian.AppendUint32(c.pending, uint32(i))
		}
	}
}

func (c *ssConn) peerHasLocked(i int) {
	if c.t == nil {
		if len(c.early) < maxBitfield*8 {
			c.early = append(c.early, i)
		}
		return
	}
	if i == -1 {
		for k := range c.has {
			c.has[k] = true
		}
		c.resolveWindowLocked()
		return
	}
	if i < 0 || i >= len(c.has) {
		return
	}
	c.has[i] = true
	if _, ok := c.win[i]; ok {
		delete(c.win, i)
		delete(c.asked, i)
		c.ss.resolve(c.t, i)
	}
}

func (c *ssConn) resolveWindowLocked() {
	for i := range c.win {
		c.ss.resolve(c.t, i)
	}
	clear(c.win)
	clear(c.asked)
}

// Read passes the peer's bytes through and notes the pieces it announces.
func (c *ssConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.rmu.Lock()
		haves, asks := c.r.parse(b[:n])
		c.rmu.Unlock()
		if len(asks) > 0 {
			c.peerAsked(asks)
		}
		if len(haves) > 0 {
			c.peerHas(haves)
		}
	}
	return n, err
}

func (c *ssConn) peerAsked(asks []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.asked == nil {
		c.asked = make(map[int]bool)
	}
	for _, i := range asks {
		if _, shown := c.win[i]; shown { // only window pieces matter; keeps asked bounded
			c.asked[i] = true
		}
	}
}

// requestedLocked reports whether the peer asked for any piece in its window:
// then it is only waiting for the seed's capped upload, not stalled.
func (c *ssConn) requestedLocked() bool {
	for i := range c.win {
		if c.asked[i] {
			return true
		}
	}
	return false
}

func (c *ssConn) peerHas(haves []int) {
	c.mu.Lock()
	if c.off {
		c.mu.Unlock()
		return
	}
	for _, i := range haves {
		c.peerHasLocked(i)
	}
	if c.t == nil || !c.sentBitfield() {
		c.mu.Unlock()
		return
	}
	c.progress = time.Now()
	c.refillLocked(true)
	c.writePendingLocked()
}

// writePendingLocked has queued Have messages written soon, by a goroutine of
// their own, so the caller (the read path) never waits on a write. It is
// called holding mu and releases it.
func (c *ssConn) writePendingLocked() {
	if len(c.pending) == 0 || c.flushing {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	c.mu.Unlock()
	go func() {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		c.mu.Lock()
		c.flushing = false
		c.mu.Unlock()
		c.drainW()
	}()
}

func (c *ssConn) Close() error {
	c.ss.unregister(c)
	c.mu.Lock()
	if c.t != nil {
		c.resolveWindowLocked()
	}
	c.mu.Unlock()
	return c.Conn.Close()
}
