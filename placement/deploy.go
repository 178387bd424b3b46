package placement

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Rollouts, Nomad's way. Every new job version gets a Deployment. Its tasks
// replace the old ones update.max_parallel at a time, and the next batch goes
// only once the last one is healthy: the node says so (Alloc.Healthy) after a
// task has passed its check for min_healthy_time, or says it is not when the
// check fails, the task ends or healthy_deadline passes. With canaries, the
// first update.canary tasks move and the rollout then waits for `ballena job
// promote`. An unhealthy new task fails the rollout; nothing more is replaced,
// and with auto_revert the job goes back to its newest stable version. A
// version's records are kept in the job's History, so that a revert needs no
// new submission and the nodes still hold its artifact.
//
// Deployment records are written copy-on-write: API readers hold the old ones.

func (d *Deployment) active() bool {
	return d != nil && (d.Status == DeployRunning || d.Status == DeployPaused)
}

// newDeployment starts the rollout of j's version.
func (c *Cell) newDeployment(j *Job, canary int, revertedFrom uint64) *Deployment {
	return &Deployment{ID: c.newID(), JobVersion: j.Version, Status: DeployRunning, Canary: canary,
		RevertedFrom: revertedFrom, CreateIndex: c.index, StartedAt: c.now()}
}

// endDeployment returns d ended with status and why (a copy: readers may hold d).
func (c *Cell) endDeployment(d *Deployment, status, why string) *Deployment {
	e := *d
	e.Status, e.Description = status, why
	if status != DeployRunning && status != DeployPaused {
		e.EndedAt = c.now()
	}
	return &e
}

// archive returns the history for the version after old: old itself (its
// rollout cancelled if it was still going) before the versions it kept.
func (c *Cell) archive(old *Job, next uint64) []*Job {
	h := *old
	h.History = nil
	if h.Deployment.active() {
		h.Deployment = c.endDeployment(h.Deployment, DeployCancelled, fmt.Sprintf("superseded by version %d", next))
	}
	out := make([]*Job, 0, min(len(old.History)+1, MaxHistory))
	out = append(out, &h)
	for _, v := range old.History {
		if len(out) == MaxHistory {
			break
		}
		out = append(out, v)
	}
	return out
}

// version finds version v of the job: the current one or one in its history.
func (js *jobState) version(v uint64) *Job {
	if js.Version == v {
		return js.Job
	}
	for _, h := range js.History {
		if h.Version == v {
			return h
		}
	}
	return nil
}

// current reports whether an allocation runs the job's current spec: it was
// made for this version, or for an earlier one with the same spec (a revert
// to a version whose tasks still run leaves those tasks alone).
func (js *jobState) current(a *Alloc, same map[uint64]bool) bool {
	if a.JobVersion == js.Version {
		return true
	}
	ok, seen := same[a.JobVersion]
	if !seen {
		h := js.version(a.JobVersion)
		ok = h != nil && specEqual(h, js.Job) && sameConstraints(h, js.Job)
		same[a.JobVersion] = ok
	}
	return ok
}

// revertJob makes a new version of the job with the spec of version target,
// rolled out without canaries: a revert is the way back to safety.
func (c *Cell) revertJob(js *jobState, target uint64, why string) (*Job, error) {
	from := js.Version
	h := js.version(target)
	switch {
	case h == nil:
		return nil, fmt.Errorf("job %s has no version %d (history keeps the last %d): %w", js.Name, target, MaxHistory, ErrNotFound)
	case target == from:
		return nil, fmt.Errorf("job %s is at version %d already", js.Name, target)
	}
	j := *h
	j.Version, j.CreateIndex, j.SubmittedAt = from+1, js.CreateIndex, c.now()
	j.Stopped, j.Stable = false, false
	j.History = c.archive(js.Job, j.Version)
	j.Deployment = c.newDeployment(&j, 0, from)
	j.Deployment.Description, j.Deployment.RevertedTo = why, target
	nj := c.putJob(&j)
	c.touchJob(nj)
	c.keepAllocsDecodable(nj)
	c.dirty[j.Name] = true
	return &j, nil
}

