// Package sim is a deterministic discrete-event simulator of a Ballena swarm:
// one or more seeds and N peers spreading one artifact, each peer with its own
// upload and download capacity, link latency, late joining or leaving, in
// racks whose uplinks are oversubscribed. Pieces travel at flow level (one
// flow per piece, its rate the bottleneck share of its path), so 10,000 peers
// run in minutes on one core.
//
// The decisions come from Ballena's own code, package swarm/policy, which the
// real node calls too: which piece the super-seeding seed shows each peer
// (policy.SuperSeed), which peers a node keeps (policy.SelectPeers) and whom
// a node may ask for a piece (policy.RackView). What lives inside
// anacrolix/torrent is modelled here, not run: rarest-first piece choice,
// request pipelining and endgame (see README.md for the model and its limits).
//
// The same Config and seed give the same Result, byte for byte: one event
// loop, one PCG random source, ties in time broken by event order.
package sim

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/swarm/policy"
)

// Config describes one simulated spread. Rates are bytes per second, times seconds.
type Config struct {
	Peers int   // leechers
	Seeds int   // seeds holding the whole artifact at time 0; 0 means 1
	Size  int64 // artifact bytes
	// PieceLength is the piece size; 0 means what a Ballena publish picks
	// (artifact.PieceLength).
	PieceLength int64
	Up, Down    float64 // every leecher's capacity
	SeedUp      float64 // every seed's upload; 0 means Up
	Latency     float64 // one-way link latency
	// StartDelay is when the peers start fetching (connection and metadata
	// setup before the first request); JoinSpread spreads their starts
	// uniformly over [StartDelay, StartDelay+JoinSpread].
	StartDelay, JoinSpread float64

	// Racks: 0 means no racks. Peers are dealt round-robin into Racks racks
	// (seeds into rack 0); each rack's uplink carries members·Up/Oversub each
	// way.
	Racks   int
	Oversub float64
	// RackAware has peers use their rack labels (policy.SelectPeers,
	// policy.RackView); rack-blind peers ignore them.
	RackAware bool

	NoSuperSeed bool // seeds advertise everything and serve any request
	// Conns is how many peers each peer dials (anacrolix keeps up to 50
	// connections per torrent; dials and accepts each make half); 0 means 25.
	Conns int
	// SeedConns is how many peers connect to each seed; 0 means all, up to 50.
	SeedConns int
	// UpSlots and DownSlots bound the piece flows a peer serves and fetches at
	// once; each connection carries one piece at a time. 0 means no bound
	// beyond that (anacrolix requests from every connection at once).
	UpSlots, DownSlots int

	// Churn: LeaveFrac of the leechers leave for good at times uniform in
	// [LeaveFrom, LeaveTo] (seconds).
	LeaveFrac          float64
	LeaveFrom, LeaveTo float64
	// SeedDeath, if > 0, is when every seed leaves (seconds). SeedDeathDone,
	// if > 0, has them leave once that fraction of leechers finished.
	SeedDeath     float64
	SeedDeathDone float64

	// Tick is the step in which flows move bytes at fixed rates; 0 means an
	// eighth of a piece's time at a whole link.
	Tick float64

	// ShareEvery is how many ticks pass between two exact max-min shares of
	// the links; in between, a new flow takes what its links have left and a
	// finished one gives its rate back. 0 means 8: about once a piece time.
	ShareEvery int

	Rand uint64 // random seed: the same Config and Rand give the same Result
	// MaxWall bounds the run's real time; 0 means 30 minutes.
	MaxWall time.Duration
}

// Result is what a run measured.
type Result struct {
	Config     Config
	Pieces     int
	Bound      float64   // fluid lower bound, seconds
	Finish     []float64 // finish times of the leechers that finished, sorted
	Incomplete int       // leechers that stayed to the end and did not finish
	Left       int       // leechers that left (churn)
	SeedSent   int64     // bytes the seeds uploaded, partial pieces included
	// SeedOrderBroken counts pieces a seed started sending a second time while
	// some piece had never been shown to any peer: 0 when super-seeding holds.
	SeedOrderBroken int
	// SeedEarlyRepeats counts pieces a seed started sending a second time
	// while some piece, shown to a peer, was not sent yet (it waited in that
	// peer's window behind other requests).
	SeedEarlyRepeats int
	// Wasted is bytes received and thrown away: endgame duplicates and
	// pieces cut off by a leaving peer.
	Wasted     int64
	CrossRack  int64 // bytes that crossed a rack uplink
	Delivered  int64 // bytes of whole pieces delivered to leechers
	Events     int64
	Stalls     int     // super-seed stall rule firings (a window widened, forced)
	WallSecond float64 // real time the run took
}

// Percentile is the p-th percentile (0..100) of the finish times, counting
// unfinished leechers as +Inf.
func (r *Result) Percentile(p float64) float64 {
	n := len(r.Finish) + r.Incomplete
	if n == 0 {
		return math.NaN()
	}
	k := int(math.Ceil(p/100*float64(n))) - 1
	k = max(0, min(k, n-1))
	if k >= len(r.Finish) {
		return math.Inf(1)
	}
	return r.Finish[k]
}

