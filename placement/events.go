package placement

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The events stream: every committed Raft entry passes through fsm.ApplyBatch on
// every server of the cell, which hands its operations to the server's eventHub
// (publish). Publishing costs one atomic load when nobody listens, and a slice
// append per subscriber otherwise: each subscriber decodes the records it was
// handed in its own goroutine (the SSE handler), never under the cell's locks.
// There is no history: a stream starts at the state of the moment it subscribed.

// Event types.
const (
	EventJob     = "job"     // a job registered, updated, stopped or removed
	EventTask    = "task"    // a task placed, waiting for room, or done
	EventAlloc   = "alloc"   // an allocation's state on its machine (pending, running, complete, failed) or desired state
	EventNode    = "node"    // a machine registered, went down or ready, drained or was revoked
	EventRelease = "release" // a machine started or stopped holding a release
	// EventLost tells a subscriber that it fell too far behind: the stream ends
	// and it should read the current state again.
	EventLost = "lost"
)

// Event is one change to the cell, as `ballena events` and the web UI see it.
type Event struct {
	Index   uint64    `json:"index"` // the committed operation that made the change
	Time    time.Time `json:"time"`  // when this server applied it
	Type    string    `json:"type"`
	Job     string    `json:"job,omitempty"`
	Node    string    `json:"node,omitempty"`
	Key     string    `json:"key"`     // job name, job/index, allocation ID, node ID, or ref and node
	Summary string    `json:"summary"` // one line for people
	// Record is the changed record as the cell stores it (a Job, Task, Alloc or
	// Node; for a release, {"artifact", "held"}); null when it was removed.
	Record json.RawMessage `json:"record"`
}

// maxQueuedOps bounds what a subscriber may have waiting; beyond it the
// subscriber is dropped with a "lost" event instead of holding memory.
const maxQueuedOps = 1 << 16

// maxSubscribers bounds concurrent streams per server.
const maxSubscribers = 256

type subscriber struct {
	job string // only this job's events, if set

	mu     sync.Mutex
	queue  []*op
	lost   bool
	closed bool
	wake   chan struct{} // capacity 1

	arts map[string][]string // node ID -> held artifacts, for release events (subscriber goroutine only)
	// specs holds the job versions seen, to fill normalized allocation records
	// in (records.go); subscriber goroutine only.
	specs map[string][]*Job
}

// learn records a job's versions (current and history) for spec lookups.
func (sub *subscriber) learn(j *Job) {
	have := sub.specs[j.Name]
	for _, v := range append([]*Job{j}, j.History...) {
		found := false
		for i, h := range have {
			if h.Version == v.Version {
				have[i], found = v, true
				break
			}
		}
		if !found {
			have = append(have, v)
		}
	}
	sub.specs[j.Name] = have
}

func (sub *subscriber) spec(job string, v uint64) *Job {
	for _, h := range sub.specs[job] {
		if h.Version == v {
			return h
		}
	}
	return nil
}

// eventHub fans committed operations out to subscribers. Its zero value is ready.
type eventHub struct {
	n    atomic.Int32
	mu   sync.Mutex
	subs map[*subscriber]struct{}

	evMu  sync.Mutex
	evals map[string]*evalRing // job -> its recent evaluations
}

// evalRing holds a job's last recentEvals evaluations.
type evalRing struct {
	buf [recentEvals]json.RawMessage
	ids [recentEvals]string
	n   int // evaluations ever recorded; the newest is buf[(n-1)%recentEvals]
}

// put records an evaluation, in place of an earlier record of the same one (an
// evaluation is recorded pending, then complete).
func (r *evalRing) put(id string, raw json.RawMessage) {
	for i := r.n - 1; i >= 0 && i >= r.n-recentEvals; i-- {
		if r.ids[i%recentEvals] == id {
			r.buf[i%recentEvals] = raw
			return
		}
	}
	r.buf[r.n%recentEvals], r.ids[r.n%recentEvals] = raw, id
	r.n++
}

// recentEvals is how many evaluations per job the server remembers for the
// UI, for at most maxEvalJobs jobs.
const (
	recentEvals = 10
	maxEvalJobs = 1 << 14
)

