package placement

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// checkInvariants verifies the cell's bookkeeping against its allocations.
func checkInvariants(t *testing.T, c *Cell, step int, op string) {
	t.Helper()
	var used, batch Resources
	perNode := map[string]Resources{}
	perTask := map[string]int{}
	for _, a := range c.allocs {
		if a.Band == BandProd && strings.HasPrefix(a.DesiredDescription, "preempted") {
			t.Fatalf("step %d (%s): prod allocation %s was preempted", step, op, a.Name())
		}
		if !a.live() {
			continue
		}
		used = used.Add(a.Resources)
		if a.Band == BandBatch {
			batch = batch.Add(a.Resources)
		}
		perNode[a.NodeID] = perNode[a.NodeID].Add(a.Resources)
		perTask[taskKey(a.Job, a.TaskIndex)]++
		if n := c.byID[a.NodeID]; n == nil || n.Status != NodeReady {
			t.Fatalf("step %d (%s): live allocation %s on a machine that is not ready", step, op, a.ID)
		}
		if js := c.jobs[a.Job]; js == nil || js.Stopped || a.TaskIndex >= js.Count {
			t.Fatalf("step %d (%s): live allocation %s of a stopped job or past the count", step, op, a.Name())
		}
	}
	if used != c.used || batch != c.batchUsed {
		t.Fatalf("step %d (%s): cell accounts used %v batch %v, allocations sum to %v and %v", step, op, c.used, c.batchUsed, used, batch)
	}
	for _, n := range c.nodes {
		if n.used != perNode[n.ID] {
			t.Fatalf("step %d (%s): node %s accounts %v, allocations sum to %v", step, op, n.ID, n.used, perNode[n.ID])
		}
		if !n.used.Fits(n.Capacity) {
			t.Fatalf("step %d (%s): node %s over capacity: %v of %v", step, op, n.ID, n.used, n.Capacity)
		}
		if n.free != n.Capacity.Sub(n.used) {
			t.Fatalf("step %d (%s): node %s free %v, want %v", step, op, n.ID, n.free, n.Capacity.Sub(n.used))
		}
		if want := n.schedulable(); want != (n.fcell >= 0) {
			t.Fatalf("step %d (%s): node %s schedulable %v but indexed %v", step, op, n.ID, want, n.fcell >= 0)
		}
		if n.fcell >= 0 && (n.fcell != c.free.key(n.free) || c.nodes[c.free.cells[n.fcell][n.fpos].slot] != n ||
			c.free.cells[n.fcell][n.fpos].cpu != n.free.CPU || c.free.cells[n.fcell][n.fpos].mem != n.free.Memory) {
			t.Fatalf("step %d (%s): node %s misplaced in the free index", step, op, n.ID)
		}
	}
	for k, cnt := range perTask {
		if cnt > 1 {
			t.Fatalf("step %d (%s): task %s has %d live allocations", step, op, k, cnt)
		}
	}
}