// promote lets a rollout waiting on its canaries go on.
func (c *Cell) promote(name string) ([]*Evaluation, error) {
	js := c.jobs[name]
	if js == nil {
		return nil, fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	d := js.Deployment
	switch {
	case d == nil || !d.active():
		status := "none"
		if d != nil {
			status = d.Status
		}
		return nil, fmt.Errorf("job %s has no rollout in progress (the last one is %s)", name, status)
	case d.Canary == 0:
		return nil, fmt.Errorf("job %s: the rollout of version %d has no canaries to promote", name, d.JobVersion)
	case d.Promoted:
		return nil, fmt.Errorf("job %s: the rollout of version %d is promoted already", name, d.JobVersion)
	case d.Status != DeployPaused:
		return nil, fmt.Errorf("job %s: the canaries of version %d are not all healthy yet (see `ballena job status %s`); promote once they are", name, d.JobVersion, name)
	}
	nd := c.endDeployment(d, DeployRunning, "promoted: rolling out the rest")
	nd.Promoted = true
	js.Deployment = nd
	c.touchJob(js)
	c.dirty[name] = true
	return c.schedule("job-promote"), nil
}

// revert is `ballena job revert NAME VERSION`.
func (c *Cell) revert(name string, target uint64) ([]*Evaluation, error) {
	js := c.jobs[name]
	if js == nil {
		return nil, fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	if _, err := c.revertJob(js, target, fmt.Sprintf("reverted to version %d", target)); err != nil {
		return nil, err
	}
	return c.schedule("job-revert"), nil
}

// deployChange is what an evaluation says of the job's rollout.
type deployChange struct {
	id      string
	status  string
	why     string
	promote bool   // with status running: the canaries are promoted
	revert  uint64 // with status failed: the stable version to go back to
}

// rolloutStep reads the job's rollout against its allocations: how many
// updates may go now, and whether the rollout ends (or pauses). updates is
// how many tasks still run an older spec.
func rolloutStep(js *jobState, same map[uint64]bool, updates int) (budget int, ch *deployChange, note string) {
	d := js.Deployment
	budget = js.Update.MaxParallel
	if d == nil || d.JobVersion != js.Version {
		return budget, nil, ""
	}
	if d.Status == DeployFailed {
		return 0, nil, fmt.Sprintf("the rollout of version %d failed (%s): no more tasks are replaced; submit a fixed version or `ballena job revert`", d.JobVersion, d.Description)
	}
	if !d.active() {
		return budget, nil, ""
	}
	// Replacements made by this rollout, and how they fare.
	var moved, waiting int
	var bad *Alloc
	for _, a := range js.allocs {
		if a.JobVersion != js.Version || a.CreateIndex < d.CreateIndex || a.DesiredStatus != DesiredRun {
			continue
		}
		if a.Healthy != nil && !*a.Healthy || a.Healthy == nil && a.ClientStatus == ClientFailed {
			if bad == nil || a.ID < bad.ID { // the same one on every server
				bad = a
			}
			continue
		}
		if a.Replaces != "" {
			moved++
		}
		if a.Healthy == nil && a.live() {
			waiting++
		}
	}
	if bad != nil {
		why := fmt.Sprintf("task %s on %s is unhealthy", bad.Name(), ShortID(bad.NodeID))
		if bad.Message != "" {
			why += ": " + bad.Message
		}
		ch = &deployChange{id: d.ID, status: DeployFailed, why: why}
		if js.Update.AutoRevert {
			for _, h := range js.History {
				if h.Stable && h.Version < js.Version {
					ch.revert = h.Version
					break
				}
			}
		}
		return 0, ch, ""
	}
	if d.Canary > 0 && !d.Promoted && (moved > 0 || updates > 0) {
		want := min(d.Canary, moved+updates)
		if moved >= want {
			if waiting == 0 && d.Status == DeployRunning {
				if js.Update.AutoPromote {
					return 0, &deployChange{id: d.ID, status: DeployRunning, promote: true,
						why: fmt.Sprintf("%d canaries healthy; promoted (auto_promote)", moved)}, ""
				}
				return 0, &deployChange{id: d.ID, status: DeployPaused,
					why: fmt.Sprintf("%d canaries healthy; `ballena job promote %s` rolls out the rest", moved, js.Name)}, ""
			}
			return 0, nil, fmt.Sprintf("%d more tasks to update once the canaries are healthy and promoted", updates)
		}
		budget = min(budget, want-moved)
	}
	if updates == 0 && waiting == 0 && d.Status == DeployRunning && allHealthy(js, same) {
		return budget, &deployChange{id: d.ID, status: DeploySuccessful,
			why: fmt.Sprintf("%d tasks of version %d healthy", js.Count, js.Version)}, ""
	}
	return budget, nil, ""
}

// allHealthy reports whether every task that should run has a live allocation
// of the current spec that the node found healthy.
func allHealthy(js *jobState, same map[uint64]bool) bool {
	n := 0
	for _, a := range js.live {
		if !js.current(a, same) || a.Healthy == nil || !*a.Healthy {
			return false
		}
		n++
	}
	done := 0
	for _, t := range js.tasks {
		if t.State == TaskDone {
			done++
		}
	}
	return n+done >= js.Count
}

// applyDeploy records an evaluation's verdict on the rollout it read; a
// failed one with auto_revert goes back to the stable version.
func (c *Cell) applyDeploy(js *jobState, ch *deployChange, ev *Evaluation) {
	d := js.Deployment
	if ch == nil || d == nil || d.ID != ch.id || !d.active() || d.Status == ch.status && !ch.promote {
		return
	}
	js.Deployment = c.endDeployment(d, ch.status, ch.why)
	if ch.promote {
		js.Deployment.Promoted = true
		c.dirty[js.Name] = true // the rest may go now
	}
	if ch.status == DeploySuccessful {
		js.Stable = true
	}
	c.touchJob(js)
	ev.Notes = append(ev.Notes, fmt.Sprintf("rollout of version %d %s: %s", d.JobVersion, js.Deployment.Status, ch.why))
	if ch.status != DeployFailed || !js.Update.AutoRevert {
		return
	}
	if ch.revert == 0 {
		ev.Notes = append(ev.Notes, "auto_revert: no earlier version of this job rolled out successfully; nothing to go back to")
		return
	}
	j, err := c.revertJob(js, ch.revert, fmt.Sprintf("auto_revert: version %d failed; back to version %d", d.JobVersion, ch.revert))
	if err != nil {
		ev.Notes = append(ev.Notes, "auto_revert: "+err.Error())
		return
	}
	j.Deployment.AutoRevert = true
	ev.Notes = append(ev.Notes, fmt.Sprintf("auto_revert: back to version %d as version %d", ch.revert, d.JobVersion+1))
}

// lateRollouts names the jobs whose rollout has a new task past its
// healthy_deadline without a verdict (the node never started it, say, because
// it refuses the release): the leader's sweep fails them (failLate).
func (c *Cell) lateRollouts() []string {
	var out []string
	for name, js := range c.jobs {
		if len(c.lateAllocs(js)) > 0 {
			out = append(out, name)
		}
	}
	return out
}

func (c *Cell) lateAllocs(js *jobState) []*Alloc {
	d := js.Deployment
	if !d.active() || d.JobVersion != js.Version {
		return nil
	}
	now := c.now()
	var late []*Alloc
	for _, a := range js.live {
		if a.JobVersion == js.Version && a.CreateIndex >= d.CreateIndex && a.Healthy == nil &&
			a.HealthyDeadline > 0 && now.Sub(a.CreatedAt) > a.HealthyDeadline {
			late = append(late, a)
		}
	}
	return late
}

// failLate gives the server's own unhealthy verdict to new tasks past their
// healthy_deadline (counted from placement, so it includes the fetch), which
// fails their rollouts on the next evaluation.
func (c *Cell) failLate() []string {
	var names []string
	for _, name := range slices.Sorted(maps.Keys(c.jobs)) {
		js := c.jobs[name]
		for _, a := range c.lateAllocs(js) {
			v := false
			a.Healthy = &v
			why := fmt.Sprintf("not healthy within healthy_deadline (%s) of its placement", a.HealthyDeadline)
			if a.Message != "" {
				why += "; the node says: " + a.Message
			} else {
				why += "; the node reports it " + a.ClientStatus
			}
			a.Message = why
			c.touchAlloc(a, false)
			c.dirty[name] = true
			names = append(names, a.Name())
		}
	}
	return names
}

// Rollout is a job's current rollout with its tasks counted, for `job status`.
type Rollout struct {
	Deployment
	Desired   int `json:"desired"`
	Placed    int `json:"placed"` // live tasks of this version
	Healthy   int `json:"healthy"`
	Unhealthy int `json:"unhealthy"`
}

func (c *Cell) rollout(js *jobState) *Rollout {
	d := js.Deployment
	if d == nil {
		return nil
	}
	r := &Rollout{Deployment: *d, Desired: js.Count}
	same := map[uint64]bool{}
	for _, a := range js.live {
		if d.JobVersion != js.Version || !js.current(a, same) {
			continue
		}
		r.Placed++
		if a.Healthy != nil {
			if *a.Healthy {
				r.Healthy++
			} else {
				r.Unhealthy++
			}
		}
	}
	return r
}

// VersionInfo is one line of `ballena job history`.
type VersionInfo struct {
	Version     uint64      `json:"version"`
	Artifact    string      `json:"artifact"`
	Digest      string      `json:"digest,omitempty"`
	Count       int         `json:"count"`
	SubmittedAt string      `json:"submitted_at"`
	Stable      bool        `json:"stable"`
	Current     bool        `json:"current"`
	Deployment  *Deployment `json:"deployment,omitempty"`
}

func (c *Cell) history(name string) ([]VersionInfo, error) {
	js := c.jobs[name]
	if js == nil {
		return nil, fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	out := []VersionInfo{}
	for i, j := range slices.Concat([]*Job{js.Job}, js.History) {
		out = append(out, VersionInfo{Version: j.Version, Artifact: j.Artifact, Digest: j.Digest, Count: j.Count,
			SubmittedAt: j.SubmittedAt.UTC().Format("2006-01-02T15:04:05Z"), Stable: j.Stable, Current: i == 0, Deployment: j.Deployment})
	}
	return out, nil
}

// deploySummary is the rollout's state in one line, for events.
func deploySummary(j *Job) string {
	d := j.Deployment
	if d == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "rollout of v%d %s", d.JobVersion, d.Status)
	if d.Description != "" {
		b.WriteString(": " + d.Description)
	}
	return b.String()
}
