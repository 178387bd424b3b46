package policy

import (
	"slices"
	"testing"
)

// The seed shows every piece once before it shows any piece twice, and shows
// a piece again only once its earlier showings were resolved.
func TestSuperSeedShowsEachPieceOnceFirst(t *testing.T) {
	const n, peers = 10, 3
	s := NewSuperSeed(n)
	has := make([][]bool, peers)
	seen := make([][]bool, peers)
	for p := range peers {
		has[p], seen[p] = make([]bool, n), make([]bool, n)
	}
	var order []int
	for k := range n {
		p := k % peers
		i := s.Pick(has[p], seen[p], false)
		if i < 0 {
			t.Fatalf("pick %d: nothing to show", k)
		}
		seen[p][i] = true
		order = append(order, i)
	}
	slices.Sort(order)
	if !slices.Equal(order, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("first %d showings %v: want every piece once", n, order)
	}
	// Every piece is shown and unresolved: nothing more unless forced.
	if i := s.Pick(has[0], seen[0], false); i != -1 {
		t.Fatalf("showed piece %d twice before its showing was resolved", i)
	}
	if i := s.Pick(has[0], seen[0], true); i < 0 || seen[0][i] {
		t.Fatalf("forced pick %d: want a piece peer 0 was not shown", i)
	}
	s.Resolve(3)
	if i := s.Pick(has[1], seen[1], false); i != 3 && !(seen[1][3] && i == -1) {
		t.Fatalf("after resolving piece 3, peer 1 was shown %d", i)
	}
}

func TestSelectPeersPrefersOwnRack(t *testing.T) {
	var cands []Candidate[int]
	for i := range 40 {
		r := "a"
		if i%4 != 0 {
			r = "b"
		}
		cands = append(cands, Candidate[int]{ID: i, Rack: r})
	}
	got := SelectPeers("a", cands, 12)
	same := 0
	for _, c := range got {
		if c.Rack == "a" {
			same++
		}
	}
	if len(got) != 12 || same != 8 {
		t.Fatalf("rack-aware: %d peers, %d of rack a; want 12 with 8 (MinCrossRack left for b)", len(got), same)
	}
	blind := SelectPeers("", cands, 12)
	if !slices.Equal(blind, cands[:12]) {
		t.Fatal("rack-blind selection is not the first 12 candidates")
	}
}

func TestRackViewMayAsk(t *testing.T) {
	v := NewRackView(4)
	v.Add(1)
	if v.MayAsk(false, 1) || !v.MayAsk(true, 1) || !v.MayAsk(false, 2) {
		t.Fatal("a piece the rack holds may come only from the rack; others from anywhere")
	}
	v.Remove(1)
	if !v.MayAsk(false, 1) {
		t.Fatal("after the holder left, the piece may cross racks")
	}
}
