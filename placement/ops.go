package placement

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"
)

// Errors the API maps to HTTP statuses.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict: the record changed since it was read")
)

// submitJob registers or updates a job and schedules it. If expectIndex is not
// nil, the job's current ModifyIndex must equal it (0: the job must not exist):
// concurrent editors get ErrConflict instead of losing each other's update.
func (c *Cell) submitJob(j *Job, expectIndex *uint64) ([]*Evaluation, error) {
	if err := j.Validate(); err != nil {
		return nil, err
	}
	old := c.jobs[j.Name]
	if expectIndex != nil {
		cur := uint64(0)
		if old != nil {
			cur = old.ModifyIndex
		}
		if cur != *expectIndex {
			return nil, fmt.Errorf("job %s is at index %d, not %d: %w", j.Name, cur, *expectIndex, ErrConflict)
		}
	}
	j.SubmittedAt = c.now()
	j.Stable, j.Deployment, j.History = false, nil, nil // the server's to set
	if old == nil {
		j.Version, j.CreateIndex = 1, c.index
		j.Deployment = c.newDeployment(j, 0, 0)
	} else {
		j.Version, j.CreateIndex = old.Version, old.CreateIndex
		j.Stable, j.Deployment, j.History = old.Stable, old.Deployment, old.History
		switch {
		case !specEqual(old.Job, j) || !sameConstraints(old.Job, j):
			j.Version++
			j.Stable = false
			j.History = c.archive(old.Job, j.Version)
			j.Deployment = c.newDeployment(j, j.Update.Canary, 0)
		case old.Stopped:
			j.Deployment = c.newDeployment(j, 0, 0) // its tasks start afresh
		}
		for _, t := range old.tasks {
			switch {
			case old.Stopped:
				// A stopped job run again starts its tasks afresh.
				t.State, t.AllocID, t.Reason, t.Failures = TaskPending, "", "", 0
				c.touchTask(t)
			case t.Failures > 0:
				// Run again: crash-looped tasks get another chance.
				if t.State == TaskDone && t.Reason != "" {
					t.State, t.AllocID, t.Reason = TaskPending, "", ""
				}
				t.Failures = 0
				c.touchTask(t)
			}
		}
	}
	j.Stopped = false
	js := c.putJob(j)
	c.touchJob(js)
	c.keepAllocsDecodable(js)
	c.dirty[j.Name] = true
	return c.schedule("job-register"), nil
}

func sameConstraints(a, b *Job) bool {
	return a.DistinctHosts == b.DistinctHosts && fmt.Sprint(a.Constraints) == fmt.Sprint(b.Constraints)
}

