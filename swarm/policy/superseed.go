// Package policy holds the swarm's decisions that do not depend on the wire:
// which piece a super-seeding seed shows a peer next, which peers a node keeps,
// and whom a node may ask for a piece. The real node (package swarm) and the
// simulator (package swarm/sim) both call this code, so what the simulator
// measures is the policy the fleet runs.
//
// Nothing here locks: callers serialize access (the node under its own mutex,
// the simulator on its single event loop).
package policy

import "time"

// SuperSeedWindow is how many shown-but-unsent pieces a peer may hold:
// enough to keep its requests to the seed pipelined.
const SuperSeedWindow = 4

// SuperSeedStall is how long a peer may leave its window unrequested before
// it is shown more: it may not want the pieces it was shown (a piece it
// believes requested elsewhere, say), and must never starve.
const SuperSeedStall = 2 * time.Second

// SuperSeed is a seed's record, for one torrent, of how often each piece was
// shown to a peer and how many showings are unresolved. The seed sends each
// piece once before it sends any piece twice: every byte it repeats is time
// added to the bound.
type SuperSeed struct {
	shown  []int // how many peers each piece was shown to
	open   []int // showings not yet resolved: neither sent nor had
	sent   []int // how often the seed sent each piece whole
	unsent int   // pieces never sent whole
	cursor int   // spreads ties across pieces
}

// NewSuperSeed starts the record of a torrent of n pieces.
func NewSuperSeed(n int) *SuperSeed {
	return &SuperSeed{shown: make([]int, n), open: make([]int, n), sent: make([]int, n), unsent: n}
}

// NumPieces is the torrent's piece count.
func (s *SuperSeed) NumPieces() int { return len(s.shown) }

// Shown is how many peers piece i was shown to.
func (s *SuperSeed) Shown(i int) int { return s.shown[i] }

// Pick chooses the piece to show next to a peer: one it lacks (has) and has
// not been shown (seen), shown to the fewest peers so far. A piece is shown
// again only once every earlier showing was resolved (the seed sent it, or
// the peer got it elsewhere), so the seed never queues a second copy before
// the first went out. And while some piece was never sent whole, only such
// pieces are shown: a second copy would take the seed's upload from a first
// one, which is time added to every peer's finish (at a thousand peers and
// more, the swarm waits on the seed's first copies). force lifts both rules
// for a peer that would otherwise starve. It returns -1 when there is
// nothing to show.
func (s *SuperSeed) Pick(has, seen []bool, force bool) int {
	n := len(s.shown)
	best := -1
	for k := range n {
		i := (s.cursor + k) % n
		if has[i] || seen[i] || (!force && (s.open[i] > 0 || (s.unsent > 0 && s.sent[i] > 0))) {
			continue
		}
		if best == -1 || s.shown[i] < s.shown[best] {
			best = i
			if s.shown[i] == 0 {
				break
			}
		}
	}
	if best >= 0 {
		s.shown[best]++
		s.open[best]++
		s.cursor = (best + 1) % n
	}
	return best
}

// Resolve closes a showing of piece i: the peer it was shown to holds it
// (from another peer) or has gone.
func (s *SuperSeed) Resolve(i int) {
	if s.open[i] > 0 {
		s.open[i]--
	}
}

// Sent closes a showing of piece i that the seed sent whole.
func (s *SuperSeed) Sent(i int) {
	s.Resolve(i)
	if s.sent[i] == 0 {
		s.unsent--
	}
	s.sent[i]++
}

// Unsent is how many pieces the seed never sent whole.
func (s *SuperSeed) Unsent() int { return s.unsent }
