package placement

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const gib = int64(1) << 30

func testCell(share float64) *Cell {
	c := NewCell(share, func() time.Time { return time.Unix(1_800_000_000, 0) }, 1)
	c.index = 1
	return c
}

func addNode(c *Cell, id string, cpu, memGiB int64, labels map[string]string, artifacts ...string) {
	c.index++
	if labels == nil {
		labels = map[string]string{}
	}
	labels["host"] = id
	c.registerNode(id, &NodeRegistration{Capacity: Resources{CPU: cpu, Memory: memGiB * gib}, Labels: labels, Artifacts: artifacts})
}

func job(name string, count int, cpu, memMiB int64, band Band) *Job {
	return &Job{Name: name, Artifact: name + "@1.0.0", Count: count,
		Resources: Resources{CPU: cpu, Memory: memMiB << 20}, Priority: band}
}

func submit(t *testing.T, c *Cell, j *Job) *Evaluation {
	t.Helper()
	c.index++
	evs, err := c.submitJob(j, nil)
	if err != nil {
		t.Fatalf("submit %s: %v", j.Name, err)
	}
	return evs[0]
}

// where counts a job's live tasks per machine.
func where(c *Cell, name string) map[string]int {
	out := map[string]int{}
	for _, a := range c.jobs[name].live {
		out[a.NodeID]++
	}
	return out
}

func pin(j *Job, host string) *Job {
	j.Constraints = append(j.Constraints, Constraint{Label: "host", Op: OpEquals, Values: []string{host}})
	return j
}

func TestPackingFillsOneMachineFirst(t *testing.T) {
	c := testCell(1)
	for _, id := range []string{"a", "b", "c"} {
		addNode(c, id, 4000, 8, nil)
	}
	ev := submit(t, c, job("web", 4, 1000, 2048, BandProd))
	if ev.Placed != 4 {
		t.Fatalf("placed %d, want 4: %+v", ev.Placed, ev)
	}
	if w := where(c, "web"); len(w) != 1 {
		t.Errorf("tasks spread over %v; best fit should fill one machine", w)
	}
}

func TestPackingAvoidsStranding(t *testing.T) {
	c := testCell(1)
	addNode(c, "a", 4000, 8, nil)
	addNode(c, "b", 4000, 8, nil)
	// a keeps 1 core and 7GiB free; b keeps 3 cores and 3GiB.
	submit(t, c, pin(job("cpuhog", 1, 3000, 1024, BandProd), "a"))
	submit(t, c, pin(job("memhog", 1, 1000, 5*1024, BandProd), "b"))
	submit(t, c, job("task", 1, 1000, 2048, BandProd))
	// On a the task would take the last core and strand 5GiB of memory.
	if w := where(c, "task"); w["b"] != 1 {
		t.Errorf("task placed on %v, want b (a would strand its memory)", w)
	}
}

func TestSpreadAcrossRacks(t *testing.T) {
	c := testCell(1)
	addNode(c, "a1", 16000, 64, map[string]string{"rack": "r1"})
	addNode(c, "a2", 16000, 64, map[string]string{"rack": "r1"})
	addNode(c, "b1", 16000, 64, map[string]string{"rack": "r2"})
	addNode(c, "c1", 16000, 64, map[string]string{"rack": "r3"})
	j := job("api", 6, 500, 512, BandProd)
	j.Spread = "rack"
	submit(t, c, j)
	racks := map[string]int{}
	for node, n := range where(c, "api") {
		racks[c.byID[node].Labels["rack"]] += n
	}
	for _, r := range []string{"r1", "r2", "r3"} {
		if racks[r] != 2 {
			t.Errorf("rack %s has %d tasks, want 2 each: %v", r, racks[r], racks)
		}
	}
}

func TestConstraints(t *testing.T) {
	c := testCell(1)
	addNode(c, "eu1", 4000, 8, map[string]string{"zone": "eu", "disk": "ssd"})
	addNode(c, "eu2", 4000, 8, map[string]string{"zone": "eu", "disk": "hdd"})
	addNode(c, "us1", 4000, 8, map[string]string{"zone": "us", "disk": "ssd"})

	j := job("db", 2, 1000, 1024, BandProd)
	j.DistinctHosts = true
	j.Constraints = []Constraint{{Label: "zone", Op: OpIn, Values: []string{"eu", "ap"}}, {Label: "disk", Op: OpNotEquals, Values: []string{"hdd"}}}
	ev := submit(t, c, j)
	if w := where(c, "db"); len(w) != 1 || w["eu1"] != 1 {
		t.Errorf("db placed on %v, want only eu1", w)
	}
	if len(ev.Pending) != 1 || !strings.Contains(ev.Pending[0].Reason, "filtered by constraints") ||
		!strings.Contains(ev.Pending[0].Reason, "distinct_hosts") {
		t.Errorf("pending = %+v, want one task filtered by constraints and distinct_hosts", ev.Pending)
	}
	none := job("nowhere", 1, 100, 64, BandProd)
	none.Constraints = []Constraint{{Label: "zone", Op: OpEquals, Values: []string{"mars"}}}
	ev = submit(t, c, none)
	if ev.Placed != 0 || len(ev.Pending) != 1 || !strings.Contains(ev.Pending[0].Reason, "0/3 machines fit: 3 filtered by constraints") {
		t.Errorf("evaluation = %+v", ev)
	}
}

