package placement

import (
	"fmt"
	"maps"
	"slices"
	"sort"
)

// evaluate reconciles one job and places what it needs, recording an Evaluation.
// A retry (room may have appeared for a waiting job) neither preempts nor
// re-diagnoses: prod jobs are retried before batch ones, so freed room goes to
// prod first anyway, and a full diagnosis per waiting job per change would cost
// a scan of the cell each time.
func (c *Cell) evaluate(name, trigger string) *Evaluation {
	return c.evaluateJob(name, trigger, false)
}

func (c *Cell) evaluateJob(name, trigger string, retry bool) *Evaluation {
	js := c.jobs[name]
	ev := &Evaluation{ID: c.newID(), Job: name, Trigger: trigger, Index: c.index, Time: c.now()}
	if js == nil {
		return ev
	}
	delete(c.pending, name)
	delete(c.dirty, name)
	res := reconcile(c, js)
	for _, s := range res.stop {
		c.setDesired(s.alloc, DesiredStop, s.desc)
		ev.Stopped++
	}
	// Tasks past the count go away; reconcile stopped their allocations above.
	if !js.Stopped && len(js.tasks) > js.Count {
		for _, t := range js.tasks[js.Count:] {
			if c.ch != nil {
				c.ch.tasks[taskKey(t.Job, t.Index)] = nil
			}
		}
		js.tasks = js.tasks[:js.Count]
	}
	for len(js.tasks) < js.Count && !js.Stopped {
		t := &Task{Job: name, Index: len(js.tasks), State: TaskPending}
		js.tasks = append(js.tasks, t)
		c.touchTask(t)
	}
	for _, idx := range res.done {
		t := js.tasks[idx]
		t.State, t.Reason = TaskDone, ""
		c.touchTask(t)
	}
	for _, idx := range res.failed {
		t := js.tasks[idx]
		t.Failures++
		t.State, t.Reason = TaskDone, fmt.Sprintf("failed on %d allocations in a row; not moved again (run the job again to retry)", t.Failures)
		c.touchTask(t)
	}
	if js.Stopped {
		for _, t := range js.tasks {
			if t.State != TaskDone {
				t.State, t.Reason = TaskDone, "job stopped"
				c.touchTask(t)
			}
		}
	}
	var blockedWhy string
	for _, p := range res.place {
		t := js.tasks[p.index]
		if blockedWhy != "" {
			// Every task of a job asks for the same thing: once one does not fit, the
			// rest of this pass would not either.
			c.markPending(js, t, blockedWhy, ev)
			continue
		}
		n, victims, why := c.selectNode(js, retry)
		if n == nil {
			if why == "" {
				why = t.Reason
				if why == "" || t.State != TaskPending {
					why = "waiting for room"
				}
			}
			blockedWhy = why
			c.markPending(js, t, why, ev)
			continue
		}
		for _, v := range victims {
			c.setDesired(v, DesiredStop, fmt.Sprintf("preempted by %s[%d]", name, p.index))
			if vj := c.jobs[v.Job]; vj != nil {
				if v.TaskIndex < len(vj.tasks) {
					vt := vj.tasks[v.TaskIndex]
					if vt.AllocID == v.ID {
						vt.State, vt.Reason = TaskPending, "preempted by "+name
						c.touchTask(vt)
					}
				}
				c.pending[v.Job] = true
			}
			ev.Preempted++
		}
		if p.replaces != nil && p.replaces.DesiredStatus == DesiredRun {
			if p.replaces.ClientStatus == ClientFailed {
				t.Failures++
			}
			c.setDesired(p.replaces, DesiredStop, "replaced")
		}
		a := c.newAlloc(js, p.index, n)
		if p.replaces != nil {
			a.Replaces = p.replaces.ID
		}
		c.putAlloc(a)
		c.touchAlloc(a, true)
		t.State, t.AllocID, t.Reason = TaskPlaced, a.ID, ""
		c.touchTask(t)
		ev.Placed++
	}
	if res.blocked > 0 {
		ev.Notes = append(ev.Notes, fmt.Sprintf("%d more tasks to update or move once the replacements run (update.max_parallel %d)",
			res.blocked, js.Update.MaxParallel))
	}
	js.lastEval = ev
	if c.ch != nil {
		c.ch.evals = append(c.ch.evals, ev)
	}
	return ev
}

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
		ID: c.newID(), Job: js.Name, TaskIndex: idx, JobVersion: js.Version, NodeID: n.ID, Band: js.Priority,
		Artifact: js.Artifact, Digest: js.Digest, Resources: js.Resources, Args: js.Args, Env: js.Env,
		Restart: js.Restart, Isolation: js.Isolation, DesiredStatus: DesiredRun, ClientStatus: ClientPending,
		CreatedAt: c.now(), CreateIndex: c.index,
	}
}