// SeedCopies is how many copies of the artifact the seeds sent.
func (r *Result) SeedCopies() float64 { return float64(r.SeedSent) / float64(r.Config.Size) }

// Bound is the fluid lower bound of Kumar and Ross (2006) for one seed
// uploading Us and n peers uploading U and downloading D: no schedule spreads
// F bytes faster than max(F/Us, F/D, n·F/(Us + n·U)).
func Bound(F, Us, U, D float64, n int) float64 {
	return max(F/Us, F/D, float64(n)*F/(Us+float64(n)*U))
}

type eventKind uint8

const (
	evJoin     eventKind = iota // a leecher starts
	evStart                     // a requested flow starts moving bytes (after a round trip)
	evAnnounce                  // a piece's Have reaches the neighbours
	evLeave                     // a peer leaves for good
	evStall                     // the super-seed stall rule looks at the seeds' peers
)

type event struct {
	t    float64
	seq  int64
	kind eventKind
	p    int32 // peer
	x    int32 // piece
	f    *flow
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].t != h[j].t {
		return h[i].t < h[j].t
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// flow is one piece moving from src to dst.
type flow struct {
	src, dst int32
	piece    int32
	active   bool    // moving bytes (after its round trip)
	cross    bool    // crosses a rack uplink
	done     float64 // bytes moved
	size     float64
	rate     float64 // bytes per second; -1 while share runs
	at       float64 // when it finished, within the last step
	idxUp    int32   // position in src.ups
	idxDown  int32   // position in dst.downs
	idxAct   int32   // position in sim.active
	links    [4]int32
	nlinks   int8
	conn     int32 // src's index in dst.nbrs
	dead     bool
}

// ssConn is a seed's super-seeding state for one peer: what ssConn in
// package swarm keeps per connection.
type ssConn struct {
	seen     []bool
	has      []bool // the seed's view of the peer's pieces
	win      []int32
	winBits  []uint64
	force    bool
	limit    int
	progress float64
}

type peer struct {
	id       int32
	seed     bool
	rack     int32
	up, down float64
	alive    bool
	joined   bool
	leaving  bool // will leave (churn); not counted as incomplete
	done     bool
	nhave    int
	have     []uint64
	ann      []uint64 // pieces whose Have reached the neighbours
	haveB    []bool
	inflight []uint64 // pieces being fetched
	flying   []uint8  // flows per piece being fetched (endgame may make 2)
	nbrs     []int32
	rev      []int32  // rev[k]: our index in nbrs[k]'s list
	want     []int32  // want[k]: pieces nbrs[k] announced that we lack
	busy     []bool   // busy[k]: the connection from nbrs[k] carries a piece
	avail    []uint16 // per piece: neighbours that announced it
	rackView *policy.RackView
	ups      []*flow
	downs    []*flow
	nup      int               // active upload flows
	ndown    int               // active download flows
	rot      int               // rotates neighbour scans
	ss       map[int32]*ssConn // seeds only: per peer
	finish   float64
}

type rackLink struct {
	up, down  float64
	outs, ins []*flow
	nOut, nIn int // active flows
}

type sim struct {
	cfg      Config
	rng      *rand.Rand
	now      float64
	seq      int64
	q        eventHeap
	peers    []*peer
	nSeeds   int
	pieces   int
	pieceLen int64
	words    int
	tick     float64
	active   []*flow
	dirty    bool
	shared   int64 // the step share last ran
	// links: every peer's upload, then every peer's download, then each
	// rack's uplink out and in.
	links     []link
	linkFlows [][]*flow
	lh        linkHeap
	pol       []*policy.SuperSeed // per seed
	sent      [][]int32           // per seed: times each piece was started
	unsentN   []int               // per seed: pieces not yet sent once
	unshownN  []int               // per seed: pieces never shown
	res       Result
	finished  int
	wallEnd   time.Time
}

// Run simulates cfg.
func Run(cfg Config) (*Result, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := newSim(cfg)
	start := time.Now()
	s.wallEnd = start.Add(cfg.MaxWall)
	if err := s.loop(); err != nil {
		return nil, err
	}
	s.res.WallSecond = time.Since(start).Seconds()
	slices.Sort(s.res.Finish)
	return &s.res, nil
}

func (c *Config) fill() error {
	if c.Peers <= 0 || c.Size <= 0 || c.Up <= 0 || c.Down <= 0 {
		return errors.New("sim: peers, size, up and down must be positive")
	}
	if c.Seeds <= 0 {
		c.Seeds = 1
	}
	if c.PieceLength <= 0 {
		c.PieceLength = artifact.PieceLength(c.Size)
	}
	if c.SeedUp <= 0 {
		c.SeedUp = c.Up
	}
	if c.Conns <= 0 {
		c.Conns = 25
	}
	if c.SeedConns <= 0 {
		c.SeedConns = min(c.Peers, 50)
	}
	if c.UpSlots <= 0 {
		c.UpSlots = math.MaxInt32
	}
	if c.DownSlots <= 0 {
		c.DownSlots = math.MaxInt32
	}
	if c.Racks > 0 && c.Oversub <= 0 {
		c.Oversub = 1
	}
	if c.ShareEvery <= 0 {
		c.ShareEvery = 8
	}
	if c.MaxWall <= 0 {
		c.MaxWall = 30 * time.Minute
	}
	return nil
}

func newSim(cfg Config) *sim {
	s := &sim{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Rand, 0x62616c6c656e61))}
	s.pieceLen = cfg.PieceLength
	s.pieces = int((cfg.Size + s.pieceLen - 1) / s.pieceLen)
	s.words = (s.pieces + 63) / 64
	s.nSeeds = cfg.Seeds
	s.res.Config = cfg
	s.res.Pieces = s.pieces
	s.res.Bound = Bound(float64(cfg.Size), cfg.SeedUp*float64(cfg.Seeds), cfg.Up, cfg.Down, cfg.Peers)
	n := cfg.Seeds + cfg.Peers
	s.peers = make([]*peer, n)
	for i := range n {
		p := &peer{id: int32(i), seed: i < cfg.Seeds, up: cfg.Up, down: cfg.Down}
		p.have = make([]uint64, s.words)
		p.ann = make([]uint64, s.words)
		p.haveB = make([]bool, s.pieces)
		if p.seed {
			p.up = cfg.SeedUp
			p.alive, p.joined, p.done = true, true, true
			for k := range s.pieces {
				p.setHave(k)
				p.ann[k>>6] |= 1 << (k & 63)
			}
			p.nhave = s.pieces
			p.ss = make(map[int32]*ssConn)
		} else {
			p.inflight = make([]uint64, s.words)
			p.flying = make([]uint8, s.pieces)
			p.avail = make([]uint16, s.pieces)
			if cfg.Racks > 0 {
				p.rack = int32((i - cfg.Seeds) % cfg.Racks)
				if cfg.RackAware {
					p.rackView = policy.NewRackView(s.pieces)
				}
			}
		}
		s.peers[i] = p
	}
	s.links = make([]link, 2*n+2*cfg.Racks)
	s.linkFlows = make([][]*flow, len(s.links))
	for i, p := range s.peers {
		s.links[i].cap = p.up
		s.links[n+i].cap = p.down
	}
	if cfg.Racks > 0 {
		members := make([]int, cfg.Racks)
		for _, p := range s.peers {
			members[p.rack]++
		}
		for r := range cfg.Racks {
			c := float64(members[r]) * cfg.Up / cfg.Oversub
			s.links[2*n+2*r].cap = c
			s.links[2*n+2*r+1].cap = c
		}
	}
	s.tick = cfg.Tick
	if s.tick <= 0 {
		// A sixteenth of a piece's time at one slot's share of a link.
		s.tick = float64(s.pieceLen) / min(cfg.Up, cfg.Down) / 8
	}
	for range cfg.Seeds {
		s.pol = append(s.pol, policy.NewSuperSeed(s.pieces))
		s.sent = append(s.sent, make([]int32, s.pieces))
		s.unsentN = append(s.unsentN, s.pieces)
		s.unshownN = append(s.unshownN, s.pieces)
	}
	s.connect()
	// Joins, leaves, seed deaths.
	for i := cfg.Seeds; i < n; i++ {
		t := cfg.StartDelay
		if cfg.JoinSpread > 0 {
			t += s.rng.Float64() * cfg.JoinSpread
		}
		s.push(event{t: t, kind: evJoin, p: int32(i)})
	}
	if cfg.LeaveFrac > 0 {
		k := int(math.Round(cfg.LeaveFrac * float64(cfg.Peers)))
		for _, j := range s.rng.Perm(cfg.Peers)[:k] {
			t := cfg.LeaveFrom + s.rng.Float64()*(cfg.LeaveTo-cfg.LeaveFrom)
			s.peers[cfg.Seeds+j].leaving = true
			s.push(event{t: t, kind: evLeave, p: int32(cfg.Seeds + j)})
		}
	}
	if cfg.SeedDeath > 0 {
		for i := range cfg.Seeds {
			s.push(event{t: cfg.SeedDeath, kind: evLeave, p: int32(i)})
		}
	}
	if !cfg.NoSuperSeed {
		s.push(event{t: policy.SuperSeedStall.Seconds() / 4, kind: evStall})
	}
	return s
}

