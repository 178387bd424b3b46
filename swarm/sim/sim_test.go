package sim

import (
	"reflect"
	"testing"
)

// small is a swarm small enough for every test run: a few hundred peers.
func small() Config {
	return Config{Peers: 200, Size: 16 << 20, Up: 16 << 20, Down: 16 << 20, Latency: 1e-4, Rand: 7}
}

func run(t *testing.T, c Config) *Result {
	t.Helper()
	r, err := Run(c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Every peer completes and the seed shows (hence starts sending) every piece
// once before it sends any piece a second time; without super-seeding the
// order breaks, so the check can fail.
func TestEveryPeerCompletesSeedSendsOnceFirst(t *testing.T) {
	r := run(t, small())
	if len(r.Finish) != 200 || r.Incomplete != 0 {
		t.Fatalf("finished %d, incomplete %d; want all 200", len(r.Finish), r.Incomplete)
	}
	if r.SeedOrderBroken != 0 {
		t.Fatalf("the seed sent %d pieces a second time before every piece once", r.SeedOrderBroken)
	}
	if r.SeedSent < r.Config.Size {
		t.Fatalf("the seed sent %d bytes, less than one copy", r.SeedSent)
	}
	c := small()
	c.NoSuperSeed = true
	if r := run(t, c); r.SeedOrderBroken == 0 {
		t.Fatal("without super-seeding the seed still sent every piece once before any twice: the check sees nothing")
	}
}

// Rack-aware peers move fewer bytes across rack uplinks than rack-blind ones.
func TestRackAwareCrossesLess(t *testing.T) {
	c := small()
	c.Racks, c.Oversub = 10, 4
	blind := run(t, c)
	c.RackAware = true
	aware := run(t, c)
	for _, r := range []*Result{blind, aware} {
		if len(r.Finish) != c.Peers {
			t.Fatalf("rack-aware %v: %d of %d finished", r.Config.RackAware, len(r.Finish), c.Peers)
		}
	}
	if aware.CrossRack >= blind.CrossRack {
		t.Fatalf("cross-rack bytes: rack-aware %d, rack-blind %d; want fewer", aware.CrossRack, blind.CrossRack)
	}
	t.Logf("cross-rack MiB: aware %d, blind %d", aware.CrossRack>>20, blind.CrossRack>>20)
}

// Peers that stay finish though a tenth of the swarm leaves mid-transfer and
// the seed dies once half the peers are done.
func TestChurnSurvivors(t *testing.T) {
	c := small()
	b := Bound(float64(c.Size), c.Up, c.Up, c.Down, c.Peers)
	c.LeaveFrac, c.LeaveFrom, c.LeaveTo = 0.1, 0.2*b, 0.8*b
	c.SeedDeathDone = 0.5
	r := run(t, c)
	if r.Left == 0 {
		t.Fatal("nobody left")
	}
	if r.Incomplete != 0 || len(r.Finish)+r.Left != c.Peers {
		t.Fatalf("finished %d, left %d, incomplete %d of %d", len(r.Finish), r.Left, r.Incomplete, c.Peers)
	}
}

// The same config and random seed give the same result.
func TestDeterministic(t *testing.T) {
	c := small()
	c.Racks, c.Oversub, c.LeaveFrac, c.LeaveFrom, c.LeaveTo = 5, 2, 0.1, 0.5, 2
	a, b := run(t, c), run(t, c)
	a.WallSecond, b.WallSecond = 0, 0
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two runs differ:\n%+v\n%+v", a, b)
	}
	c.Rand++
	d := run(t, c)
	d.WallSecond = 0
	if reflect.DeepEqual(a.Finish, d.Finish) {
		t.Fatal("another random seed gave the same finish times")
	}
}