// selectNode picks the machine for one more task of js: feasible candidates from
// the free-resource index, ranked; for prod, preemption of batch when nothing fits.
// It returns the reason when there is no machine.
func (c *Cell) selectNode(js *jobState, retry bool) (*nodeState, []*Alloc, string) {
	if js.Priority == BandBatch && !c.batchShareAllows(js.Resources) {
		return nil, nil, fmt.Sprintf("batch share exhausted: batch uses %s of the cell's %s, limit %.0f%%",
			c.batchUsed, c.capacity, c.BatchShare*100)
	}
	var buf [40]*nodeState
	cands := c.candidates(js, buf[:0])
	if len(cands) > 0 {
		best, bestScore := cands[0], c.rank(cands[0], js)
		for _, n := range cands[1:] {
			if s := c.rank(n, js); s > bestScore || s == bestScore && n.slot < best.slot {
				best, bestScore = n, s
			}
		}
		return best, nil, ""
	}
	if retry {
		return nil, nil, ""
	}
	if js.Priority == BandProd {
		if n, victims := c.preemptFor(js); n != nil {
			return n, victims, ""
		}
	}
	return nil, nil, c.explain(js)
}

func (c *Cell) batchShareAllows(r Resources) bool {
	after := c.batchUsed.Add(r)
	return float64(after.CPU) <= c.BatchShare*float64(c.capacity.CPU) &&
		float64(after.Memory) <= c.BatchShare*float64(c.capacity.Memory)
}

// candidates collects up to k feasible machines, walking the free-resource grid
// from the tightest cells that can hold the request outwards (best fit first),
// each cell from a random offset, plus a few machines that hold the artifact.
func (c *Cell) candidates(js *jobState, out []*nodeState) []*nodeState {
	f := &c.free
	g := f.g
	want := min(c.k, cap(out)-12)
	perCell := want
	if js.Spread != "" {
		// The tightest cells hold the machines this job just filled, in few racks:
		// take a couple per cell so the candidates span many machines.
		perCell = 2
	}
	bc, bm := f.q(js.Resources.CPU, f.maxCPU), f.q(js.Resources.Memory, f.maxMem)
	// Rows (cpu buckets) with any machine at or past the memory bucket.
	var live []int
	for i := bc; i < g; i++ {
		if f.rows[i]>>uint(bm) != 0 {
			live = append(live, i)
		}
	}
walk:
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
			start := c.rng.IntN(n)
			taken := 0
			for t := 0; t < n && taken < perCell; t++ {
				ns := c.nodes[cell[(start+t)%n]]
				if js.Resources.CPU <= ns.free.CPU && js.Resources.Memory <= ns.free.Memory && feasible(ns, js) {
					out = append(out, ns)
					taken++
					if len(out) >= want {
						break walk
					}
				}
			}
		}
	}
	if len(out) == 0 {
		return out
	}
	if js.Spread != "" {
		// A few machines from anywhere: most likely in label values the job has
		// few tasks in yet.
		for t := 0; t < 16 && len(out) < cap(out)-4; t++ {
			ns := c.nodes[c.rng.IntN(len(c.nodes))]
			if ns.schedulable() && feasible(ns, js) && !containsNode(out, ns) {
				out = append(out, ns)
			}
		}
	}
	// Machines that already hold the artifact skip a transfer; give a few of them a
	// chance even if they are not among the tightest.
	for _, key := range []string{js.Artifact, "sha256:" + js.Digest} {
		h := c.holders[key]
		for t := 0; t < 2 && len(h) > 0 && len(out) < cap(out); t++ {
			ns := c.nodes[h[c.rng.IntN(len(h))]]
			if feasible(ns, js) && !containsNode(out, ns) {
				out = append(out, ns)
			}
		}
	}
	return out
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
func (c *Cell) preemptFor(js *jobState) (*nodeState, []*Alloc) {
	r := js.Resources
	var best *nodeState
	var bestVictims []*Alloc
	bestCost := 0.0
	viable := 0
	start := 0
	if len(c.nodes) > 0 {
		start = c.rng.IntN(len(c.nodes))
	}
	for t := 0; t < len(c.nodes) && viable < c.k; t++ {
		n := c.nodes[(start+t)%len(c.nodes)]
		if !n.schedulable() || n.batchUsed.CPU == 0 && n.batchUsed.Memory == 0 ||
			!constraintsHold(n, js) || js.DistinctHosts && n.jobCount[js.Name] > 0 {
			continue
		}
		free := n.freeRes()
		if !needFits(r, free.Add(n.batchUsed), n.Capacity) {
			continue
		}
		var batch []*Alloc
		for _, a := range n.live {
			if a.Band == BandBatch {
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

// anyFits reports whether one of the machines could take a task of js now.
func anyFits(nodes map[*nodeState]bool, js *jobState) bool {
	for n := range nodes {
		if n.schedulable() && js.Resources.CPU <= n.free.CPU && js.Resources.Memory <= n.free.Memory {
			return true
		}
	}
	return false
}