func (p *peer) setHave(k int) {
	p.have[k>>6] |= 1 << (k & 63)
	p.haveB[k] = true
}

func (p *peer) hasPiece(k int) bool  { return p.have[k>>6]&(1<<(k&63)) != 0 }
func (p *peer) announced(k int) bool { return p.ann[k>>6]&(1<<(k&63)) != 0 }

// connect builds the connection graph: each leecher is given candidates (its
// rack-mates and a random sample of the fleet, as discovery would) and keeps
// policy.SelectPeers of them; connections are two-way. Each seed is connected
// to SeedConns random leechers.
func (s *sim) connect() {
	cfg := s.cfg
	edges := make(map[[2]int32]bool)
	add := func(a, b int32) {
		if a == b {
			return
		}
		k := [2]int32{min(a, b), max(a, b)}
		if edges[k] {
			return
		}
		edges[k] = true
		pa, pb := s.peers[a], s.peers[b]
		pa.rev = append(pa.rev, int32(len(pb.nbrs)))
		pb.rev = append(pb.rev, int32(len(pa.nbrs)))
		pa.nbrs = append(pa.nbrs, b)
		pb.nbrs = append(pb.nbrs, a)
	}
	byRack := make(map[int32][]int32)
	for _, p := range s.peers[cfg.Seeds:] {
		byRack[p.rack] = append(byRack[p.rack], p.id)
	}
	const sample = 256 // discovery hands out about this many holders (maxKnownPeers)
	for _, p := range s.peers[cfg.Seeds:] {
		var cands []policy.Candidate[int32]
		seen := map[int32]bool{p.id: true}
		if cfg.Racks > 0 {
			for _, q := range byRack[p.rack] {
				if !seen[q] && len(cands) < sample {
					seen[q] = true
					cands = append(cands, policy.Candidate[int32]{ID: q, Rack: rackName(s.peers[q])})
				}
			}
		}
		for range min(sample, cfg.Peers-1) * 2 {
			if len(cands) >= 2*sample {
				break
			}
			q := int32(cfg.Seeds + s.rng.IntN(cfg.Peers))
			if !seen[q] {
				seen[q] = true
				cands = append(cands, policy.Candidate[int32]{ID: q, Rack: rackName(s.peers[q])})
			}
		}
		s.rng.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
		self := ""
		if cfg.RackAware {
			self = rackName(p)
		}
		for _, c := range policy.SelectPeers(self, cands, cfg.Conns) {
			add(p.id, c.ID)
		}
	}
	for i := range cfg.Seeds {
		for _, j := range s.rng.Perm(cfg.Peers)[:min(cfg.SeedConns, cfg.Peers)] {
			add(int32(i), int32(cfg.Seeds+j))
		}
	}
	for _, p := range s.peers {
		p.want = make([]int32, len(p.nbrs))
		p.busy = make([]bool, len(p.nbrs))
	}
}