// publish hands one committed entry's operations to every subscriber. It is
// called by ApplyBatch with the server's commit lock held, so it only queues.
func (h *eventHub) publish(ops []*op) {
	h.recordEvals(ops)
	if h.n.Load() == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		sub.mu.Lock()
		if !sub.closed && !sub.lost {
			if len(sub.queue)+len(ops) > maxQueuedOps {
				sub.lost, sub.queue = true, nil
			} else {
				sub.queue = append(sub.queue, ops...)
			}
		}
		sub.mu.Unlock()
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

// recordEvals keeps the last few evaluations of each job (the cell keeps only
// the last one), for at most maxEvalJobs jobs. Cheap: evaluations are few per
// operation, and small. They are copied: a record aliases its whole Raft entry.
func (h *eventHub) recordEvals(ops []*op) {
	for _, o := range ops {
		if len(o.Evals) == 0 && len(o.Jobs) == 0 {
			continue
		}
		h.evMu.Lock()
		if h.evals == nil {
			h.evals = map[string]*evalRing{}
		}
		for job, raw := range o.Jobs {
			if isNull(raw) {
				delete(h.evals, job)
			}
		}
		for job, raw := range o.Evals {
			if isNull(raw) {
				delete(h.evals, job)
				continue
			}
			ring := h.evals[job]
			if ring == nil {
				if len(h.evals) >= maxEvalJobs {
					for other := range h.evals { // forget some job's history: any will do
						delete(h.evals, other)
						break
					}
				}
				ring = &evalRing{}
				h.evals[job] = ring
			}
			ring.put(evalID(raw), bytes.Clone(raw))
		}
		h.evMu.Unlock()
	}
}

// evalID reads an evaluation record's ID: the first field of what the server
// encodes, so no decoding is needed (anything else is decoded).
func evalID(raw json.RawMessage) string {
	const prefix = `{"id":"`
	if rest, ok := bytes.CutPrefix(raw, []byte(prefix)); ok {
		if i := bytes.IndexByte(rest, '"'); i >= 0 && bytes.IndexByte(rest[:i], '\\') < 0 {
			return string(rest[:i])
		}
	}
	var ev struct {
		ID string `json:"id"`
	}
	json.Unmarshal(raw, &ev)
	return ev.ID
}

// recent returns a job's remembered evaluations, newest first.
func (h *eventHub) recent(job string) []*Evaluation {
	var raws []json.RawMessage // newest first
	h.evMu.Lock()
	if ring := h.evals[job]; ring != nil {
		for i := ring.n - 1; i >= 0 && i >= ring.n-recentEvals; i-- {
			raws = append(raws, ring.buf[i%recentEvals])
		}
	}
	h.evMu.Unlock()
	out := make([]*Evaluation, 0, len(raws))
	for _, raw := range raws {
		ev := &Evaluation{}
		if json.Unmarshal(raw, ev) == nil {
			out = append(out, ev)
		}
	}
	return out
}

// subscribe adds a subscriber. The caller holds s.cmu, which ApplyBatch holds
// while it publishes, so the stream starts exactly after the state seeded here.
func (h *eventHub) subscribe(job string, nodes map[string][]string, jobs []*Job) (*subscriber, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= maxSubscribers {
		return nil, fmt.Errorf("%d event streams are open on this server already", maxSubscribers)
	}
	sub := &subscriber{job: job, wake: make(chan struct{}, 1), arts: map[string][]string{}, specs: map[string][]*Job{}}
	for id, arts := range nodes {
		sub.arts[id] = slices.Clone(arts)
	}
	for _, j := range jobs {
		sub.learn(j)
	}
	if h.subs == nil {
		h.subs = map[*subscriber]struct{}{}
	}
	h.subs[sub] = struct{}{}
	h.n.Store(int32(len(h.subs)))
	return sub, nil
}

func (h *eventHub) unsubscribe(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, sub)
	h.n.Store(int32(len(h.subs)))
	sub.mu.Lock()
	sub.closed, sub.queue = true, nil
	sub.mu.Unlock()
}

