package placement

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rolloutOf reads a job's rollout and its history.
func rolloutOf(t *testing.T, ts *testServer, name string) (*Rollout, []VersionInfo) {
	t.Helper()
	st, err := ts.admin.JobStatus(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ts.admin.JobHistory(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return st.Rollout, h
}

// versionsRunning counts the node's live tasks per artifact.
func versionsRunning(n *testNode) map[string]int {
	out := map[string]int{}
	for _, a := range liveOn(n.allocs()) {
		if a.ClientStatus == ClientRunning {
			out[a.Artifact]++
		}
	}
	return out
}

// startStable runs version 1.0.0 of api (count tasks) to a successful rollout.
func startStable(t *testing.T, ts *testServer, n *testNode, count int, update Update) *Job {
	t.Helper()
	j := job("api", count, 500, 256, BandProd)
	j.Update = update
	ts.submit(t, j)
	n.converge()
	n.converge()
	r, _ := rolloutOf(t, ts, "api")
	if r == nil || r.Status != DeploySuccessful || r.Healthy != count {
		t.Fatalf("version 1 rollout: %+v, want successful with %d healthy", r, count)
	}
	return j
}

func TestRolloutOfAGoodVersion(t *testing.T) {
	ts := startServer(t, t.TempDir())
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 4, Update{MaxParallel: 2})
	j2 := *j
	j2.Artifact = "api@1.1.0"
	ts.submit(t, &j2)
	for step := 0; step < 10; step++ {
		run := versionsRunning(n)
		if run["api@1.0.0"]+run["api@1.1.0"] < 4-2 {
			t.Fatalf("step %d: %v healthy tasks run, below count - max_parallel", step, run)
		}
		r, _ := rolloutOf(t, ts, "api")
		if r.Status == DeploySuccessful {
			if run["api@1.1.0"] != 4 || r.JobVersion != 2 || r.Healthy != 4 {
				t.Fatalf("rollout done with %v running, %+v", run, r)
			}
			_, h := rolloutOf(t, ts, "api")
			if len(h) != 2 || h[0].Version != 2 || !h[0].Stable || !h[0].Current || h[1].Version != 1 || !h[1].Stable ||
				h[1].Deployment.Status != DeploySuccessful {
				t.Fatalf("history %+v", h)
			}
			return
		}
		if r.Status != DeployRunning {
			t.Fatalf("step %d: rollout %s (%s)", step, r.Status, r.Description)
		}
		n.converge()
	}
	t.Fatal("the rollout did not finish in 10 steps")
}

// A replacement that runs but is not yet found healthy holds the next batch.
func TestRolloutWaitsForHealth(t *testing.T) {
	ts := startServer(t, t.TempDir())
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 3, Update{MaxParallel: 1})
	j2 := *j
	j2.Artifact = "api@1.1.0"
	ts.submit(t, &j2)
	// Running, not yet healthy for min_healthy_time.
	n.states = map[string]TaskState{"api@1.1.0": {State: ClientRunning, Health: HealthStarting}}
	n.converge()
	run := versionsRunning(n)
	if run["api@1.1.0"] != 1 || run["api@1.0.0"] != 2 {
		t.Fatalf("with the first replacement running but not healthy: %v, want 1 new and 2 old", run)
	}
	n.states = nil
	n.converge() // now healthy: the next one goes
	if run := versionsRunning(n); run["api@1.0.0"] != 1 {
		t.Fatalf("after the replacement turned healthy: %v, want one more replaced", run)
	}
}