func TestDistinctHosts(t *testing.T) {
	c := testCell(1)
	addNode(c, "a", 8000, 16, nil)
	addNode(c, "b", 8000, 16, nil)
	j := job("zk", 3, 500, 512, BandProd)
	j.DistinctHosts = true
	ev := submit(t, c, j)
	if ev.Placed != 2 || len(ev.Pending) != 1 {
		t.Fatalf("placed %d pending %v, want 2 and 1", ev.Placed, ev.Pending)
	}
	if w := where(c, "zk"); w["a"] != 1 || w["b"] != 1 {
		t.Errorf("placement %v", w)
	}
	addNode(c, "c", 8000, 16, nil)
	c.index++
	c.retryPending("test")
	if w := where(c, "zk"); w["c"] != 1 {
		t.Errorf("pending task not placed on the new machine: %v", w)
	}
}

func TestPrefersMachinesHoldingTheArtifact(t *testing.T) {
	c := testCell(1)
	addNode(c, "a", 4000, 8, nil)
	addNode(c, "b", 4000, 8, nil, "api@1.0.0")
	submit(t, c, job("api", 1, 1000, 1024, BandProd))
	if w := where(c, "api"); w["b"] != 1 {
		t.Errorf("placed on %v, want b which holds api@1.0.0", w)
	}
}

func TestBatchShare(t *testing.T) {
	c := testCell(0.3)
	addNode(c, "a", 5000, 10, nil)
	addNode(c, "b", 5000, 10, nil)
	ev := submit(t, c, job("crunch", 10, 1000, 1024, BandBatch))
	if ev.Placed != 3 || len(ev.Pending) != 7 {
		t.Fatalf("placed %d, pending %d; want 3 of 10 (30%% of 10 cores)", ev.Placed, len(ev.Pending))
	}
	if !strings.Contains(ev.Pending[0].Reason, "batch share exhausted") {
		t.Errorf("reason %q", ev.Pending[0].Reason)
	}
	// Prod is not limited by the batch share.
	if ev := submit(t, c, job("api", 7, 1000, 1024, BandProd)); ev.Placed != 7 {
		t.Errorf("prod placed %d of 7", ev.Placed)
	}
}

func TestPreemption(t *testing.T) {
	c := testCell(1)
	addNode(c, "a", 4000, 8, nil)
	submit(t, c, job("crunch", 4, 1000, 1024, BandBatch))
	ev := submit(t, c, job("api", 2, 1000, 1024, BandProd))
	if ev.Placed != 2 || ev.Preempted != 2 {
		t.Fatalf("prod placed %d preempting %d, want 2 and 2", ev.Placed, ev.Preempted)
	}
	if n := len(c.jobs["crunch"].live); n != 2 {
		t.Errorf("batch has %d live tasks, want 2", n)
	}
	pending := 0
	for _, tk := range c.jobs["crunch"].tasks {
		if tk.State == TaskPending {
			pending++
			if !strings.Contains(tk.Reason, "preempted by api") && !strings.Contains(tk.Reason, "0/1 machines fit") {
				t.Errorf("preempted task reason %q", tk.Reason)
			}
		}
	}
	if pending != 2 {
		t.Errorf("%d batch tasks pending, want 2", pending)
	}
	// Prod never preempts prod.
	ev = submit(t, c, job("other", 3, 1000, 1024, BandProd))
	if ev.Placed != 2 || len(ev.Pending) != 1 || len(c.jobs["api"].live) != 2 {
		t.Errorf("second prod job placed %d pending %d (api live %d); want 2, 1, 2", ev.Placed, len(ev.Pending), len(c.jobs["api"].live))
	}
	// Room appears: the pending prod task goes first, then preempted batch tasks.
	c.index++
	if _, err := c.stopJob("api"); err != nil {
		t.Fatal(err)
	}
	if n := len(c.jobs["other"].live); n != 3 {
		t.Errorf("other has %d live tasks after api stopped, want 3", n)
	}
	if n := len(c.jobs["crunch"].live); n != 1 {
		t.Errorf("crunch has %d live tasks after api stopped, want 1 (room for one)", n)
	}
}

func TestScaleDownAndUp(t *testing.T) {
	c := testCell(1)
	addNode(c, "a", 8000, 16, nil)
	submit(t, c, job("w", 5, 500, 256, BandProd))
	ev := submit(t, c, job("w", 2, 500, 256, BandProd))
	if ev.Stopped != 3 || len(c.jobs["w"].live) != 2 || len(c.jobs["w"].tasks) != 2 {
		t.Fatalf("scale down: stopped %d live %d tasks %d", ev.Stopped, len(c.jobs["w"].live), len(c.jobs["w"].tasks))
	}
	if c.jobs["w"].Version != 1 {
		t.Errorf("a count change made version %d; it should not restart tasks", c.jobs["w"].Version)
	}
	ev = submit(t, c, job("w", 4, 500, 256, BandProd))
	if ev.Placed != 2 || len(c.jobs["w"].live) != 4 {
		t.Errorf("scale up: placed %d live %d", ev.Placed, len(c.jobs["w"].live))
	}
}

