package placement

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
)

func (c *Cell) markPending(js *jobState, t *Task, why string, ev *Evaluation) {
	if t.State != TaskPending || t.Reason != why {
		t.State, t.Reason = TaskPending, why
		c.touchTask(t)
	}
	ev.Pending = append(ev.Pending, PendingTask{Index: t.Index, Reason: why})
	c.pending[js.Name] = true
}

func (c *Cell) newAlloc(js *jobState, idx int, n *nodeState) *Alloc {
	return &Alloc{
		ID: c.newAllocID(), Job: js.Name, TaskIndex: idx, JobVersion: js.Version, NodeID: n.ID, Band: js.Priority,
		Artifact: js.Artifact, Digest: js.Digest, Resources: js.Resources, Args: js.Args, Env: js.Env,
		Restart: js.Restart, Isolation: js.Isolation, Check: js.Check,
		MinHealthyTime: js.Update.MinHealthyTime, HealthyDeadline: js.Update.HealthyDeadline,
		AllowRollback: js.Deployment != nil && js.Deployment.RevertedTo != 0,
		DesiredStatus: DesiredRun, ClientStatus: ClientPending,
		CreatedAt: c.now(), CreateIndex: c.index,
	}
}

// selectNode picks the machine for one more task of the job: feasible candidates
// from the free-resource index, ranked; for prod, preemption of batch when
// nothing fits. It returns the reason when there is no machine.
func (p *planState) selectNode(retry bool) (*nodeState, []*Alloc, string) {
	c, js := p.c, p.js
	if js.Priority == BandBatch && !p.batchShareAllows() {
		return nil, nil, fmt.Sprintf("batch share exhausted: batch uses %s of the cell's %s, limit %.0f%%",
			c.batchUsed.Add(p.batchUp), c.capacity, c.BatchShare*100)
	}
	var buf [40]*nodeState
	cands := p.candidates(buf[:0])
	if len(cands) > 0 {
		best, bestScore := cands[0], p.rank(cands[0])
		for _, n := range cands[1:] {
			if s := p.rank(n); s > bestScore || s == bestScore && n.slot < best.slot {
				best, bestScore = n, s
			}
		}
		return best, nil, ""
	}
	if retry {
		return nil, nil, ""
	}
	if js.Priority == BandProd {
		if n, victims := p.preemptFor(); n != nil {
			return n, victims, ""
		}
	}
	return nil, nil, p.explain()
}

func (p *planState) batchShareAllows() bool {
	c := p.c
	after := c.batchUsed.Add(p.batchUp).Add(p.js.Resources)
	return float64(after.CPU) <= c.BatchShare*float64(c.capacity.CPU) &&
		float64(after.Memory) <= c.BatchShare*float64(c.capacity.Memory)
}

// candidates collects up to k feasible machines, walking the free-resource grid
// from the tightest cells that can hold the request outwards (best fit first),
// each cell from a random offset, plus a few machines that hold the artifact.
func (p *planState) candidates(out []*nodeState) []*nodeState {
	c, js := p.c, p.js
	want := min(c.k, cap(out)-12)
	perCell := want
	if js.Spread != "" {
		// The tightest cells hold the machines this job just filled, in few racks:
		// take a couple per cell so the candidates span many machines.
		perCell = 2
	}
	// Probing a few entries per cell, rather than every one, keeps a cell where
	// most machines are just short of the request from costing a scan of all of
	// them; only if that finds nothing is every entry looked at, so a machine
	// that fits is never missed.
	out, cut := p.walkFree(out, want, perCell, 2*perCell)
	if len(out) == 0 && cut {
		out, _ = p.walkFree(out, want, perCell, math.MaxInt)
	}
	if len(out) == 0 {
		return out
	}
	if js.Spread != "" {
		// A few machines from anywhere: most likely in label values the job has
		// few tasks in yet. A window from a random start rather than independent
		// draws, so that a cell of up to 16 machines is seen whole: draws with
		// replacement sometimes missed one of four machines
		// (TestSpreadCoversEverySmallValue).
		n := len(c.nodes)
		start := p.rng.IntN(n)
		for t := 0; t < min(16, n) && len(out) < cap(out)-4; t++ {
			ns := c.nodes[(start+t)%n]
			if ns.schedulable() && p.fits(ns) && !containsNode(out, ns) {
				out = append(out, ns)
			}
		}
	}
	// Machines that already hold the artifact skip a transfer; give a few of them a
	// chance even if they are not among the tightest.
	for _, key := range []string{js.Artifact, "sha256:" + js.Digest} {
		h := c.holders[key]
		for t := 0; t < 2 && len(h) > 0 && len(out) < cap(out); t++ {
			ns := c.nodes[h[p.rng.IntN(len(h))]]
			if p.fits(ns) && !containsNode(out, ns) {
				out = append(out, ns)
			}
		}
	}
	return out
}