func rackName(p *peer) string { return fmt.Sprintf("r%d", p.rack) }

func (s *sim) sameRack(a, b *peer) bool { return s.cfg.Racks == 0 || a.rack == b.rack }

func (s *sim) push(e event) {
	s.seq++
	e.seq = s.seq
	heap.Push(&s.q, e)
}

// loop runs the events due, then moves every active flow's bytes for one
// tick at the rates share set, and finishes the flows that completed, at
// the time within the tick they completed.
func (s *sim) loop() error {
	var finished []*flow
	for steps := int64(0); ; steps++ {
		for s.q.Len() > 0 && s.q[0].t <= s.now {
			e := heap.Pop(&s.q).(event)
			s.res.Events++
			switch e.kind {
			case evJoin:
				s.join(s.peers[e.p])
			case evStart:
				if !e.f.dead {
					s.startFlow(e.f)
				}
			case evAnnounce:
				s.announce(s.peers[e.p], int(e.x))
			case evLeave:
				s.leave(s.peers[e.p])
			case evStall:
				s.stall()
			}
		}
		if s.allDone() {
			break
		}
		if steps&0xfff == 0 && time.Now().After(s.wallEnd) {
			return fmt.Errorf("sim: gave up after %s of real time at simulated %.1fs", s.cfg.MaxWall, s.now)
		}
		if len(s.active) == 0 {
			if s.q.Len() == 0 {
				break
			}
			s.now = max(s.now+s.tick, s.q[0].t)
			continue
		}
		if s.dirty && steps-s.shared >= int64(s.cfg.ShareEvery) {
			s.share()
			s.shared = steps
		}
		next := s.now + s.tick
		finished = finished[:0]
		for _, f := range s.active {
			f.done += f.rate * s.tick
			if f.done >= f.size {
				f.at = next - (f.done-f.size)/f.rate
				finished = append(finished, f)
			}
		}
		slices.SortStableFunc(finished, func(a, b *flow) int { return cmpFloat(a.at, b.at) })
		for _, f := range finished {
			if !f.dead {
				s.now = f.at
				s.finishFlow(f)
			}
		}
		s.now = next
	}
	for _, p := range s.peers[s.nSeeds:] {
		if p.alive && !p.done {
			s.res.Incomplete++
		}
	}
	return nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *sim) allDone() bool { return s.finished+s.res.Left == s.cfg.Peers }

