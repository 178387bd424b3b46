package placement

import (
	"fmt"
	"sort"
)

// Reconciliation compares what a job wants (count, version, where it may run) with
// the allocations it has, and says what to stop and which tasks to place. It makes
// no placement decisions itself: those are the scheduler's.

type stopAction struct {
	alloc *Alloc
	desc  string
}

type placeAction struct {
	index    int
	replaces *Alloc // the allocation being replaced, if any
	why      string // new, reschedule, update, migrate
}

type reconcileResult struct {
	stop   []stopAction
	place  []placeAction
	done   []int // tasks that ended for good under their restart policy
	failed []int // tasks that failed on MaxFailures allocations in a row
	// inflight is how many replacements (update or migration) are not running yet,
	// or in a rollout not yet healthy; blocked is how many more wait for them, a
	// few at a time.
	inflight, blocked int
	deploy            *deployChange // the rollout's next state, if it changes
	notes             []string
}

func reconcile(c *Cell, js *jobState) reconcileResult {
	var res reconcileResult
	byIndex := map[int][]*Alloc{}
	for _, a := range js.live {
		byIndex[a.TaskIndex] = append(byIndex[a.TaskIndex], a)
	}
	if js.Stopped {
		for _, a := range sortedAllocs(js.live) {
			res.stop = append(res.stop, stopAction{a, "job stopped"})
		}
		return res
	}
	// Scale down: tasks past the count.
	for idx, list := range byIndex {
		if idx >= js.Count {
			for _, a := range list {
				res.stop = append(res.stop, stopAction{a, fmt.Sprintf("job scaled down to %d", js.Count)})
			}
		}
	}
	var updates, migrations []*Alloc
	same := map[uint64]bool{} // earlier versions with the current spec
	for idx := 0; idx < js.Count; idx++ {
		list := byIndex[idx]
		if len(list) > 1 {
			// Duplicates (a machine came back, or a replacement raced): keep the best.
			sort.Slice(list, func(i, j int) bool { return better(c, list[i], list[j]) })
			for _, a := range list[1:] {
				res.stop = append(res.stop, stopAction{a, "duplicate of " + list[0].ID})
			}
			list = list[:1]
		}
		if len(list) == 1 {
			a := list[0]
			switch {
			case !js.current(a, same):
				updates = append(updates, a)
			case c.byID[a.NodeID] != nil && c.byID[a.NodeID].Drain:
				migrations = append(migrations, a)
			}
			continue
		}
		var t *Task
		if idx < len(js.tasks) {
			t = js.tasks[idx]
		}
		if t != nil && t.State == TaskDone {
			continue
		}
		// No live allocation: a new task, a pending one, or one whose allocation ended.
		var last *Alloc
		if t != nil && t.AllocID != "" {
			last = c.allocs[t.AllocID]
		}
		switch {
		case last == nil:
			res.place = append(res.place, placeAction{index: idx, why: "new"})
		case last.DesiredStatus == DesiredRun && clientTerminal(last.ClientStatus) && finished(last):
			res.done = append(res.done, idx)
		case last.DesiredStatus == DesiredRun && last.ClientStatus == ClientFailed && t != nil && t.Failures+1 >= MaxFailures:
			// A crash loop: moving it again would only churn the cell.
			res.failed = append(res.failed, idx)
		default:
			why := "reschedule"
			if last.DesiredStatus == DesiredStop {
				why = "replace (" + last.DesiredDescription + ")"
			}
			res.place = append(res.place, placeAction{index: idx, replaces: last, why: why})
		}
	}
	// Updates and migrations go a few at a time: the next batch waits until the
	// replacements of the previous one run. A pending replacement of an older
	// version (one the launcher refused, say) is not progress of this rollout:
	// it is itself replaced, or a bad version would block every later one.
	// In a rollout, a replacement is in flight until the node finds it healthy.
	rolling := js.Deployment.active() && js.Deployment.JobVersion == js.Version
	for _, a := range js.live {
		if a.Replaces == "" || a.JobVersion != js.Version {
			continue
		}
		if a.ClientStatus == ClientPending || rolling && a.CreateIndex >= js.Deployment.CreateIndex && a.Healthy == nil {
			res.inflight++
		}
	}
	limit, change, note := rolloutStep(js, same, len(updates))
	res.deploy = change
	if note != "" {
		res.notes = append(res.notes, note)
	}
	budget := js.Update.MaxParallel - res.inflight
	updBudget := min(budget, limit)
	sort.Slice(updates, func(i, j int) bool { return updates[i].TaskIndex < updates[j].TaskIndex })
	sort.Slice(migrations, func(i, j int) bool { return migrations[i].TaskIndex < migrations[j].TaskIndex })
	for _, a := range updates {
		if updBudget <= 0 {
			res.blocked++
			continue
		}
		updBudget--
		budget--
		res.stop = append(res.stop, stopAction{a, fmt.Sprintf("updating to version %d", js.Version)})
		res.place = append(res.place, placeAction{index: a.TaskIndex, replaces: a, why: "update"})
	}
	for _, a := range migrations {
		if budget <= 0 {
			res.blocked++
			continue
		}
		budget--
		res.stop = append(res.stop, stopAction{a, "machine draining"})
		res.place = append(res.place, placeAction{index: a.TaskIndex, replaces: a, why: "migrate"})
	}
	sort.Slice(res.stop, func(i, j int) bool { return res.stop[i].alloc.ID < res.stop[j].alloc.ID })
	sort.Slice(res.place, func(i, j int) bool { return res.place[i].index < res.place[j].index })
	return res
}

// MaxFailures is how many allocations of one task may fail for good (the
// launcher's restarts exhausted) before the scheduler stops moving it; submitting
// the job again resets the count.
const MaxFailures = 5

// finished reports whether an ended allocation's restart policy says the task is done.
func finished(a *Alloc) bool {
	switch a.Restart {
	case RestartNever:
		return true
	case RestartOnFailure:
		return a.ClientStatus == ClientComplete
	}
	return false
}

// better orders duplicates: running over pending, newer version, schedulable
// machine, then the older allocation (it has been running longer).
func better(c *Cell, a, b *Alloc) bool {
	if (a.ClientStatus == ClientRunning) != (b.ClientStatus == ClientRunning) {
		return a.ClientStatus == ClientRunning
	}
	if a.JobVersion != b.JobVersion {
		return a.JobVersion > b.JobVersion
	}
	as, bs := c.byID[a.NodeID], c.byID[b.NodeID]
	if ok1, ok2 := as != nil && as.schedulable(), bs != nil && bs.schedulable(); ok1 != ok2 {
		return ok1
	}
	if a.CreateIndex != b.CreateIndex {
		return a.CreateIndex < b.CreateIndex
	}
	return a.ID < b.ID
}

func sortedAllocs(m map[string]*Alloc) []*Alloc {
	out := make([]*Alloc, 0, len(m))
	for _, a := range m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