// walkFree appends up to want feasible machines from the free-resource grid,
// tightest cells first, up to perCell from each, looking at up to probe
// entries of a cell from a random offset. cut reports whether a cell had
// entries left unexamined.
func (p *planState) walkFree(out []*nodeState, want, perCell, probe int) (_ []*nodeState, cut bool) {
	c, js := p.c, p.js
	f := &c.free
	g := f.g
	bc, bm := f.q(js.Resources.CPU, f.maxCPU), f.q(js.Resources.Memory, f.maxMem)
	// Rows (cpu buckets) with any machine at or past the memory bucket.
	var liveBuf [freeGrid]int
	live := liveBuf[:0]
	for i := bc; i < g; i++ {
		if f.rows[i]>>uint(bm) != 0 {
			live = append(live, i)
		}
	}
	for d := 0; d <= 2*(g-1) && len(live) > 0; d++ {
		for _, i := range live {
			if i-bc > d {
				break
			}
			j := bm + d - (i - bc)
			if j >= g || !f.occupied(i, j) {
				continue
			}
			cell := f.cells[i*g+j]
			n := len(cell)
			if n == 0 {
				continue
			}
			start := p.rng.IntN(n)
			taken, t := 0, 0
			for ; t < min(n, probe) && taken < perCell; t++ {
				e := &cell[(start+t)%n]
				if !p.freed && (js.Resources.CPU > e.cpu || js.Resources.Memory > e.mem) {
					continue // as in fits, from the index alone
				}
				ns := c.nodes[e.slot]
				if p.fits(ns) {
					out = append(out, ns)
					taken++
					if len(out) >= want {
						return out, cut
					}
				}
			}
			cut = cut || taken < perCell && t < n
		}
	}
	return out, cut
}

func containsNode(list []*nodeState, n *nodeState) bool {
	for _, e := range list {
		if e == n {
			return true
		}
	}
	return false
}

// preemptFor finds a machine where evicting batch allocations makes room for a
// prod task: among the first k machines where that works, from a random start,
// the one losing the least (smallest share of the machine evicted, then fewest
// tasks). Prod is never evicted.
func (p *planState) preemptFor() (*nodeState, []*Alloc) {
	c, js := p.c, p.js
	r := js.Resources
	var best *nodeState
	var bestVictims []*Alloc
	bestCost := 0.0
	viable := 0
	start := 0
	if len(c.nodes) > 0 {
		start = p.rng.IntN(len(c.nodes))
	}
	for t := 0; t < len(c.nodes) && viable < c.k; t++ {
		n := c.nodes[(start+t)%len(c.nodes)]
		batchUsed := p.batchOn(n)
		if !n.schedulable() || batchUsed.CPU <= 0 && batchUsed.Memory <= 0 ||
			!constraintsHold(n, js) || js.DistinctHosts && p.jobTasksOn(n) > 0 {
			continue
		}
		free := p.freeOn(n)
		if !needFits(r, free.Add(batchUsed), n.Capacity) {
			continue
		}
		var batch []*Alloc
		for _, a := range n.live {
			if a.Band == BandBatch && !p.stopped[a] {
				batch = append(batch, a)
			}
		}
		// Largest first: fewest evictions.
		share := func(a *Alloc) float64 {
			return max(float64(a.Resources.CPU)/float64(n.Capacity.CPU), float64(a.Resources.Memory)/float64(n.Capacity.Memory))
		}
		sort.Slice(batch, func(i, j int) bool {
			if si, sj := share(batch[i]), share(batch[j]); si != sj {
				return si > sj
			}
			return batch[i].ID < batch[j].ID
		})
		var victims []*Alloc
		cost := 0.0
		for _, a := range batch {
			if needFits(r, free, n.Capacity) {
				break
			}
			victims = append(victims, a)
			free = free.Add(a.Resources)
			cost += share(a)
		}
		if !needFits(r, free, n.Capacity) {
			continue
		}
		// Drop victims that turned out unnecessary (the big one alone may suffice).
		for i := len(victims) - 1; i >= 0; i-- {
			if needFits(r, free.Sub(victims[i].Resources), n.Capacity) {
				free = free.Sub(victims[i].Resources)
				cost -= share(victims[i])
				victims = append(victims[:i], victims[i+1:]...)
			}
		}
		viable++
		if best == nil || cost < bestCost || cost == bestCost && len(victims) < len(bestVictims) {
			best, bestVictims, bestCost = n, victims, cost
		}
	}
	return best, bestVictims
}