// closeAll ends every stream (the server is shutting down).
func (h *eventHub) closeAll() {
	h.mu.Lock()
	subs := make([]*subscriber, 0, len(h.subs))
	for sub := range h.subs {
		subs = append(subs, sub)
	}
	h.mu.Unlock()
	for _, sub := range subs {
		h.unsubscribe(sub)
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

// subscribeEvents opens an in-process events stream (the SSE handler's, and
// tests'). job, if set, keeps only that job's events. Unsubscribe when done.
func (s *Server) subscribeEvents(job string) (*subscriber, error) {
	s.mu.RLock() // the cell, as it is read
	defer s.mu.RUnlock()
	s.cmu.Lock() // ApplyBatch publishes under it: nothing is applied meanwhile
	defer s.cmu.Unlock()
	arts := make(map[string][]string, len(s.cell.byID))
	for id, n := range s.cell.byID {
		arts[id] = n.Artifacts
	}
	// Copies: the cell changes a job's record in place (its status, indexes).
	jobs := make([]*Job, 0, len(s.cell.jobs))
	for _, js := range s.cell.jobs {
		cp := *js.Job
		jobs = append(jobs, &cp)
	}
	return s.events.subscribe(job, arts, jobs)
}

// take returns the queued events, decoded, or ok=false when the subscriber was
// dropped (lost) or closed.
func (sub *subscriber) take(now time.Time) (evs []Event, lost, closed bool) {
	sub.mu.Lock()
	ops, lost, closed := sub.queue, sub.lost, sub.closed
	sub.queue = nil
	sub.mu.Unlock()
	if lost || closed {
		return nil, lost, closed
	}
	for _, o := range ops {
		evs = append(evs, sub.decode(o, now)...)
	}
	return evs, false, false
}

// decode turns one operation's records into events, in a stable order: jobs,
// tasks, allocations, nodes (and the release changes they carry).
func (sub *subscriber) decode(o *op, now time.Time) []Event {
	var out []Event
	add := func(e Event) {
		if sub.job != "" && e.Job != sub.job {
			return
		}
		e.Index, e.Time = o.Index, now
		out = append(out, e)
	}
	for _, name := range sortedKeys(o.Jobs) {
		raw := o.Jobs[name]
		e := Event{Type: EventJob, Job: name, Key: name, Record: raw}
		if isNull(raw) {
			e.Summary, e.Record = "job "+name+" removed", json.RawMessage("null")
		} else if j := (&Job{}); json.Unmarshal(raw, j) == nil {
			e.Summary = jobSummary(j)
			sub.learn(j)
		}
		add(e)
	}
	for _, key := range sortedKeys(o.Tasks) {
		raw := o.Tasks[key]
		job := key
		if i := strings.LastIndexByte(key, '/'); i >= 0 {
			job = key[:i]
		}
		e := Event{Type: EventTask, Job: job, Key: key, Record: raw}
		if isNull(raw) {
			e.Summary, e.Record = "task "+key+" removed (count lowered)", json.RawMessage("null")
		} else if t, err := decodeTask(raw, ""); err == nil {
			e.Summary = taskSummary(t)
			if raw[0] != '{' {
				e.Record, _ = json.Marshal(t)
			}
		}
		add(e)
	}
	for _, id := range sortedKeys(o.Allocs) {
		raw := o.Allocs[id]
		if isNull(raw) {
			continue // garbage collection of old allocations says nothing new
		}
		a, err := decodeAlloc(raw, sub.spec)
		if err != nil {
			// A normalized record of a version this stream never saw (it left the
			// job's history before the stream started): nothing to show it with.
			continue
		}
		rec := raw
		if raw[0] != '{' {
			rec, _ = json.Marshal(a) // normalized: readers get the whole record
		}
		add(Event{Type: EventAlloc, Job: a.Job, Node: a.NodeID, Key: id, Record: rec, Summary: allocSummary(a)})
	}
	for _, id := range sortedKeys(o.Nodes) {
		raw := o.Nodes[id]
		n := &Node{}
		if isNull(raw) || json.Unmarshal(raw, n) != nil {
			continue
		}
		add(Event{Type: EventNode, Node: id, Key: id, Record: raw, Summary: nodeSummary(n)})
		old := sub.arts[id]
		sub.arts[id] = slices.Clone(n.Artifacts)
		for _, a := range n.Artifacts {
			if !slices.Contains(old, a) && !strings.HasPrefix(a, "sha256:") {
				add(releaseEvent(a, id, true))
			}
		}
		for _, a := range old {
			if !slices.Contains(n.Artifacts, a) && !strings.HasPrefix(a, "sha256:") {
				add(releaseEvent(a, id, false))
			}
		}
	}
	return out
}

func releaseEvent(ref, node string, held bool) Event {
	rec, _ := json.Marshal(map[string]any{"artifact": ref, "held": held})
	verb := "now holds"
	if !held {
		verb = "no longer holds"
	}
	return Event{Type: EventRelease, Node: node, Key: ref + " " + node, Record: rec,
		Summary: fmt.Sprintf("node %s %s %s", ShortID(node), verb, ref)}
}

func jobSummary(j *Job) string {
	if j.Stopped {
		return fmt.Sprintf("job %s stopped", j.Name)
	}
	s := fmt.Sprintf("job %s v%d: %d × %s (%s)", j.Name, j.Version, j.Count, j.Artifact, j.Priority)
	if d := deploySummary(j); d != "" {
		s += "; " + d
	}
	return s
}

func taskSummary(t *Task) string {
	s := fmt.Sprintf("task %s[%d] %s", t.Job, t.Index, t.State)
	if t.AllocID != "" && t.State == TaskPlaced {
		s += " as " + ShortID(t.AllocID)
	}
	if t.Reason != "" {
		s += ": " + t.Reason
	}
	return s
}

func allocSummary(a *Alloc) string {
	s := fmt.Sprintf("task %s on %s: %s", a.Name(), ShortID(a.NodeID), a.ClientStatus)
	if a.DesiredStatus == DesiredStop {
		s += " (to stop"
		if a.DesiredDescription != "" {
			s += ": " + a.DesiredDescription
		}
		s += ")"
	}
	if a.ExitCode != nil {
		s += fmt.Sprintf(", exit %d", *a.ExitCode)
	}
	if a.OOMKilled {
		s += ", OOM-killed"
	}
	if a.Restarts > 0 {
		s += fmt.Sprintf(", %d restarts", a.Restarts)
	}
	if a.Health != "" {
		s += ", " + a.Health
	}
	if a.Healthy != nil && !*a.Healthy && a.Message != "" {
		s += ": " + a.Message
	}
	return s
}

func nodeSummary(n *Node) string {
	s := fmt.Sprintf("node %s %s", ShortID(n.ID), n.Status)
	if n.Drain {
		s += ", draining"
	}
	if n.Revoked {
		s += ", revoked"
	}
	return s
}

// ShortID abbreviates a node or allocation ID for people: its last 8 characters
// (node IDs share the prefix 12D3KooW).
func ShortID(id string) string {
	if len(id) <= 8 {
		return id
	}
	return id[len(id)-8:]
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
