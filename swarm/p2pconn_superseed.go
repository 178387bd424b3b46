package swarm

import (
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/anacrolix/torrent/metainfo"
)

// Super-seeding, as the physical limit asks: the original seed sends each piece
// once before it sends any piece twice. anacrolix has no such mode, so it is
// done on the wire. On the seed's connections to fleet peers, ssConn rewrites
// what the seed advertises: instead of "have all", each peer is shown a few
// pieces (a window) that it lacks and that were shown to as few peers as
// possible. A peer requests only what it was shown; once it holds a shown piece,
// from the seed or from anyone, the seed shows it another. The peers fetch the
// rest from each other, at their own upload rates.
//
// The seed's engine never learns of the rewrite: it believes the peer knows it
// has everything, and serves whatever the peer requests.

const (
	btHandshakeLen = 68
	msgHave        = 4
	msgBitfield    = 5
	msgRequest     = 6
	msgPiece       = 7
	msgSuggest     = 13
	msgHaveAll     = 14
	msgReject      = 16

	// superSeedWindow is how many shown-but-unsent pieces a peer may hold:
	// enough to keep its requests to the seed pipelined.
	superSeedWindow = 4
)

// superSeedStall is how long a peer may leave its window unrequested before
// it is shown more: it may not want the pieces it was shown (a piece it
// believes requested elsewhere, say), and must never starve.
const superSeedStall = 2 * time.Second

// superSeeder tracks, per torrent the node seeds, how often each piece was shown.
type superSeeder struct {
	mu       sync.Mutex
	torrents map[metainfo.Hash]*ssTorrent
	conns    map[*ssConn]struct{}
	stop     chan struct{}
	started  bool
}

type ssTorrent struct {
	pieceLen, length int64
	shown            []int // how many peers each piece was shown to
	open             []int // showings not yet resolved: neither sent nor had
	cursor           int   // spreads ties across pieces
}

func newSuperSeeder() *superSeeder {
	return &superSeeder{
		torrents: make(map[metainfo.Hash]*ssTorrent),
		conns:    make(map[*ssConn]struct{}),
		stop:     make(chan struct{}),
	}
}

func (s *superSeeder) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
}

func (s *superSeeder) register(c *ssConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c] = struct{}{}
	if !s.started {
		s.started = true
		go s.unstall()
	}
}

func (s *superSeeder) unregister(c *ssConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// unstall widens the window of peers that have not requested what they were shown.
func (s *superSeeder) unstall() {
	tick := time.NewTicker(superSeedStall / 4)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-tick.C:
			s.mu.Lock()
			conns := make([]*ssConn, 0, len(s.conns))
			for c := range s.conns {
				conns = append(conns, c)
			}
			s.mu.Unlock()
			for _, c := range conns {
				c.mu.Lock()
				if c.sentBitfield() && now.Sub(c.progress) > superSeedStall && !c.requestedLocked() {
					c.limit += superSeedWindow
					c.progress = now
					c.force = true
					c.refillLocked(true)
				}
				c.writePendingLocked()
			}
		}
	}
}

func (s *superSeeder) add(ih metainfo.Hash, info *metainfo.Info) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.torrents[ih]; !ok {
		n := info.NumPieces()
		s.torrents[ih] = &ssTorrent{pieceLen: info.PieceLength, length: info.Length, shown: make([]int, n), open: make([]int, n)}
	}
}

func (s *superSeeder) remove(ih metainfo.Hash) {
	s.mu.Lock()
	delete(s.torrents, ih)
	s.mu.Unlock()
}

// pick chooses the piece to show next to a peer: one it lacks and has not been
// shown, shown to the fewest peers so far. A piece is shown again only once
// every earlier showing was resolved (the seed sent it, or the peer got it
// elsewhere), so the seed never queues a second copy before the first went
// out; force lifts that for a peer that would otherwise starve.
func (s *superSeeder) pick(t *ssTorrent, has, seen []bool, force bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(t.shown)
	best := -1
	for k := range n {
		i := (t.cursor + k) % n
		if has[i] || seen[i] || (t.open[i] > 0 && !force) {
			continue
		}
		if best == -1 || t.shown[i] < t.shown[best] {
			best = i
			if t.shown[i] == 0 {
				break
			}
		}
	}
	if best >= 0 {
		t.shown[best]++
		t.open[best]++
		t.cursor = (best + 1) % n
	}
	return best
}

// resolve closes a showing of piece i.
func (s *superSeeder) resolve(t *ssTorrent, i int) {
	s.mu.Lock()
	if t.open[i] > 0 {
		t.open[i]--
	}
	s.mu.Unlock()
}

func (t *ssTorrent) pieceLength(i int) int64 {
	if i == len(t.shown)-1 {
		return t.length - int64(i)*t.pieceLen
	}
	return t.pieceLen
}

// wrap returns c with super-seeding for torrents registered when its handshake
// goes out; other torrents pass through untouched.
func (s *superSeeder) wrap(c net.Conn) net.Conn {
	return &ssConn{Conn: c, ss: s}
}