func (s *sim) join(p *peer) {
	p.alive, p.joined = true, true
	// The peer learns its neighbours' pieces from their bitfields.
	for k, q := range p.nbrs {
		qp := s.peers[q]
		if !qp.alive {
			continue
		}
		if qp.seed {
			if !s.cfg.NoSuperSeed {
				s.openSS(qp, p)
				continue
			}
		}
		for w := range s.words {
			m := qp.ann[w] &^ p.have[w]
			for m != 0 {
				b := bits.TrailingZeros64(m)
				m &= m - 1
				i := w*64 + b
				p.avail[i]++
				p.want[k]++
				if p.rackView != nil && s.sameRack(p, qp) && !qp.seed {
					p.rackView.Add(i)
				}
			}
		}
	}
	s.fill(p)
}

// openSS starts a seed's super-seeding of peer p: its bitfield shows a window.
func (s *sim) openSS(seed, p *peer) {
	c := &ssConn{seen: make([]bool, s.pieces), has: slices.Clone(p.haveB), limit: policy.SuperSeedWindow,
		progress: s.now, winBits: make([]uint64, s.words)}
	seed.ss[p.id] = c
	s.refill(seed, p, c)
}

// refill shows p more pieces until its window is full (ssConn.refillLocked).
func (s *sim) refill(seed, p *peer, c *ssConn) {
	pol := s.pol[seed.id]
	k := slices.Index(p.nbrs, seed.id)
	for len(c.win) < c.limit {
		i := pol.Pick(c.has, c.seen, c.force)
		if i < 0 {
			return
		}
		if pol.Shown(i) == 1 {
			s.unshownN[seed.id]--
		}
		c.seen[i] = true
		c.win = append(c.win, int32(i))
		c.winBits[i>>6] |= 1 << (i & 63)
		if !p.hasPiece(i) {
			p.avail[i]++
			p.want[k]++
		}
	}
}

// unshow drops piece i from p's window at the seed: sent, had, or p left.
func (s *sim) unshow(seed, p *peer, c *ssConn, i int, sent bool) bool {
	j := slices.Index(c.win, int32(i))
	if j < 0 {
		return false
	}
	c.win = slices.Delete(c.win, j, j+1)
	c.winBits[i>>6] &^= 1 << (i & 63)
	if sent {
		s.pol[seed.id].Sent(i)
	} else {
		s.pol[seed.id].Resolve(i)
	}
	if !p.hasPiece(i) && p.alive {
		p.avail[i]--
		p.want[slices.Index(p.nbrs, seed.id)]--
	}
	return true
}

// asked reports whether p is fetching a piece from seed: it is waiting for
// the seed, not stalled (ssConn.requestedLocked).
func (s *sim) asked(seed, p *peer) bool {
	for _, f := range seed.ups {
		if f.dst == p.id {
			return true
		}
	}
	return false
}

// stall is the super-seed stall rule (superSeeder.unstall): a peer that left
// its window unrequested for SuperSeedStall is shown more, forced.
func (s *sim) stall() {
	any := false
	for _, seed := range s.peers[:s.nSeeds] {
		if !seed.alive {
			continue
		}
		for pid, c := range s.sortedSS(seed) {
			p := s.peers[pid]
			if !p.alive || p.done {
				continue
			}
			any = true
			if s.now-c.progress > policy.SuperSeedStall.Seconds() && !s.asked(seed, p) {
				s.res.Stalls++
				c.limit += policy.SuperSeedWindow
				c.progress = s.now
				c.force = true
				s.refill(seed, p, c)
				s.fill(p)
			}
		}
	}
	if any {
		s.push(event{t: s.now + policy.SuperSeedStall.Seconds()/4, kind: evStall})
	}
}

// sortedSS iterates a seed's connections in peer order, for determinism.
func (s *sim) sortedSS(seed *peer) func(func(int32, *ssConn) bool) {
	return func(yield func(int32, *ssConn) bool) {
		keys := make([]int32, 0, len(seed.ss))
		for k := range seed.ss {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !yield(k, seed.ss[k]) {
				return
			}
		}
	}
}

// pick chooses a piece for dst to fetch from src: one src offers, dst lacks
// and is not fetching, that policy.RackView allows from src, rarest among
// dst's neighbours. It models anacrolix's rarest-first: rarest among up to
// pickScan candidates, from a rotating start. Returns -1 if none.
const pickScan = 32

func (s *sim) pick(src, dst *peer) int {
	var win []uint64
	if src.seed && !s.cfg.NoSuperSeed {
		c := src.ss[dst.id]
		if c == nil {
			return -1
		}
		win = c.winBits
	}
	same := s.sameRack(src, dst)
	best, bestA, seen := -1, uint16(math.MaxUint16), 0
	start := dst.rot % s.words
	dst.rot++
	for k := range s.words {
		w := (start + k) % s.words
		m := src.ann[w] &^ dst.have[w] &^ dst.inflight[w]
		if win != nil {
			m &= win[w]
		}
		for m != 0 {
			b := bits.TrailingZeros64(m)
			m &= m - 1
			i := w*64 + b
			if dst.rackView != nil && !src.seed && !dst.rackView.MayAsk(same, i) {
				continue
			}
			if a := dst.avail[i]; a < bestA {
				best, bestA = i, a
			}
			seen++
			if seen >= pickScan || bestA <= 1 {
				return best
			}
		}
	}
	return best
}