func needFits(r, free, capacity Resources) bool {
	return r.CPU <= free.CPU && r.Memory <= free.Memory && (r.PIDs == 0 || capacity.PIDs == 0 || r.PIDs <= free.PIDs)
}

// retryPending reconciles the jobs whose allocations changed, then evaluates jobs
// that wait for room, prod first, if a machine that gained room could now hold
// one of their tasks (like Nomad's blocked evaluations, unblocked by capacity
// changes). Bounded: a few rounds, each job at most once per round.
func (c *Cell) retryPending(trigger string) []*Evaluation {
	var evs []*Evaluation
	for _, name := range slices.Sorted(maps.Keys(c.dirty)) {
		evs = append(evs, c.evaluate(name, trigger))
	}
	for round := 0; round < 3 && len(c.grown) > 0 && len(c.pending) > 0; round++ {
		grown := c.grown
		c.grown = map[*nodeState]bool{}
		names := make([]string, 0, len(c.pending))
		for name := range c.pending {
			names = append(names, name)
		}
		sort.Slice(names, func(i, j int) bool {
			a, b := c.jobs[names[i]], c.jobs[names[j]]
			if a == nil || b == nil {
				return a != nil
			}
			if a.Priority != b.Priority {
				return a.Priority == BandProd
			}
			if a.CreateIndex != b.CreateIndex {
				return a.CreateIndex < b.CreateIndex
			}
			return a.Name < b.Name
		})
		for _, name := range names {
			js := c.jobs[name]
			if js == nil {
				delete(c.pending, name)
				continue
			}
			if round == 0 && js.lastEval != nil && js.lastEval.Index == c.index {
				continue // just evaluated in this operation
			}
			if !anyFits(grown, js) {
				continue
			}
			evs = append(evs, c.evaluateJob(name, trigger, true))
		}
	}
	clear(c.grown)
	return evs
}

// schedule runs the evaluations an operation made necessary: at once on a
// serial cell, or later, by the server's workers (takeEvalRequests).
func (c *Cell) schedule(trigger string) []*Evaluation {
	if c.async {
		if c.trigger == "" {
			c.trigger = trigger
		}
		return nil
	}
	return c.retryPending(trigger)
}

// evalRequest asks for one evaluation of a job.
type evalRequest struct {
	job     string
	trigger string
	retry   bool
	prod    bool
	id      string // the pending evaluation recorded for it; none for a retry
}

// takeEvalRequests hands over the evaluations the operations so far made
// necessary: jobs whose allocations changed, and waiting jobs that a machine
// which gained room could now take (retries: no preemption, no diagnosis).
func (c *Cell) takeEvalRequests() []evalRequest {
	c.refreshMinRequest() // the workers about to plan only read the cell
	trigger := c.trigger
	if trigger == "" {
		trigger = "plan-applied"
	}
	c.trigger = ""
	var out []evalRequest
	for _, name := range slices.Sorted(maps.Keys(c.dirty)) {
		js := c.jobs[name]
		if js == nil {
			continue
		}
		// Recorded with the operation: if this leader fails before the plan
		// commits, the next one finds it pending and runs it.
		ev := &Evaluation{ID: c.newID(), Job: name, Trigger: trigger, Index: c.index, Time: c.now(), Status: EvalPending}
		js.lastEval = ev
		if c.ch != nil {
			c.ch.evals = append(c.ch.evals, ev)
		}
		out = append(out, evalRequest{job: name, trigger: trigger, prod: js.Priority == BandProd, id: ev.ID})
	}
	if len(c.grown) > 0 {
		for name := range c.pending {
			js := c.jobs[name]
			if js == nil {
				delete(c.pending, name)
				continue
			}
			if !c.dirty[name] && anyFits(c.grown, js) {
				out = append(out, evalRequest{job: name, trigger: trigger, retry: true, prod: js.Priority == BandProd})
			}
		}
	}
	clear(c.dirty)
	clear(c.grown)
	return out
}

// anyFits reports whether one of the machines could take a task of js now.
func anyFits(nodes map[*nodeState]bool, js *jobState) bool {
	for n := range nodes {
		if n.schedulable() && js.Resources.CPU <= n.free.CPU && js.Resources.Memory <= n.free.Memory {
			return true
		}
	}
	return false
}