// wireParser walks BitTorrent framing incrementally.
type wireParser struct {
	started bool
	hs      []byte // handshake bytes so far
	hdr     []byte // partial message head: 4 length bytes and the id
	left    int    // payload bytes left in the current message
	id      byte
	payload []byte // payload kept for the messages we read
	piece   int    // index of the current piece message (write side)
}

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
	out      []byte
	asked    map[int]bool // window pieces the peer has requested from the seed
	force    bool         // the peer stalled once: show it pieces shown elsewhere too
	limit    int          // window size
	progress time.Time    // last time the peer received a shown piece or was shown more

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
	out := c.out[:0]
	i := 0
	for i < len(b) {
		if !p.started || len(p.hs) < btHandshakeLen {
			p.started = true
			n := min(btHandshakeLen-len(p.hs), len(b)-i)
			p.hs = append(p.hs, b[i:i+n]...)
			i += n
			if len(p.hs) == btHandshakeLen {
				out = append(out, p.hs...)
				if !c.decideLocked(p.hs) {
					c.off = true
					out = append(out, b[i:]...)
					break
				}
			}
			continue
		}
		if p.left > 0 {
			n := min(p.left, len(b)-i)
			if !c.holding {
				out = append(out, b[i:i+n]...)
			}
			if p.id == msgPiece {
				if _, ok := c.win[p.piece]; ok {
					c.win[p.piece] += int64(n)
				}
			}
			p.left -= n
			i += n
			if p.left == 0 {
				out = c.endMessageLocked(out)
			}
			continue
		}
		// Message head: 4 length bytes, the id and, for pieces, the index.
		// Process it as soon as it is whole: a bodiless message such as
		// unchoke must not wait for the next Write.
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
		if keepAlive {
			out = append(out, p.hdr...)
			p.hdr = p.hdr[:0]
			out = c.flushPendingLocked(out)
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
			out = append(out, p.hdr...)
		default:
			out = append(out, p.hdr...)
		}
		p.hdr = p.hdr[:0]
		if p.left == 0 {
			out = c.endMessageLocked(out)
		}
	}
	// out is handed over: the next Write builds its own.
	c.out = nil
	c.mu.Unlock()
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	if err := c.drainW(); err != nil {
		return 0, err
	}
	return len(b), nil
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
func (c *ssConn) endMessageLocked(out []byte) []byte {
	switch {
	case c.holding:
		// In place of the seed's "everything": the pieces shown to this peer.
		c.holding = false
		c.refillLocked(false)
		out = appendBitfield(out, c.seen)
	case c.w.id == msgPiece:
		if sent, ok := c.win[c.w.piece]; ok && sent >= c.t.pieceLength(c.w.piece) {
			delete(c.win, c.w.piece)
			delete(c.asked, c.w.piece)
			c.ss.resolve(c.t, c.w.piece)
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
			out = binary.BigEndian.AppendUint32(out, 5)
			out = append(out, msgSuggest)
			out = binary.BigEndian.AppendUint32(out, uint32(c.w.piece))
		}
	}
	c.w.id = 0
	return c.flushPendingLocked(out)
}

func (c *ssConn) flushPendingLocked(out []byte) []byte {
	if len(c.pending) > 0 {
		out = append(out, c.pending...)
		c.pending = c.pending[:0]
	}
	return out
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
	c.has = make([]bool, len(t.shown))
	c.seen = make([]bool, len(t.shown))
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
		c.early = append(c.early, i)
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
		c.asked[i] = true
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

// parse walks the peer's stream and returns the pieces it announced, -1 for
// have-all, and the pieces it requested.
func (p *wireParser) parse(b []byte) (haves, asks []int) {
	i := 0
	for i < len(b) {
		if len(p.hs) < btHandshakeLen {
			n := min(btHandshakeLen-len(p.hs), len(b)-i)
			p.hs = append(p.hs, b[i:i+n]...)
			i += n
			continue
		}
		if p.left > 0 {
			n := min(p.left, len(b)-i)
			if p.id == msgHave || p.id == msgBitfield || p.id == msgRequest {
				p.payload = append(p.payload, b[i:i+n]...)
			}
			p.left -= n
			i += n
			if p.left == 0 {
				haves, asks = p.announced(haves, asks)
			}
			continue
		}
		if len(p.hdr) < 5 {
			n := min(5-len(p.hdr), len(b)-i)
			p.hdr = append(p.hdr, b[i:i+n]...)
			i += n
			if len(p.hdr) == 4 && binary.BigEndian.Uint32(p.hdr) == 0 {
				p.hdr = p.hdr[:0]
			}
			if len(p.hdr) < 5 {
				continue
			}
		}
		p.id = p.hdr[4]
		p.left = int(binary.BigEndian.Uint32(p.hdr)) - 1
		p.hdr = p.hdr[:0]
		p.payload = p.payload[:0]
		if p.left == 0 {
			haves, asks = p.announced(haves, asks)
		}
	}
	return haves, asks
}

func (p *wireParser) announced(haves, asks []int) ([]int, []int) {
	switch p.id {
	case msgRequest:
		if len(p.payload) >= 4 {
			asks = append(asks, int(binary.BigEndian.Uint32(p.payload)))
		}
	case msgHave:
		if len(p.payload) == 4 {
			haves = append(haves, int(binary.BigEndian.Uint32(p.payload)))
		}
	case msgBitfield:
		for k, by := range p.payload {
			for bit := range 8 {
				if by&(0x80>>bit) != 0 {
					haves = append(haves, k*8+bit)
				}
			}
		}
	case msgHaveAll:
		haves = append(haves, -1)
	}
	p.id = 0
	return haves, asks
}

// headNeed is how many head bytes the write side needs before it can act.
func headNeed(hdr []byte) int {
	switch {
	case len(hdr) < 4:
		return 4
	case len(hdr) >= 5 && (hdr[4] == msgPiece || hdr[4] == msgReject):
		return 9
	default:
		return 5
	}
}

func appendBitfield(out []byte, set []bool) []byte {
	n := (len(set) + 7) / 8
	out = binary.BigEndian.AppendUint32(out, uint32(1+n))
	out = append(out, msgBitfield)
	start := len(out)
	out = append(out, make([]byte, n)...)
	for i, ok := range set {
		if ok {
			out[start+i/8] |= 0x80 >> (i % 8)
		}
	}
	return out
}
