package placement

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"ballena.dev/internal/metricstest"

	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/internal/testnet"
)

// TestMetricsAfterPreemption: a server registering its metrics, a machine
// filled with batch tasks, then a prod job that preempts two of them. The
// scrape shows the jobs, the tasks by state and band, the machine, the waiting
// job, the placements, the preemptions, the scheduler's evaluations and plans,
// and the timings.
func TestMetricsAfterPreemption(t *testing.T) {
	reg := prometheus.NewRegistry()
	clock := newFakeClock()
	s, err := Open(Options{Dir: t.TempDir(), AdminToken: testAdmin, JoinToken: testJoin, NodeTTL: 15 * time.Second,
		BatchShare: 1, Now: clock.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	url := testnet.Serve(t, s.Handler())
	admin, err := NewClient(url, testAdmin)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, url: url, clock: clock, admin: admin}
	n := ts.addNode(t, 4000, 8, nil)
	if ev := ts.submit(t, job("crunch", 4, 1000, 1024, BandBatch)); ev.Placed != 4 {
		t.Fatalf("batch placed %d of 4", ev.Placed)
	}
	if ev := ts.submit(t, job("api", 2, 1000, 1024, BandProd)); ev.Placed != 2 || ev.Preempted != 2 {
		t.Fatalf("prod placed %d preempting %d, want 2 and 2", ev.Placed, ev.Preempted)
	}
	// The preempted job's retry may still be queued: the scrape reads a settled cell.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.quiesce(ctx); err != nil {
		t.Fatal(err)
	}

	got := metricstest.Gather(t, reg)
	for name, want := range map[string]float64{
		"ballena_placement_jobs":                             2,
		"ballena_placement_tasks{band=prod}{state=placed}":   2,
		"ballena_placement_tasks{band=batch}{state=placed}":  2,
		"ballena_placement_tasks{band=batch}{state=pending}": 2,
		"ballena_placement_nodes{state=ready}":               1,
		"ballena_placement_nodes{state=down}":                0,
		"ballena_placement_pending_evaluations":              1,
		"ballena_placement_placements_total":                 6,
		"ballena_placement_preemptions_total":                2,
		"ballena_placement_latency_seconds":                  2,
		"ballena_raft_leader":                                1,
		"ballena_placement_evaluations{state=queued}":        0,
		"ballena_placement_evaluations{state=running}":       0,
		"ballena_placement_rollouts{status=running}":         2,
		"ballena_placement_task_health{health=healthy}":      0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	// The machine reports its tasks running and healthy: api's rollout is
	// done; crunch's waits for its preempted tasks.
	n.converge()
	if err := s.quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	health := metricstest.Gather(t, reg)
	for name, want := range map[string]float64{
		"ballena_placement_rollouts{status=successful}": 1,
		"ballena_placement_rollouts{status=running}":    1,
		"ballena_placement_task_health{health=healthy}": 4,
		"ballena_placement_task_health{health=none}":    0,
	} {
		if v := health[name]; v != want {
			t.Errorf("after the node's report: %s = %v, want %v", name, v, want)
		}
	}
	if got["ballena_placement_plans_total"] < 2 {
		t.Errorf("plans applied: %v, want 2 or more (one per job)", got["ballena_placement_plans_total"])
	}
	if _, ok := got["ballena_placement_replans_total"]; !ok {
		t.Error("ballena_placement_replans_total missing")
	}
	if got["ballena_raft_commit_index"] < 3 || got["ballena_raft_apply_duration_seconds"] < 3 {
		t.Errorf("raft: commit index %v, %v entries timed; want 3 or more (a machine, two jobs)",
			got["ballena_raft_commit_index"], got["ballena_raft_apply_duration_seconds"])
	}
}