func TestCanaryWaitsForPromotion(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 4, Update{MaxParallel: 2, Canary: 1})
	if _, err := ts.admin.PromoteJob(ctx, "api"); err == nil || !strings.Contains(err.Error(), "no rollout in progress") {
		t.Fatalf("promote with nothing to promote: %v", err)
	}
	j2 := *j
	j2.Artifact = "api@1.1.0"
	ts.submit(t, &j2)
	if _, err := ts.admin.PromoteJob(ctx, "api"); err == nil || !strings.Contains(err.Error(), "not all healthy yet") {
		t.Fatalf("promote before the canary is healthy: %v", err)
	}
	for range 3 {
		n.converge()
	}
	r, _ := rolloutOf(t, ts, "api")
	run := versionsRunning(n)
	if r.Status != DeployPaused || run["api@1.1.0"] != 1 || run["api@1.0.0"] != 3 {
		t.Fatalf("canary phase: rollout %s (%s), running %v; want awaiting-promotion with 1 canary, 3 old", r.Status, r.Description, run)
	}
	if _, err := ts.admin.PromoteJob(ctx, "api"); err != nil {
		t.Fatal(err)
	}
	for step := 0; step < 10; step++ {
		if run := versionsRunning(n); run["api@1.0.0"]+run["api@1.1.0"] < 4-2 {
			t.Fatalf("after promotion: %v healthy tasks run, below count - max_parallel", run)
		}
		n.converge()
		if r, _ := rolloutOf(t, ts, "api"); r.Status == DeploySuccessful {
			if run := versionsRunning(n); run["api@1.1.0"] != 4 {
				t.Fatalf("rollout successful with %v running", run)
			}
			return
		}
	}
	t.Fatal("the promoted rollout did not finish")
}

// A bad version fails its canary: the rollout stops there and auto_revert goes
// back to the stable version, whose tasks never stopped.
func TestFailedCanaryRevertsAutomatically(t *testing.T) {
	ts := startServer(t, t.TempDir())
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 4, Update{MaxParallel: 1, Canary: 1, AutoRevert: true})
	old := map[string]bool{}
	for _, a := range liveOn(n.allocs()) {
		old[a.ID] = true
	}
	n.sick = map[string]bool{"api@2.0.0": true}
	bad := *j
	bad.Artifact = "api@2.0.0"
	ts.submit(t, &bad)
	for step := 0; step < 6; step++ {
		run := versionsRunning(n)
		if run["api@1.0.0"] < 4-1 {
			t.Fatalf("step %d: %d old tasks run, below count - max_parallel", step, run["api@1.0.0"])
		}
		if run["api@2.0.0"] > 1 {
			t.Fatalf("step %d: %d tasks of the bad version, past its one canary", step, run["api@2.0.0"])
		}
		n.converge()
	}
	r, h := rolloutOf(t, ts, "api")
	if r.JobVersion != 3 || r.RevertedFrom != 2 || r.RevertedTo != 1 || !r.AutoRevert || r.Status != DeploySuccessful {
		t.Fatalf("after the failed canary: rollout %+v, want version 3 reverting version 2, successful", r)
	}
	if len(h) != 3 || h[1].Version != 2 || h[1].Deployment.Status != DeployFailed || !strings.Contains(h[1].Deployment.Description, "unhealthy: health check failed") ||
		h[0].Artifact != "api@1.0.0" || !h[0].Stable {
		t.Fatalf("history %+v", h)
	}
	// Three of the four old tasks never stopped: only the canary's task moved twice.
	kept := 0
	for _, a := range liveOn(n.allocs()) {
		if old[a.ID] {
			kept++
		}
		if a.Artifact != "api@1.0.0" {
			t.Errorf("after the revert %s runs %s", a.Name(), a.Artifact)
		}
		// The revert's own tasks carry the cell's consent to an older version.
		if a.AllowRollback != (a.JobVersion == 3) {
			t.Errorf("%s of version %d: allow_rollback %v", a.Name(), a.JobVersion, a.AllowRollback)
		}
	}
	if kept != 3 {
		t.Errorf("%d of the old tasks kept running through the revert, want 3", kept)
	}
}

// Without auto_revert a failed rollout just stops; `job revert` goes back.
func TestFailedRolloutStopsAndRevertsOnRequest(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 3, Update{MaxParallel: 1})
	n.sick = map[string]bool{"api@2.0.0": true}
	bad := *j
	bad.Artifact = "api@2.0.0"
	ts.submit(t, &bad)
	for range 4 {
		n.converge()
	}
	r, _ := rolloutOf(t, ts, "api")
	if run := versionsRunning(n); r.Status != DeployFailed || run["api@1.0.0"] != 2 || run["api@2.0.0"] != 1 {
		t.Fatalf("failed rollout: %s, running %v; want failed after one replacement", r.Status, run)
	}
	if _, err := ts.admin.RevertJob(ctx, "api", 7); err == nil || !strings.Contains(err.Error(), "no version 7") {
		t.Fatalf("revert to a version that never was: %v", err)
	}
	if _, err := ts.admin.RevertJob(ctx, "api", 1); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		n.converge()
	}
	r, _ = rolloutOf(t, ts, "api")
	if run := versionsRunning(n); r.Status != DeploySuccessful || r.JobVersion != 3 || r.AutoRevert || r.RevertedTo != 1 || run["api@1.0.0"] != 3 {
		t.Fatalf("after job revert 1: %+v, running %v", r, run)
	}
}