func (p *peer) freeDown(cfg *Config) bool { return len(p.downs) < cfg.DownSlots }
func (p *peer) freeUp(cfg *Config) bool   { return len(p.ups) < cfg.UpSlots }

// fill has p request pieces from its neighbours until its slots are full.
func (s *sim) fill(p *peer) {
	if !p.alive || p.done || p.seed {
		return
	}
	n := len(p.nbrs)
	off := 0
	if n > 0 {
		off = p.rot % n
	}
	for k := 0; k < n && p.freeDown(&s.cfg); k++ {
		j := (off + k) % n
		q := s.peers[p.nbrs[j]]
		if p.want[j] <= 0 || !q.alive || !q.freeUp(&s.cfg) || p.busy[j] {
			continue
		}
		if i := s.pick(q, p); i >= 0 {
			s.request(q, p, i, j)
		}
	}
	if p.freeDown(&s.cfg) {
		s.endgame(p)
	}
}

// offer has q serve neighbours with free download slots that want its pieces.
func (s *sim) offer(q *peer) {
	if !q.alive {
		return
	}
	n := len(q.nbrs)
	if n == 0 {
		return
	}
	off := q.rot % n
	q.rot++
	for k := 0; k < n && q.freeUp(&s.cfg); k++ {
		j := (off + k) % n
		p := s.peers[q.nbrs[j]]
		if p.seed || !p.alive || p.done || !p.freeDown(&s.cfg) || p.want[q.rev[j]] <= 0 || p.busy[q.rev[j]] {
			continue
		}
		if i := s.pick(q, p); i >= 0 {
			s.request(q, p, i, int(q.rev[j]))
		}
	}
}

// endgame models anacrolix's endgame: when every piece p lacks is being
// fetched and a slot is free, p asks a second holder for a piece in flight;
// the first copy to arrive wins, the other is cut off and wasted.
func (s *sim) endgame(p *peer) {
	missing := s.pieces - p.nhave
	inflight := 0
	for _, w := range p.inflight {
		inflight += bits.OnesCount64(w)
	}
	if missing == 0 || inflight < missing {
		return
	}
	for w := range s.words {
		m := p.inflight[w]
		for m != 0 && p.freeDown(&s.cfg) {
			b := bits.TrailingZeros64(m)
			m &= m - 1
			i := w*64 + b
			if p.flying[i] >= 2 {
				continue
			}
			for j, qid := range p.nbrs {
				q := s.peers[qid]
				if !q.alive || !q.freeUp(&s.cfg) || !q.announced(i) || p.busy[j] {
					continue
				}
				if q.seed && !s.cfg.NoSuperSeed {
					if c := q.ss[p.id]; c == nil || c.winBits[i>>6]&(1<<(i&63)) == 0 {
						continue
					}
				}
				if p.rackView != nil && !q.seed && !p.rackView.MayAsk(s.sameRack(p, q), i) {
					continue
				}
				s.request(q, p, i, j)
				break
			}
		}
	}
}

// request starts a flow of piece i from src to dst; bytes move after a round trip.
// k is src's index in dst.nbrs. A connection delivers its requests in
// order, one piece after another (anacrolix pipelines the requests, so no
// round trip is lost between them): it carries one flow at a time.
func (s *sim) request(src, dst *peer, i, k int) {
	size := s.pieceLen
	if i == s.pieces-1 {
		size = s.cfg.Size - int64(i)*s.pieceLen
	}
	f := &flow{src: src.id, dst: dst.id, piece: int32(i), size: float64(size), conn: int32(k)}
	dst.busy[k] = true
	f.cross = s.cfg.Racks > 0 && src.rack != dst.rack
	f.idxUp = int32(len(src.ups))
	src.ups = append(src.ups, f)
	f.idxDown = int32(len(dst.downs))
	dst.downs = append(dst.downs, f)
	dst.inflight[i>>6] |= 1 << (i & 63)
	dst.flying[i]++
	if src.seed {
		sd := int(src.id)
		if s.sent[sd][i] == 1 {
			if s.unshownN[sd] > 0 {
				s.res.SeedOrderBroken++
			}
			if s.unsentN[sd] > 0 {
				s.res.SeedEarlyRepeats++
			}
		}
		if s.sent[sd][i] == 0 {
			s.unsentN[sd]--
		}
		s.sent[sd][i]++
	}
	s.push(event{t: s.now + 2*s.cfg.Latency, kind: evStart, f: f})
}

func (s *sim) startFlow(f *flow) {
	f.nlinks = int8(len(s.flowLinks(f)))
	f.active = true
	f.idxAct = int32(len(s.active))
	s.active = append(s.active, f)
	s.dirty = true
	// Until the next share, the flow takes what its links have left.
	r := math.Inf(1)
	for _, l := range f.links[:f.nlinks] {
		r = min(r, s.links[l].left)
	}
	r = max(r, 0)
	f.rate = r
	for _, l := range f.links[:f.nlinks] {
		s.links[l].left -= r
	}
}

