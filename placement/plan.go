package placement

import (
	"fmt"
	"math/rand/v2"
)

// Scheduling is split the way Nomad splits it. planJob reads the cell and says
// what one evaluation of a job would do: stop these allocations, put these
// tasks on these machines, evict these batch tasks. It writes nothing, so the
// server's workers run it concurrently under a read lock. applyPlan is the plan
// applier's half: it checks each placement against the latest state (another
// plan may have taken the room since), applies what still fits, and reports
// what it refused so that the worker plans those tasks again.

// planState is one plan's view of the cell: what the cell holds, plus what the
// plan itself has decided so far. A zero overlay (nil maps) is the cell as is.
type planState struct {
	c   *Cell
	js  *jobState
	rng *rand.Rand

	// touched has a bit per machine slot the plan changed: the maps below
	// hold only those, and most machines a search looks at are not, so the
	// bit spares a map lookup.
	touched []uint64
	used    map[*nodeState]Resources // added by the plan (negative: freed)
	batch   map[*nodeState]Resources
	tasks   map[*nodeState]int // the job's tasks added per machine
	spread  map[string]int     // the job's tasks added per spread label value
	stopped map[*Alloc]bool
	live    int // the job's live tasks added
	batchUp Resources
	freed   bool // the plan stopped something
}

func newPlanState(c *Cell, js *jobState, rng *rand.Rand) *planState {
	return &planState{c: c, js: js, rng: rng, used: map[*nodeState]Resources{}, batch: map[*nodeState]Resources{},
		tasks: map[*nodeState]int{}, spread: map[string]int{}, stopped: map[*Alloc]bool{}}
}

func (p *planState) isTouched(n *nodeState) bool {
	w := n.slot / 64
	return w < len(p.touched) && p.touched[w]&(1<<(n.slot%64)) != 0
}

func (p *planState) touch(n *nodeState) {
	w := n.slot / 64
	if w >= len(p.touched) {
		p.touched = append(p.touched, make([]uint64, max(w+1, len(p.c.nodes)/64+1)-len(p.touched))...)
	}
	p.touched[w] |= 1 << (n.slot % 64)
}

func (p *planState) freeOn(n *nodeState) Resources {
	if !p.isTouched(n) {
		return n.free
	}
	return n.free.Sub(p.used[n])
}

func (p *planState) batchOn(n *nodeState) Resources {
	if !p.isTouched(n) {
		return n.batchUsed
	}
	return n.batchUsed.Add(p.batch[n])
}

func (p *planState) jobTasksOn(n *nodeState) int {
	if !p.isTouched(n) {
		return n.jobCount[p.js.Name]
	}
	return n.jobCount[p.js.Name] + p.tasks[n]
}

func (p *planState) spreadOf(v string) int { return p.js.spread[v] + p.spread[v] }

func (p *planState) liveTasks() int { return len(p.js.live) + p.live }

// take records that the plan puts one more task of the job on n.
func (p *planState) take(n *nodeState) {
	r := p.js.Resources
	p.touch(n)
	p.used[n] = p.used[n].Add(r)
	p.tasks[n]++
	p.live++
	if p.js.Priority == BandBatch {
		p.batch[n] = p.batch[n].Add(r)
		p.batchUp = p.batchUp.Add(r)
	}
	if p.js.Spread != "" {
		p.spread[n.Labels[p.js.Spread]]++
	}
}

// release records that the plan stops a live allocation.
func (p *planState) release(a *Alloc) {
	if p.stopped[a] || !a.live() {
		return
	}
	p.stopped[a] = true
	p.freed = true
	n := p.c.byID[a.NodeID]
	if n == nil {
		return
	}
	p.touch(n)
	p.used[n] = p.used[n].Sub(a.Resources)
	if a.Band == BandBatch {
		p.batch[n] = p.batch[n].Sub(a.Resources)
		p.batchUp = p.batchUp.Sub(a.Resources)
	}
	if a.Job == p.js.Name {
		p.tasks[n]--
		p.live--
		if p.js.Spread != "" {
			p.spread[n.Labels[p.js.Spread]]--
		}
	}
}

// fits reports whether n can take one more task of the job as the plan sees it.
func (p *planState) fits(n *nodeState) bool {
	r := p.js.Resources
	if !p.freed && (r.CPU > n.free.CPU || r.Memory > n.free.Memory) {
		// The plan only takes room until it frees some: what does not fit the
		// machine as it is does not fit the plan's view either. Most machines a
		// search looks at end here, without a map lookup.
		return false
	}
	free := p.freeOn(n)
	return p.js.Resources.CPU <= free.CPU && p.js.Resources.Memory <= free.Memory && feasible(p, n)
}