func (c *Cell) stopJob(name string) ([]*Evaluation, error) {
	js := c.jobs[name]
	if js == nil {
		return nil, fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	js.Stopped = true
	if js.Deployment.active() {
		js.Deployment = c.endDeployment(js.Deployment, DeployCancelled, "job stopped")
	}
	c.minReqValid = false
	c.touchJob(js)
	c.dirty[name] = true
	return c.schedule("job-stop"), nil
}

// registerNode adds a machine or brings a known one back.
func (c *Cell) registerNode(id string, reg *NodeRegistration) ([]*Evaluation, []string) {
	now := c.now()
	reg.Artifacts = normalizeArtifacts(reg.Artifacts)
	n := c.byID[id]
	if n == nil {
		n = c.putNode(&Node{ID: id, PublicKey: reg.PublicKey, Addrs: reg.Addrs, Labels: reg.Labels,
			Capacity: reg.Capacity, Artifacts: reg.Artifacts, Status: NodeReady,
			RegisteredAt: now, LastSeen: now, CreateIndex: c.index})
		c.touchNode(n)
	} else {
		c.updateNode(n, func(nd *Node) {
			nd.PublicKey, nd.Addrs, nd.Labels, nd.Capacity, nd.Artifacts = reg.PublicKey, reg.Addrs, reg.Labels, reg.Capacity, reg.Artifacts
			nd.Status, nd.LastSeen = NodeReady, now
		})
	}
	stop := c.applyTaskStates(n, reg.Tasks)
	// Allocations already here count again, since their machine is back.
	return c.schedule("node-register"), stop
}

// heartbeat records that a machine is alive, what it runs and what it holds.
func (c *Cell) heartbeat(id string, hb *Heartbeat) ([]*Evaluation, []string, error) {
	n := c.byID[id]
	if n == nil {
		return nil, nil, fmt.Errorf("node %s is not registered: %w", id, ErrNotFound)
	}
	n.LastSeen = c.now() // not persisted: after a restart every machine gets a fresh TTL
	if hb.Artifacts != nil {
		hb.Artifacts = normalizeArtifacts(hb.Artifacts)
	}
	if n.Status != NodeReady || !slices.Equal(n.Artifacts, hb.Artifacts) && hb.Artifacts != nil {
		c.updateNode(n, func(nd *Node) {
			nd.Status = NodeReady
			if hb.Artifacts != nil {
				nd.Artifacts = hb.Artifacts
			}
		})
	}
	stop := c.applyTaskStates(n, hb.Tasks)
	return c.schedule("node-heartbeat"), stop, nil
}

// applyTaskStates records a node's reports and returns what it must kill.
func (c *Cell) applyTaskStates(n *nodeState, states []TaskState) []string {
	var stop []string
	for _, st := range states {
		a := c.allocs[st.AllocID]
		if a == nil || a.NodeID != n.ID {
			if !clientTerminal(st.State) {
				stop = append(stop, st.AllocID)
			}
			continue
		}
		c.reportTask(a, st)
		if a.DesiredStatus == DesiredStop && !clientTerminal(st.State) {
			stop = append(stop, st.AllocID)
		}
	}
	sort.Strings(stop)
	return stop
}

func (c *Cell) reportTask(a *Alloc, st TaskState) {
	wasPending := a.ClientStatus == ClientPending
	if !c.setClient(a, st) {
		return
	}
	if wasPending && st.State == ClientRunning && a.Replaces != "" {
		// A replacement runs: a rolling update or drain may take its next step.
		c.dirty[a.Job] = true
	}
}

// reportTaskState is one task's report outside a heartbeat.
func (c *Cell) reportTaskState(nodeID string, st TaskState) ([]*Evaluation, error) {
	a := c.allocs[st.AllocID]
	if a == nil || a.NodeID != nodeID {
		return nil, fmt.Errorf("allocation %s on node %s: %w", st.AllocID, nodeID, ErrNotFound)
	}
	c.reportTask(a, st)
	return c.schedule("task-state"), nil
}

// setDrain turns draining on or off; tasks move off a draining machine a few at a
// time per job (update.max_parallel).
func (c *Cell) setDrain(id string, enable bool) ([]*Evaluation, error) {
	n := c.byID[id]
	if n == nil {
		return nil, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	c.updateNode(n, func(nd *Node) { nd.Drain = enable })
	if enable {
		for job := range n.jobCount {
			c.dirty[job] = true
		}
	}
	return c.schedule("node-drain"), nil
}

// expired lists the ready machines that missed heartbeats for ttl.
func (c *Cell) expired(ttl time.Duration) []string {
	now := c.now()
	var ids []string
	for _, n := range c.nodes {
		if n.Status == NodeReady && now.Sub(n.LastSeen) > ttl {
			ids = append(ids, n.ID)
		}
	}
	return ids
}

// markDown marks a machine that is still silent as down and moves its tasks
// elsewhere. When it comes back, its allocations say stop.
func (c *Cell) markDown(id string, ttl time.Duration) []*Evaluation {
	n := c.byID[id]
	if n == nil || n.Status != NodeReady || c.now().Sub(n.LastSeen) <= ttl {
		return nil
	}
	c.updateNode(n, func(nd *Node) { nd.Status = NodeDown })
	for _, a := range sortedAllocs(n.live) {
		c.setDesired(a, DesiredStop, "machine down, task lost")
		c.dirty[a.Job] = true
	}
	return c.schedule("node-down")
}

// revokeNode takes a machine's credentials away: it is down for good (until an
// admin registers a new key), and its tasks move elsewhere.
func (c *Cell) revokeNode(id string) ([]*Evaluation, error) {
	n := c.byID[id]
	if n == nil {
		return nil, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	c.updateNode(n, func(nd *Node) { nd.Revoked, nd.Status = true, NodeDown })
	for _, a := range sortedAllocs(n.live) {
		c.setDesired(a, DesiredStop, "machine's credentials revoked")
		c.dirty[a.Job] = true
	}
	return c.schedule("node-revoke"), nil
}

func (c *Cell) jobStatus(name string) (*JobStatus, error) {
	js := c.jobs[name]
	if js == nil {
		return nil, fmt.Errorf("job %s: %w", name, ErrNotFound)
	}
	st := &JobStatus{Job: js.Job, Summary: map[string]int{}, LastEval: js.lastEval, Rollout: c.rollout(js)}
	for _, t := range js.tasks {
		ts := TaskStatus{Index: t.Index, State: t.State, Reason: t.Reason}
		if a := c.allocs[t.AllocID]; a != nil {
			ts.AllocID, ts.NodeID, ts.Version, ts.Desired, ts.ClientStatus = a.ID, a.NodeID, a.JobVersion, a.DesiredStatus, a.ClientStatus
			ts.ExitCode, ts.OOMKilled, ts.Message = a.ExitCode, a.OOMKilled, a.Message
			ts.Health, ts.Healthy = a.Health, a.Healthy
			if a.DesiredStatus == DesiredStop && ts.Reason == "" {
				ts.Reason = a.DesiredDescription
			}
		}
		switch {
		case t.State == TaskPlaced && ts.ClientStatus == ClientPending:
			st.Summary["starting"]++
		case t.State == TaskPlaced && ts.ClientStatus != "":
			st.Summary[ts.ClientStatus]++
		case t.State == TaskPending:
			st.Summary["waiting"]++
		default:
			st.Summary[t.State]++
		}
		st.Tasks = append(st.Tasks, ts)
	}
	return st, nil
}

func (c *Cell) nodeInfos() []NodeInfo {
	out := make([]NodeInfo, 0, len(c.nodes))
	for _, n := range c.nodes {
		info := NodeInfo{Node: *n.Node, Allocated: n.used, Tasks: len(n.live)}
		info.PublicKey = nil
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (c *Cell) nodeAllocs(id string) (*AllocationList, error) {
	n := c.byID[id]
	if n == nil {
		return nil, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	l := &AllocationList{Index: n.allocIndex, Allocations: make([]*Alloc, 0, len(n.assigned))}
	for _, a := range sortedAllocs(n.assigned) {
		cp := *a
		l.Allocations = append(l.Allocations, &cp)
	}
	return l, nil
}

// normalizeArtifacts sorts and dedupes a held-artifact list, so that a launcher
// listing the same things in another order changes nothing.
func normalizeArtifacts(list []string) []string {
	out := slices.Clone(list)
	slices.Sort(out)
	return slices.Compact(out)
}
