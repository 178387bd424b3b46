package placement

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"
)

// Two workers plan against the same state and both choose the only machine
// with room: the applier commits the first plan and refuses the second's
// placement, which waits once planned again.
func TestApplierRefusesWhatNoLongerFits(t *testing.T) {
	c := testCell(1)
	c.async = true
	addNode(c, "a", 2000, 4, nil)
	c.index++
	c.ch = newChanges()
	for _, j := range []*Job{job("one", 1, 1500, 1024, BandProd), job("two", 1, 1500, 1024, BandProd)} {
		if _, err := c.submitJob(j, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.takeEvalRequests()
	rng := rand.New(rand.NewPCG(1, 2))
	p1 := c.planJob("one", "test", false, rng)
	p2 := c.planJob("two", "test", false, rng)
	if len(p1.places) != 1 || len(p2.places) != 1 || p1.places[0].node != p2.places[0].node {
		t.Fatalf("both plans should put their task on a: %+v %+v", p1.places, p2.places)
	}
	if r := c.applyPlan(p1); r.refused != 0 || r.stale || r.ev.Placed != 1 {
		t.Fatalf("first plan: %+v", r)
	}
	r := c.applyPlan(p2)
	if r.refused != 1 || r.ev.Placed != 0 {
		t.Fatalf("second plan on a machine the first filled: refused %d, placed %d; want 1, 0", r.refused, r.ev.Placed)
	}
	if got := len(c.jobs["two"].live); got != 0 {
		t.Fatalf("the refused placement was applied: %d live allocations", got)
	}
	if !c.pending["two"] {
		t.Fatal("a job with refused placements should count as waiting")
	}
	// Planned again on the newer state: no room, the task waits with a reason.
	p3 := c.planJob("two", "plan-refused", false, rng)
	if len(p3.places) != 0 || len(p3.pending) != 1 {
		t.Fatalf("re-plan: %d places, %d pending; want 0, 1", len(p3.places), len(p3.pending))
	}
	if r := c.applyPlan(p3); r.refused != 0 || len(r.ev.Pending) != 1 {
		t.Fatalf("re-plan applied: %+v", r)
	}
	if st := c.jobs["two"].tasks[0]; st.State != TaskPending || st.Reason == "" {
		t.Fatalf("task two[0] = %+v, want pending with a reason", st)
	}
}

// A plan made before its job changed is refused whole.
func TestApplierRefusesAStalePlan(t *testing.T) {
	c := testCell(1)
	c.async = true
	addNode(c, "a", 4000, 8, nil)
	c.index++
	c.ch = newChanges()
	if _, err := c.submitJob(job("web", 2, 500, 512, BandProd), nil); err != nil {
		t.Fatal(err)
	}
	pl := c.planJob("web", "test", false, rand.New(rand.NewPCG(1, 2)))
	c.index++
	j := job("web", 3, 500, 512, BandProd)
	j.Args = []string{"--v2"}
	if _, err := c.submitJob(j, nil); err != nil {
		t.Fatal(err)
	}
	if r := c.applyPlan(pl); !r.stale || r.ev.Placed != 0 {
		t.Fatalf("plan for version 1 applied to version 2: %+v", r)
	}
	if n := len(c.jobs["web"].allocs); n != 0 {
		t.Fatalf("%d allocations from a stale plan", n)
	}
}

// An evaluation asked for on a leader that stops before planning it is
// recorded pending with the operation, and the next leader runs it.
func TestPendingEvaluationSurvivesTheLeader(t *testing.T) {
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	s, err := Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, Logger: quiet, Workers: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.update(func(c *Cell) error {
		c.registerNode("m1", &NodeRegistration{Capacity: Resources{CPU: 4000, Memory: 8 * gib}})
		_, err := c.submitJob(job("api", 3, 1000, 1024, BandProd), nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.mu.RLock()
	ev := s.cell.jobs["api"].lastEval
	s.mu.RUnlock()
	if ev == nil || ev.Status != EvalPending {
		t.Fatalf("without workers the job's evaluation should be recorded pending, got %+v", ev)
	}
	s.Close()

	s, err = Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	js := s.cell.jobs["api"]
	if got := js.lastEval; got == nil || got.Status != EvalComplete || got.ID != ev.ID || got.Placed != 3 {
		t.Fatalf("after the new leader: evaluation %+v, want %s complete with 3 placed", got, ev.ID)
	}
	if n := len(js.live); n != 3 {
		t.Fatalf("%d tasks placed, want 3", n)
	}
}