// remove takes f out of every list; its bytes so far are counted.
func (s *sim) remove(f *flow) {
	src, dst := s.peers[f.src], s.peers[f.dst]
	f.dead = true
	removeAt(&src.ups, f, func(g *flow) *int32 { return &g.idxUp })
	removeAt(&dst.downs, f, func(g *flow) *int32 { return &g.idxDown })
	dst.busy[f.conn] = false
	i := int(f.piece)
	dst.flying[i]--
	if dst.flying[i] == 0 {
		dst.inflight[i>>6] &^= 1 << (i & 63)
	}
	moved := int64(math.Min(f.done, f.size))
	if src.seed {
		s.res.SeedSent += moved
	}
	if f.cross {
		s.res.CrossRack += moved
	}
	if f.active {
		for _, l := range f.links[:f.nlinks] {
			s.links[l].left += f.rate
		}
		removeAt(&s.active, f, func(g *flow) *int32 { return &g.idxAct })
		f.active = false
		s.dirty = true
	}
}

// share sets every active flow's rate to its max-min fair share
// (progressive filling) of the links it crosses: its uploader's upload, its
// downloader's download and, across racks, both racks' uplinks. TCP flows
// sharing links come close to this.
func (s *sim) share() {
	s.dirty = false
	nl := len(s.links)
	for i := range nl {
		s.links[i].left = s.links[i].cap
		s.links[i].n = 0
	}
	for i := range s.linkFlows {
		s.linkFlows[i] = s.linkFlows[i][:0]
	}
	for _, f := range s.active {
		f.rate = -1
		for _, l := range f.links[:f.nlinks] {
			s.links[l].n++
			s.linkFlows[l] = append(s.linkFlows[l], f)
		}
	}
	// Links by fair share; lazily updated heap.
	h := s.lh[:0]
	for i := range nl {
		if s.links[i].n > 0 {
			h = append(h, linkShare{i, s.links[i].left / float64(s.links[i].n)})
		}
	}
	h.init()
	for len(h) > 0 {
		top := h.pop()
		l := &s.links[top.l]
		if l.n == 0 {
			continue
		}
		cur := l.left / float64(l.n)
		if cur > top.share*(1+1e-12) {
			h.push(linkShare{top.l, cur})
			continue
		}
		// Freeze every unfrozen flow on l at cur.
		for _, f := range s.linkFlows[top.l] {
			if f.rate >= 0 {
				continue
			}
			f.rate = cur
			for _, o := range f.links[:f.nlinks] {
				s.links[o].left -= cur
				s.links[o].n--
			}
		}
		l.n = 0
	}
	s.lh = h
}

// flowLinks lists the links f crosses, as indices into s.links.
func (s *sim) flowLinks(f *flow) []int32 {
	n := int32(len(s.peers))
	f.links[0] = f.src     // uploads
	f.links[1] = n + f.dst // downloads
	if !f.cross {
		return f.links[:2]
	}
	src, dst := s.peers[f.src], s.peers[f.dst]
	f.links[2] = 2*n + 2*src.rack
	f.links[3] = 2*n + 2*dst.rack + 1
	return f.links[:4]
}

type link struct {
	cap, left float64
	n         int
}

type linkShare struct {
	l     int
	share float64
}

// linkHeap is a binary min-heap of link shares, typed to keep share's
// inner loop free of interface calls.
type linkHeap []linkShare

func (h linkHeap) less(i, j int) bool {
	return h[i].share < h[j].share || (h[i].share == h[j].share && h[i].l < h[j].l)
}

func (h linkHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h linkHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

func (h *linkHeap) push(x linkShare) {
	*h = append(*h, x)
	a := *h
	i := len(a) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !a.less(i, p) {
			break
		}
		a[i], a[p] = a[p], a[i]
		i = p
	}
}

func (h *linkHeap) pop() linkShare {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	*h = a[:last]
	if last > 0 {
		(*h).down(0)
	}
	return top
}

func removeAt(list *[]*flow, f *flow, idx func(*flow) *int32) {
	l := *list
	i := *idx(f)
	last := len(l) - 1
	l[i] = l[last]
	*idx(l[i]) = i
	l[last] = nil
	*list = l[:last]
}

func (s *sim) finishFlow(f *flow) {
	src, dst := s.peers[f.src], s.peers[f.dst]
	f.done = f.size
	s.remove(f)
	i := int(f.piece)
	if dst.hasPiece(i) {
		s.res.Wasted += int64(f.size) // a duplicate that finished anyway
	} else {
		s.got(dst, i)
	}
	if src.seed && !s.cfg.NoSuperSeed {
		if c := src.ss[dst.id]; c != nil {
			c.progress = s.now
			s.unshow(src, dst, c, i, true)
			s.refill(src, dst, c)
		}
	}
	s.fill(dst)
	s.offer(src)
}