// randomOps drives a cell through random submits, stops, heartbeats, machine
// loss and return, and drains.
func randomOps(t *testing.T, seed uint64, steps int, apply func(op string, fn func(c *Cell) error), check func(step int, op string)) {
	rng := rand.New(rand.NewPCG(seed, 2))
	nodeIDs := []string{}
	for i := range 12 {
		id := fmt.Sprintf("n%02d", i)
		nodeIDs = append(nodeIDs, id)
		apply("register", func(c *Cell) error {
			c.registerNode(id, &NodeRegistration{Capacity: Resources{CPU: int64(4000 + 4000*rng.IntN(3)), Memory: int64(8+8*rng.IntN(3)) * gib},
				Labels: map[string]string{"rack": fmt.Sprintf("r%d", i%3), "host": id}})
			return nil
		})
	}
	sizes := []Resources{{CPU: 250, Memory: 256 << 20}, {CPU: 1000, Memory: gib}, {CPU: 2000, Memory: 4 * gib}, {CPU: 500, Memory: 3 * gib}}
	for step := range steps {
		var op string
		switch x := rng.IntN(100); {
		case x < 30:
			op = "submit"
			name := fmt.Sprintf("j%d", rng.IntN(8))
			j := &Job{Name: name, Artifact: fmt.Sprintf("%s@1.%d.0", name, rng.IntN(2)), Count: rng.IntN(8),
				Resources: sizes[rng.IntN(len(sizes))], Priority: []Band{BandProd, BandBatch}[rng.IntN(2)],
				Restart: []string{RestartAlways, RestartOnFailure, RestartNever}[rng.IntN(3)], Update: Update{MaxParallel: 1 + rng.IntN(3)}}
			if rng.IntN(4) == 0 {
				j.Spread = "rack"
			}
			if rng.IntN(5) == 0 {
				j.DistinctHosts = true
			}
			apply(op, func(c *Cell) error { _, err := c.submitJob(j, nil); return err })
		case x < 35:
			op = "stop"
			name := fmt.Sprintf("j%d", rng.IntN(8))
			apply(op, func(c *Cell) error { c.stopJob(name); return nil })
		case x < 75:
			op = "heartbeat"
			id := nodeIDs[rng.IntN(len(nodeIDs))]
			apply(op, func(c *Cell) error {
				n := c.byID[id]
				var hb Heartbeat
				for _, a := range sortedAllocs(n.assigned) {
					st := ClientRunning
					switch {
					case a.DesiredStatus == DesiredStop:
						st = ClientComplete
					case rng.IntN(10) == 0:
						st = ClientFailed
					case rng.IntN(10) == 0:
						st = ClientComplete
					}
					hb.Tasks = append(hb.Tasks, TaskState{AllocID: a.ID, State: st})
				}
				_, _, err := c.heartbeat(id, &hb)
				return err
			})
		case x < 85:
			op = "node down"
			id := nodeIDs[rng.IntN(len(nodeIDs))]
			apply(op, func(c *Cell) error {
				c.byID[id].LastSeen = c.now().Add(-time.Hour)
				c.markDown(id, time.Minute)
				return nil
			})
		default:
			op = "drain"
			id := nodeIDs[rng.IntN(len(nodeIDs))]
			enable := rng.IntN(2) == 0
			apply(op, func(c *Cell) error { _, err := c.setDrain(id, enable); return err })
		}
		check(step, op)
	}
}

func TestRandomOperationsKeepInvariants(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		c := testCell(0.4)
		randomOps(t, seed, 600, func(op string, fn func(c *Cell) error) {
			c.index++
			if err := fn(c); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
		}, func(step int, op string) { checkInvariants(t, c, step, op) })
	}
}

// TestPersistedStateMatchesMemory runs random operations through the server's
// commit path, then reloads badger and compares both ways: a change made in
// memory but not recorded for the store shows up here, and so does a record the
// store kept after memory dropped it.
func TestPersistedStateMatchesMemory(t *testing.T) {
	for seed := uint64(9); seed <= 11; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { persistedMatches(t, seed) })
	}
}

func persistedMatches(t *testing.T, seed uint64) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	randomOps(t, seed, 400, func(op string, fn func(c *Cell) error) {
		if err := s.update(fn); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}, func(int, string) {})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	want := snapshotCell(s.cell)
	s.Close()
	s, err = Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := snapshotCell(s.cell)
	// Both ways: a record memory has and disk lacks, and one disk has that memory
	// dropped (a delete that was never persisted).
	for k := range want {
		if !reflect.DeepEqual(want[k], got[k]) {
			t.Errorf("%s differs after reload:\nmemory %s\ndisk   %s", k, want[k], got[k])
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s is on disk but not in memory: %s", k, got[k])
		}
	}
	checkInvariants(t, s.cell, -1, "reload")
}

func snapshotCell(c *Cell) map[string]string {
	out := map[string]string{}
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	for _, n := range c.nodes {
		cp := *n.Node
		cp.LastSeen = time.Time{}
		out["node "+n.ID] = js(cp) + fmt.Sprintf(" used=%v", n.used)
	}
	for name, j := range c.jobs {
		out["job "+name] = js(j.Job)
		out["tasks "+name] = fmt.Sprint(len(j.tasks))
		if len(j.tasks) > 0 {
			out["tasks "+name] = js(j.tasks)
		}
	}
	for id, a := range c.allocs {
		out["alloc "+id] = js(a)
	}
	out["cell"] = fmt.Sprintf("used=%v batch=%v capacity=%v", c.used, c.batchUsed, c.capacity)
	return out
}