func TestRestartPolicyAfterExit(t *testing.T) {
	c := testCell(1)
	addNode(c, "a", 8000, 16, nil)
	once := job("once", 1, 500, 256, BandBatch)
	once.Restart = RestartOnFailure
	submit(t, c, once)
	svc := job("svc", 1, 500, 256, BandProd)
	svc.Restart = RestartAlways
	submit(t, c, svc)

	exit := func(name, state string) {
		var a *Alloc
		for _, x := range c.jobs[name].live {
			a = x
		}
		c.index++
		code := 0
		c.heartbeat("a", &Heartbeat{Tasks: []TaskState{{AllocID: a.ID, State: state, ExitCode: &code}}})
	}
	exit("once", ClientComplete)
	if st := c.jobs["once"].tasks[0].State; st != TaskDone || len(c.jobs["once"].live) != 0 {
		t.Errorf("on-failure task that completed: state %s, live %d; want done, 0", st, len(c.jobs["once"].live))
	}
	exit("svc", ClientComplete)
	if st := c.jobs["svc"].tasks[0].State; st != TaskPlaced || len(c.jobs["svc"].live) != 1 {
		t.Errorf("always task that exited: state %s, live %d; want placed again", st, len(c.jobs["svc"].live))
	}
}

func TestCrashLoopStopsMoving(t *testing.T) {
	c := testCell(1)
	addNode(c, "a", 8000, 16, nil)
	addNode(c, "b", 8000, 16, nil)
	j := job("crashy", 1, 500, 256, BandProd)
	j.Restart = RestartAlways
	submit(t, c, j)
	fail := func() {
		t.Helper()
		for _, a := range c.jobs["crashy"].live {
			c.index++
			code := 1
			if _, _, err := c.heartbeat(a.NodeID, &Heartbeat{Tasks: []TaskState{{AllocID: a.ID, State: ClientFailed, ExitCode: &code}}}); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Fatal("no live allocation to fail")
	}
	for i := 1; i < MaxFailures; i++ {
		fail()
		if len(c.jobs["crashy"].live) != 1 {
			t.Fatalf("after failure %d: %d live, want a replacement", i, len(c.jobs["crashy"].live))
		}
	}
	fail()
	task := c.jobs["crashy"].tasks[0]
	if len(c.jobs["crashy"].live) != 0 || task.State != TaskDone || !strings.Contains(task.Reason, "failed on 5 allocations") {
		t.Fatalf("after %d failures: live %d, task %+v", MaxFailures, len(c.jobs["crashy"].live), task)
	}
	// Running the job again gives it another chance.
	j2 := job("crashy", 1, 500, 256, BandProd)
	j2.Restart = RestartAlways
	if ev := submit(t, c, j2); ev.Placed != 1 {
		t.Errorf("resubmitted crash-looping job placed %d, want 1", ev.Placed)
	}
}

// TestSpreadCoversEverySmallValue is the e2e fleet's job in miniature: four
// machines, one label value each, one of them holding the artifact, four tasks
// spread over the label. Every machine must get one, whatever the cell's random
// seed: a soft spread still has to see every machine in a small cell.
func TestSpreadCoversEverySmallValue(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		c := NewCell(1, func() time.Time { return time.Unix(1_800_000_000, 0) }, seed)
		c.index = 1
		addNode(c, "h0", 2000, 21, nil, "hello@1.0.0")
		for _, id := range []string{"h1", "h2", "h3"} {
			addNode(c, id, 2000, 21, nil)
		}
		j := job("hello", 4, 50, 128, BandProd)
		j.Spread = "host"
		submit(t, c, j)
		for _, id := range []string{"h0", "h1", "h2", "h3"} {
			if w := where(c, "hello"); w[id] != 1 {
				t.Fatalf("seed %d: machine %s runs %d tasks, want 1 each: %v", seed, id, w[id], w)
			}
		}
	}
}

// TestFindsTheOneMachineThatFits: the planner probes only a few machines per
// cell of its free-resource index, but when that finds none it must look at
// every one: here one machine in 201, all in the same cell, has room.
func TestFindsTheOneMachineThatFits(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		c := NewCell(1, func() time.Time { return time.Unix(1_800_000_000, 0) }, seed)
		c.index = 1
		for i := range 200 {
			addNode(c, fmt.Sprintf("short-%03d", i), 990, 1, nil)
		}
		addNode(c, "roomy", 1000, 1, nil)
		ev := submit(t, c, job("api", 1, 1000, 512, BandProd))
		if w := where(c, "api"); w["roomy"] != 1 {
			t.Fatalf("seed %d: placed on %v (evaluation %+v), want the one machine with room", seed, w, ev)
		}
	}
}