// With auto_promote, healthy canaries promote themselves.
func TestCanaryAutoPromote(t *testing.T) {
	ts := startServer(t, t.TempDir())
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 3, Update{MaxParallel: 1, Canary: 1, AutoPromote: true})
	j2 := *j
	j2.Artifact = "api@1.1.0"
	ts.submit(t, &j2)
	for step := 0; step < 10; step++ {
		n.converge()
		r, _ := rolloutOf(t, ts, "api")
		if r.Status == DeployPaused {
			t.Fatalf("step %d: the rollout waits for promotion despite auto_promote", step)
		}
		if r.Status == DeploySuccessful {
			if !r.Promoted || versionsRunning(n)["api@1.1.0"] != 3 {
				t.Fatalf("rollout %+v with %v running", r, versionsRunning(n))
			}
			return
		}
	}
	t.Fatal("the auto-promoted rollout did not finish")
}

// The job page shows the rollout, each task's health, and earlier versions.
func TestUIShowsRollouts(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 2, Update{MaxParallel: 1})
	n.sick = map[string]bool{"api@2.0.0": true}
	bad := *j
	bad.Artifact = "api@2.0.0"
	ts.submit(t, &bad)
	n.converge()
	loginURL, _, err := ts.admin.UILoginURL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hc := noRedirects(http.DefaultTransport)
	resp, body := uiGet(t, hc, ts.url+"/ui/jobs/api", sessionCookie(t, hc, loginURL))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s\n%s", resp.Status, body)
	}
	for _, want := range []string{
		`<dd class="rollout rollout-failed">v2 failed: task api[0]`,
		`<span class="badge health-unhealthy">unhealthy</span> (rollout: unhealthy)`,
		`<span class="badge health-healthy">healthy</span>`,
		"<h2>Earlier versions</h2>", "<td>v1 (stable)</td><td>api@1.0.0</td>",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("job page lacks %q", want)
		}
	}
}

// A new task that never turns healthy, because its node never starts it (it
// refuses the release, say), fails the rollout once healthy_deadline has
// passed since its placement: the leader's sweep gives the verdict, and
// auto_revert goes back.
func TestRolloutFailsPastTheHealthyDeadline(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	n := ts.addNode(t, 16000, 32, nil)
	j := startStable(t, ts, n, 2, Update{MaxParallel: 1, AutoRevert: true, HealthyDeadline: time.Minute, MinHealthyTime: time.Second})
	bad := *j
	bad.Artifact = "api@2.0.0"
	ts.submit(t, &bad)
	// The node runs the old tasks and cannot start the new one.
	n.states = map[string]TaskState{"api@2.0.0": {State: ClientPending, Message: "start api@2.0.0: refused: signature by unknown key"}}
	n.converge()
	if err := ts.Sweep(); err != nil {
		t.Fatal(err)
	}
	if r, _ := rolloutOf(t, ts, "api"); r.Status != DeployRunning || r.JobVersion != 2 {
		t.Fatalf("before the deadline: %+v", r)
	}
	ts.clock.Advance(time.Minute + time.Second)
	n.converge() // the machine is alive: only the task is late
	if err := ts.Sweep(); err != nil {
		t.Fatal(err)
	}
	if err := ts.quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	r, h := rolloutOf(t, ts, "api")
	if r.JobVersion != 3 || !r.AutoRevert || h[1].Deployment.Status != DeployFailed ||
		!strings.Contains(h[1].Deployment.Description, "not healthy within healthy_deadline (1m0s)") {
		t.Fatalf("after the deadline: rollout %+v; version 2: %+v", r, h[1].Deployment)
	}
}