// plan is what one evaluation of a job decided, against the state it read.
type plan struct {
	job     string
	trigger string
	evalID  string // the pending evaluation this plan carries out, if recorded
	final   bool   // the last round: what no longer fits waits, instead of coming back

	// What the plan read: a plan for a job that changed since is stale.
	origin  string // the server's working state (empty outside a server)
	version uint64
	modify  uint64
	stopped bool
	gone    bool

	stops   []stopAction
	places  []placement
	pending []PendingTask
	done    []int
	failed  []int
	notes   []string
	deploy  *deployChange
}

// placement is one task put on one machine, evicting victims (batch, for prod).
type placement struct {
	index    int
	node     *nodeState
	replaces *Alloc
	victims  []*Alloc
	was      string // the task's allocation when planned ("" for a new task)
}

// planResult is what the applier did with a plan.
type planResult struct {
	ev      *Evaluation
	refused int  // placements that no longer fit, to plan again
	stale   bool // the job changed since the plan: none of it was applied
}

// planJob reconciles one job and chooses machines for what it needs, reading
// the cell only. A retry (room may have appeared for a waiting job) neither
// preempts nor re-diagnoses: prod jobs are retried before batch ones, so freed
// room goes to prod first anyway, and a full diagnosis per waiting job per
// change would cost a scan of the cell each time.
func (c *Cell) planJob(name, trigger string, retry bool, rng *rand.Rand) *plan {
	pl := &plan{job: name, trigger: trigger}
	js := c.jobs[name]
	if js == nil {
		pl.gone = true
		return pl
	}
	pl.version, pl.modify, pl.stopped = js.Version, js.ModifyIndex, js.Stopped
	res := reconcile(c, js)
	p := newPlanState(c, js, rng)
	for _, s := range res.stop {
		p.release(s.alloc)
	}
	pl.stops, pl.done, pl.failed, pl.deploy = res.stop, res.done, res.failed, res.deploy
	pl.notes = append(pl.notes, res.notes...)
	if res.blocked > 0 && len(res.notes) == 0 {
		pl.notes = append(pl.notes, fmt.Sprintf("%d more tasks to update or move once the replacements run (and, in a rollout, are healthy; update.max_parallel %d)",
			res.blocked, js.Update.MaxParallel))
	}
	var blockedWhy string
	for _, pa := range res.place {
		if blockedWhy != "" {
			// Every task of a job asks for the same thing: once one does not fit, the
			// rest of this pass would not either.
			pl.pending = append(pl.pending, PendingTask{Index: pa.index, Reason: blockedWhy})
			continue
		}
		n, victims, why := p.selectNode(retry)
		if n == nil {
			if why == "" {
				why = "waiting for room"
				if pa.index < len(js.tasks) {
					if t := js.tasks[pa.index]; t.State == TaskPending && t.Reason != "" {
						why = t.Reason
					}
				}
			}
			blockedWhy = why
			pl.pending = append(pl.pending, PendingTask{Index: pa.index, Reason: why})
			continue
		}
		for _, v := range victims {
			p.release(v)
		}
		if pa.replaces != nil {
			p.release(pa.replaces)
		}
		p.take(n)
		was := ""
		if pa.index < len(js.tasks) {
			was = js.tasks[pa.index].AllocID
		}
		pl.places = append(pl.places, placement{index: pa.index, node: n, replaces: pa.replaces, victims: victims, was: was})
	}
	return pl
}

