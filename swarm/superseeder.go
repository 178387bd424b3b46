package swarm

import (
	"net"
	"sync"
	"time"

	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/swarm/policy"
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

// The choice of piece (policy.SuperSeed) is shared with the simulator
// (swarm/sim); this file and ssConn apply it to anacrolix's wire.
const (
	superSeedWindow = policy.SuperSeedWindow
	superSeedStall  = policy.SuperSeedStall
)

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
	pol              *policy.SuperSeed // guarded by superSeeder.mu
}

func (t *ssTorrent) numPieces() int { return t.pol.NumPieces() }

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
		s.torrents[ih] = &ssTorrent{pieceLen: info.PieceLength, length: info.Length, pol: policy.NewSuperSeed(info.NumPieces())}
	}
}

func (s *superSeeder) remove(ih metainfo.Hash) {
	s.mu.Lock()
	delete(s.torrents, ih)
	s.mu.Unlock()
}

// pick chooses the piece to show next to a peer (see policy.SuperSeed.Pick).
func (s *superSeeder) pick(t *ssTorrent, has, seen []bool, force bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return t.pol.Pick(has, seen, force)
}

// resolve closes a showing of piece i: the peer got it elsewhere, or went.
func (s *superSeeder) resolve(t *ssTorrent, i int) {
	s.mu.Lock()
	t.pol.Resolve(i)
	s.mu.Unlock()
}

// sent closes a showing of piece i that went out whole.
func (s *superSeeder) sent(t *ssTorrent, i int) {
	s.mu.Lock()
	t.pol.Sent(i)
	s.mu.Unlock()
}

func (t *ssTorrent) pieceLength(i int) int64 {
	if i == t.numPieces()-1 {
		return t.length - int64(i)*t.pieceLen
	}
	return t.pieceLen
}

// wrap returns c with super-seeding for torrents registered when its handshake
// goes out; other torrents pass through untouched.
func (s *superSeeder) wrap(c net.Conn) net.Conn {
	return &ssConn{Conn: c, ss: s}
}