// got records that p verified piece i; its neighbours hear of it a latency later.
func (s *sim) got(p *peer, i int) {
	p.setHave(i)
	p.nhave++
	s.res.Delivered += int64(s.pieceLength(i))
	// Cut off endgame duplicates of i.
	for _, g := range slices.Clone(p.downs) {
		if int(g.piece) == i {
			s.remove(g)
			s.res.Wasted += int64(math.Min(g.done, g.size))
			s.offer(s.peers[g.src])
		}
	}
	for k, qid := range p.nbrs {
		q := s.peers[qid]
		if q.seed && !s.cfg.NoSuperSeed {
			if c := q.ss[p.id]; c != nil && c.winBits[i>>6]&(1<<(i&63)) != 0 {
				p.want[k]--
			}
		} else if q.alive && q.hasPiece(i) && q.announced(i) {
			p.want[k]--
		}
	}
	if p.nhave == s.pieces {
		p.done = true
		p.finish = s.now
		s.finished++
		s.res.Finish = append(s.res.Finish, s.now)
		if s.cfg.SeedDeathDone > 0 && float64(s.finished) >= s.cfg.SeedDeathDone*float64(s.cfg.Peers) {
			for _, sd := range s.peers[:s.nSeeds] {
				if sd.alive {
					s.push(event{t: s.now, kind: evLeave, p: sd.id})
				}
			}
		}
	}
	s.push(event{t: s.now + s.cfg.Latency, kind: evAnnounce, p: p.id, x: int32(i)})
}

func (s *sim) pieceLength(i int) int64 {
	if i == s.pieces-1 {
		return s.cfg.Size - int64(i)*s.pieceLen
	}
	return s.pieceLen
}

// announce delivers p's Have of piece i to its neighbours.
func (s *sim) announce(p *peer, i int) {
	if !p.alive {
		return
	}
	p.ann[i>>6] |= 1 << (i & 63)
	for k, qid := range p.nbrs {
		q := s.peers[qid]
		if !q.alive {
			continue
		}
		if q.seed {
			if c := q.ss[p.id]; c != nil {
				c.has[i] = true
				if s.unshow(q, p, c, i, false) {
					c.progress = s.now
				}
				s.refill(q, p, c)
				s.offer(q)
			}
			continue
		}
		if !q.joined {
			continue
		}
		q.avail[i]++
		if q.rackView != nil && s.sameRack(p, q) {
			q.rackView.Add(i)
		}
		if !q.hasPiece(i) {
			q.want[p.rev[k]]++
			// q may fetch it from p at once, if both have room.
			if !q.done && q.freeDown(&s.cfg) && p.freeUp(&s.cfg) && q.inflight[i>>6]&(1<<(i&63)) == 0 && !q.busy[p.rev[k]] &&
				(q.rackView == nil || q.rackView.MayAsk(s.sameRack(p, q), i)) {
				s.request(p, q, i, int(p.rev[k]))
			}
		}
	}
}

// leave takes p away for good: its flows are cut off, its pieces no longer
// count in its neighbours' views.
func (s *sim) leave(p *peer) {
	if !p.alive {
		return
	}
	if !p.seed && !p.done {
		s.res.Left++
	}
	var touched []*peer
	for _, f := range slices.Clone(p.ups) {
		s.remove(f)
		s.res.Wasted += int64(math.Min(f.done, f.size))
		touched = append(touched, s.peers[f.dst])
	}
	for _, f := range slices.Clone(p.downs) {
		s.remove(f)
		s.res.Wasted += int64(math.Min(f.done, f.size))
		touched = append(touched, s.peers[f.src])
	}
	if p.seed {
		for _, pid := range slices.Collect(func(y func(int32) bool) {
			for k := range s.sortedSS(p) {
				if !y(k) {
					return
				}
			}
		}) {
			c := p.ss[pid]
			for _, i := range slices.Clone(c.win) {
				s.unshow(p, s.peers[pid], c, int(i), false)
			}
			delete(p.ss, pid)
		}
	}
	p.alive = false
	for k, qid := range p.nbrs {
		q := s.peers[qid]
		if q.seed {
			if c := q.ss[p.id]; c != nil {
				for _, i := range slices.Clone(c.win) {
					s.unshow(q, p, c, int(i), false)
				}
				delete(q.ss, p.id)
			}
			continue
		}
		if !q.joined || !q.alive {
			continue
		}
		q.want[p.rev[k]] = 0
		if p.seed && !s.cfg.NoSuperSeed {
			continue // its shown pieces were taken back above
		}
		for w := range s.words {
			m := p.ann[w]
			for m != 0 {
				b := bits.TrailingZeros64(m)
				m &= m - 1
				i := w*64 + b
				if q.avail[i] > 0 {
					q.avail[i]--
				}
				if q.rackView != nil && s.sameRack(p, q) {
					q.rackView.Remove(i)
				}
			}
		}
	}
	for _, q := range touched {
		s.fill(q)
		s.offer(q)
	}
}
