package policy

import "slices"

// Racks. A fleet's machines sit in racks whose uplinks are oversubscribed:
// bytes between racks are the scarce ones. A node prefers peers in its own
// rack for the pieces they hold, and crosses racks only for the pieces its
// rack lacks. A node without a rack label (rack "") is rack-blind: every peer
// is as good as another.

// SameRack reports whether two rack labels name one rack; an empty label
// matches nothing.
func SameRack(a, b string) bool { return a != "" && a == b }

// Candidate is a peer a node may connect to, with its rack label ("" unknown).
type Candidate[ID any] struct {
	ID   ID
	Rack string
}

// MinCrossRack is how many peers of other racks a rack-aware node keeps,
// when it has them, however many peers its own rack offers: they bring the
// pieces its rack lacks.
const MinCrossRack = 4

// SelectPeers chooses at most max of cands for a node in rack self to know
// and dial, keeping the order of cands within each group. Rack-aware (self
// not ""): peers of its own rack first, then at least MinCrossRack of other
// racks; rack-blind: the first max.
func SelectPeers[ID any](self string, cands []Candidate[ID], max int) []Candidate[ID] {
	if len(cands) <= max {
		return slices.Clone(cands)
	}
	if self == "" {
		return slices.Clone(cands[:max])
	}
	var same, other []Candidate[ID]
	for _, c := range cands {
		if SameRack(self, c.Rack) {
			same = append(same, c)
		} else {
			other = append(other, c)
		}
	}
	keepSame := min(len(same), max-min(len(other), MinCrossRack))
	out := append(same[:keepSame:keepSame], other[:min(len(other), max-keepSame)]...)
	return out
}

// RackView is what a node knows of the pieces its connected same-rack peers
// hold: per piece, how many of them announced it.
type RackView struct {
	count []int32
}

// NewRackView starts the view of a torrent of n pieces.
func NewRackView(n int) *RackView { return &RackView{count: make([]int32, n)} }

// Add records that a same-rack peer holds piece i.
func (v *RackView) Add(i int) {
	if i >= 0 && i < len(v.count) {
		v.count[i]++
	}
}

// Remove undoes Add, when that peer goes.
func (v *RackView) Remove(i int) {
	if i >= 0 && i < len(v.count) && v.count[i] > 0 {
		v.count[i]--
	}
}

// Lacks reports whether no same-rack peer holds piece i.
func (v *RackView) Lacks(i int) bool { return i < 0 || i >= len(v.count) || v.count[i] == 0 }

// MayAsk reports whether the node may ask a peer for piece i: any peer of its
// own rack, a peer of another rack only for a piece its rack lacks.
func (v *RackView) MayAsk(sameRack bool, i int) bool { return sameRack || v.Lacks(i) }