// applyPlan applies the part of a plan that still holds against the cell as it
// is now, recording an Evaluation. Placements whose machine lost the room, or
// whose task moved on, are refused and counted; a plan for a job that changed
// since is refused whole.
func (c *Cell) applyPlan(pl *plan) planResult {
	id := pl.evalID
	if id == "" {
		id = c.newID()
	}
	ev := &Evaluation{ID: id, Job: pl.job, Trigger: pl.trigger, Index: c.index, Time: c.now(), Status: EvalComplete}
	js := c.jobs[pl.job]
	if js == nil {
		return planResult{ev: ev, stale: !pl.gone}
	}
	if pl.gone || js.Version != pl.version || js.ModifyIndex != pl.modify || js.Stopped != pl.stopped {
		return planResult{ev: ev, stale: true}
	}
	delete(c.pending, pl.job)
	for _, s := range pl.stops {
		if c.allocs[s.alloc.ID] == s.alloc {
			c.setDesired(s.alloc, DesiredStop, s.desc)
			ev.Stopped++
		}
	}
	// Tasks past the count go away; the plan stopped their allocations above.
	if !js.Stopped && len(js.tasks) > js.Count {
		for _, t := range js.tasks[js.Count:] {
			if c.ch != nil {
				c.ch.tasks[taskKey(t.Job, t.Index)] = nil
			}
		}
		js.tasks = js.tasks[:js.Count]
	}
	for len(js.tasks) < js.Count && !js.Stopped {
		t := &Task{Job: pl.job, Index: len(js.tasks), State: TaskPending}
		js.tasks = append(js.tasks, t)
		c.touchTask(t)
	}
	for _, idx := range pl.done {
		t := js.tasks[idx]
		t.State, t.Reason = TaskDone, ""
		c.touchTask(t)
	}
	for _, idx := range pl.failed {
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
	refused := 0
	for _, pp := range pl.places {
		if !c.stillFits(js, pp) {
			if pl.final {
				c.markPending(js, js.tasks[pp.index], "the machine chosen for it filled up before the plan committed; waiting for room", ev)
				continue
			}
			refused++
			continue
		}
		t := js.tasks[pp.index]
		for _, v := range pp.victims {
			c.setDesired(v, DesiredStop, fmt.Sprintf("preempted by %s[%d]", pl.job, pp.index))
			if vj := c.jobs[v.Job]; vj != nil {
				if v.TaskIndex < len(vj.tasks) {
					vt := vj.tasks[v.TaskIndex]
					if vt.AllocID == v.ID {
						vt.State, vt.Reason = TaskPending, "preempted by "+pl.job
						c.touchTask(vt)
					}
				}
				c.pending[v.Job] = true
			}
			ev.Preempted++
		}
		if pp.replaces != nil && pp.replaces.DesiredStatus == DesiredRun {
			if pp.replaces.ClientStatus == ClientFailed {
				t.Failures++
			}
			c.setDesired(pp.replaces, DesiredStop, "replaced")
		}
		a := c.newAlloc(js, pp.index, pp.node)
		if pp.replaces != nil {
			a.Replaces = pp.replaces.ID
		}
		c.putAlloc(a)
		c.touchAlloc(a, true)
		t.State, t.AllocID, t.Reason = TaskPlaced, a.ID, ""
		c.touchTask(t)
		ev.Placed++
	}
	for _, pt := range pl.pending {
		c.markPending(js, js.tasks[pt.Index], pt.Reason, ev)
	}
	ev.Notes = append(ev.Notes, pl.notes...)
	c.applyDeploy(js, pl.deploy, ev)
	if refused > 0 {
		// Planned again by the worker; until then the job counts as waiting, so that
		// room appearing elsewhere also brings it back.
		c.pending[pl.job] = true
		ev.Notes = append(ev.Notes, fmt.Sprintf("%d placements refused by the plan applier: their machines changed since the plan", refused))
	}
	// A newer request recorded since this plan was made stays the job's record
	// until its own plan commits.
	// An evaluation with refused placements is not done: its worker plans again,
	// and the record stays pending until then.
	if last := js.lastEval; refused == 0 && (last == nil || last.Status != EvalPending || last.ID == ev.ID) {
		js.lastEval = ev
		if c.ch != nil {
			c.ch.evals = append(c.ch.evals, ev)
		}
	}
	return planResult{ev: ev, refused: refused}
}

// stillFits checks one placement of a plan against the cell as it is now: the
// task still waits for exactly this, the victims still run there, and the
// machine still has the room and passes every check.
func (c *Cell) stillFits(js *jobState, pp placement) bool {
	if pp.index >= len(js.tasks) {
		return false
	}
	if t := js.tasks[pp.index]; t.State == TaskDone || t.AllocID != pp.was {
		return false
	}
	n := pp.node
	if c.byID[n.ID] != n || !n.schedulable() {
		return false
	}
	p := &planState{c: c, js: js}
	if len(pp.victims) > 0 {
		p = newPlanState(c, js, nil)
		for _, v := range pp.victims {
			if c.allocs[v.ID] != v || !v.live() || v.NodeID != n.ID || v.Band != BandBatch {
				return false
			}
			p.release(v)
		}
	}
	if js.Priority == BandBatch && !p.batchShareAllows() {
		return false
	}
	return p.fits(n)
}

// evaluateJob plans and applies at once: the serial scheduler, used where one
// goroutine owns the cell (tests, the in-memory benchmark). The plan was made
// on the very state it is applied to, so nothing is refused.
func (c *Cell) evaluateJob(name, trigger string, retry bool) *Evaluation {
	delete(c.dirty, name)
	c.refreshMinRequest()
	pl := c.planJob(name, trigger, retry, c.rng)
	if js := c.jobs[name]; js != nil && js.lastEval != nil && js.lastEval.Status == EvalPending {
		pl.evalID = js.lastEval.ID
	}
	return c.applyPlan(pl).ev
}

// evaluate reconciles one job and places what it needs.
func (c *Cell) evaluate(name, trigger string) *Evaluation {
	return c.evaluateJob(name, trigger, false)
}
