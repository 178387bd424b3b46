package placement

import (
	"math/rand/v2"
	"strconv"
	"time"
)

// DefaultBatchShare is the part of the cell's cpu and memory that batch tasks may
// use together.
const DefaultBatchShare = 0.3

// Cell is the in-memory scheduling state: machines with their free resources
// indexed, jobs, tasks and allocations. The server keeps one as the mirror of what
// badger holds; the benchmark drives one directly. A Cell is not safe for
// concurrent use: the server's workers plan under its read lock, and everything
// that changes a Cell runs under its write lock.
type Cell struct {
	BatchShare float64

	nodes  []*nodeState // by slot; nodes are never removed, down ones stay
	byID   map[string]*nodeState
	jobs   map[string]*jobState
	allocs map[string]*Alloc
	free   freeIndex

	capacity  Resources // sum over ready machines
	batchUsed Resources // sum over live batch allocations
	used      Resources // sum over all live allocations

	labelValues map[string]map[string]int // label -> value -> ready machines
	holders     map[string][]int          // artifact ref or digest -> slots holding it
	pending     map[string]bool           // jobs with tasks waiting for room
	dirty       map[string]bool           // jobs whose allocations changed: reconcile them
	grown       map[*nodeState]bool       // machines with more room since waiting jobs were last tried

	index uint64 // index of the change being made
	now   func() time.Time
	rng   *rand.Rand
	ch    *changes // records to persist; nil when not tracking
	k     int      // candidates ranked per placement

	minReq      Resources // smallest request of any job, for the stranding penalty
	minReqValid bool      // minReq needs recomputing (jobs changed) when false

	// async: evaluations are not run inside the operation that needs them, but
	// handed to the server's workers (takeEvalRequests); trigger says why.
	async   bool
	trigger string
}

type nodeState struct {
	*Node
	slot       int
	free       Resources // Capacity - used, kept beside the index for a cheap first check
	used       Resources
	batchUsed  Resources
	live       map[string]*Alloc // holding resources
	assigned   map[string]*Alloc // every allocation the node should know about
	jobCount   map[string]int    // live allocations per job
	held       map[string]bool
	allocIndex uint64 // last server-side change to this node's allocations
	fcell      int    // cell in the free index, -1 when not schedulable
	fpos       int
}

func (n *nodeState) schedulable() bool { return n.Status == NodeReady && !n.Drain }

func (n *nodeState) freeRes() Resources { return n.free }

type jobState struct {
	*Job
	tasks    []*Task
	allocs   map[string]*Alloc // all allocations kept for this job
	live     map[string]*Alloc
	spread   map[string]int // spread label value -> live allocations
	lastEval *Evaluation
}

// changes collects what an operation touched, for the store to persist; a nil
// value in a map means the record was deleted.
type changes struct {
	servers map[string]*ServerInfo
	nodes   map[string]*Node
	jobs    map[string]*Job
	allocs  map[string]*Alloc
	tasks   map[string]*Task
	evals   []*Evaluation
}

func newChanges() *changes { return newChangesFor(0) }

// newChangesFor is newChanges for an operation expected to place about places
// tasks (each an allocation and a task record).
func newChangesFor(places int) *changes {
	places = min(places, 1<<14)
	return &changes{servers: map[string]*ServerInfo{}, nodes: map[string]*Node{}, jobs: map[string]*Job{},
		allocs: make(map[string]*Alloc, places), tasks: make(map[string]*Task, places)}
}

func (ch *changes) empty() bool {
	return len(ch.servers)+len(ch.nodes)+len(ch.jobs)+len(ch.allocs)+len(ch.tasks)+len(ch.evals) == 0
}

// NewCell returns an empty cell. now may be nil (time.Now); seed makes the random
// choices (alloc IDs, candidate sampling) reproducible.
func NewCell(batchShare float64, now func() time.Time, seed uint64) *Cell {
	if now == nil {
		now = time.Now
	}
	if batchShare <= 0 || batchShare > 1 {
		batchShare = DefaultBatchShare
	}
	return &Cell{
		BatchShare:  batchShare,
		byID:        map[string]*nodeState{},
		jobs:        map[string]*jobState{},
		allocs:      map[string]*Alloc{},
		labelValues: map[string]map[string]int{},
		holders:     map[string][]int{},
		pending:     map[string]bool{},
		dirty:       map[string]bool{},
		grown:       map[*nodeState]bool{},
		free:        newFreeIndex(),
		now:         now,
		rng:         rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		k:           16,
	}
}

// newID is a random 64-bit ID in 16 hex digits (fmt's %016x, without fmt's
// cost: one per placement).
func (c *Cell) newID() string { return formatID(c.rng.Uint64()) }

// newAllocID returns an allocation ID no allocation of the cell has: the
// operation's index in the high 32 bits, random low bits. IDs made together
// sort together, so badger puts an operation's allocations side by side in
// its memtable instead of at random places in it (cache misses walking the
// skiplist were a sixth of a server's cost of writing them); the random half
// keeps apart IDs that two working states made at the same index.
func (c *Cell) newAllocID() string {
	for {
		if id := formatID(c.index<<32 | uint64(c.rng.Uint32())); c.allocs[id] == nil {
			return id
		}
	}
}

// formatID is v in 16 hex digits, fmt's %016x.
func formatID(v uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = digits[v&15]
		v >>= 4
	}
	return string(b[:])
}

// taskKey is JOB/INDEX, the index in at least six digits (fmt's %s/%06d).
func taskKey(job string, idx int) string {
	var d [20]byte
	digits := strconv.AppendInt(d[:0], int64(idx), 10)
	b := make([]byte, 0, len(job)+1+max(6, len(digits)))
	b = append(append(b, job...), '/')
	for range 6 - len(digits) {
		b = append(b, '0')
	}
	return string(append(b, digits...))
}

func (c *Cell) touchNode(n *nodeState) {
	n.ModifyIndex = c.index
	if c.ch != nil {
		c.ch.nodes[n.ID] = n.Node
	}
}

func (c *Cell) touchJob(js *jobState) {
	js.ModifyIndex = c.index
	if c.ch != nil {
		c.ch.jobs[js.Name] = js.Job
	}
}

func (c *Cell) touchTask(t *Task) {
	if c.ch != nil {
		c.ch.tasks[taskKey(t.Job, t.Index)] = t
	}
}

// touchAlloc records a change to a; serverSide changes wake the node's long-poll.
func (c *Cell) touchAlloc(a *Alloc, serverSide bool) {
	a.ModifyIndex = c.index
	if c.ch != nil {
		c.ch.allocs[a.ID] = a
	}
	if serverSide {
		if n := c.byID[a.NodeID]; n != nil {
			n.allocIndex = c.index
		}
	}
}

// putNode adds or replaces a machine's record, keeping indexes and accounting.
func (c *Cell) putNode(node *Node) *nodeState {
	n := c.byID[node.ID]
	if n == nil {
		n = &nodeState{slot: len(c.nodes), live: map[string]*Alloc{}, assigned: map[string]*Alloc{},
			jobCount: map[string]int{}, held: map[string]bool{}, fcell: -1}
		c.nodes = append(c.nodes, n)
		c.byID[node.ID] = n
	} else {
		c.unindexNode(n)
	}
	n.Node = node
	c.indexNode(n)
	return n
}

// unindexNode removes a node's contribution to cell-wide indexes before a change.
func (c *Cell) unindexNode(n *nodeState) {
	if n.Status == NodeReady {
		c.capacity = c.capacity.Sub(n.Capacity)
		for k, v := range n.Labels {
			if m := c.labelValues[k]; m != nil {
				if m[v]--; m[v] <= 0 {
					delete(m, v)
				}
			}
		}
	}
	for a := range n.held {
		list := c.holders[a]
		for i, s := range list {
			if s == n.slot {
				list[i] = list[len(list)-1]
				c.holders[a] = list[:len(list)-1]
				break
			}
		}
	}
	clear(n.held)
	c.free.remove(c, n)
}

func (c *Cell) indexNode(n *nodeState) {
	n.free = n.Capacity.Sub(n.used)
	if n.Status == NodeReady {
		c.capacity = c.capacity.Add(n.Capacity)
		for k, v := range n.Labels {
			m := c.labelValues[k]
			if m == nil {
				m = map[string]int{}
				c.labelValues[k] = m
			}
			m[v]++
		}
		c.grown[n] = true
	}
	for _, a := range n.Artifacts {
		if !n.held[a] {
			n.held[a] = true
			c.holders[a] = append(c.holders[a], n.slot)
		}
	}
	if n.schedulable() {
		if !c.free.fits(n.Capacity) {
			c.free.rebuild(c, n.Capacity)
		}
		c.free.insert(c, n)
	}
}

// updateNode applies fn to a node's record with the indexes kept right.
func (c *Cell) updateNode(n *nodeState, fn func(*Node)) {
	c.unindexNode(n)
	fn(n.Node)
	c.indexNode(n)
	c.touchNode(n)
}

func (c *Cell) putJob(j *Job) *jobState {
	js := c.jobs[j.Name]
	if js == nil {
		// At the size the job will have: growing them task by task rehashes.
		js = &jobState{allocs: make(map[string]*Alloc, min(j.Count, 1<<12)), live: make(map[string]*Alloc, min(j.Count, 1<<12)), spread: map[string]int{}}
		c.jobs[j.Name] = js
	}
	js.Job = j
	c.minReqValid = false
	// The spread label may have changed; recount.
	clear(js.spread)
	if j.Spread != "" {
		for _, a := range js.live {
			if n := c.byID[a.NodeID]; n != nil {
				js.spread[n.Labels[j.Spread]]++
			}
		}
	}
	return js
}

// putAlloc adds an allocation (new, or loaded from disk).
func (c *Cell) putAlloc(a *Alloc) {
	c.allocs[a.ID] = a
	if js := c.jobs[a.Job]; js != nil {
		js.allocs[a.ID] = a
	}
	n := c.byID[a.NodeID]
	if n != nil && (a.DesiredStatus == DesiredRun || !clientTerminal(a.ClientStatus)) {
		n.assigned[a.ID] = a
	}
	if a.live() {
		c.account(a, 1)
	}
}

// deleteAlloc forgets an allocation that is stopped and acknowledged.
func (c *Cell) deleteAlloc(a *Alloc) {
	if a.live() {
		c.account(a, -1)
	}
	delete(c.allocs, a.ID)
	if js := c.jobs[a.Job]; js != nil {
		delete(js.allocs, a.ID)
	}
	if n := c.byID[a.NodeID]; n != nil {
		delete(n.assigned, a.ID)
	}
	if c.ch != nil {
		c.ch.allocs[a.ID] = nil
	}
}

// account adds (sign 1) or removes (-1) a live allocation's resources.
func (c *Cell) account(a *Alloc, sign int) {
	n := c.byID[a.NodeID]
	js := c.jobs[a.Job]
	r := a.Resources
	if sign < 0 {
		r = Resources{}.Sub(r)
		if n != nil {
			c.grown[n] = true
		}
	}
	c.used = c.used.Add(r)
	if a.Band == BandBatch {
		c.batchUsed = c.batchUsed.Add(r)
	}
	if n != nil {
		n.used = n.used.Add(r)
		n.free = n.Capacity.Sub(n.used)
		if a.Band == BandBatch {
			n.batchUsed = n.batchUsed.Add(r)
		}
		if sign > 0 {
			n.live[a.ID] = a
			n.jobCount[a.Job]++
		} else {
			delete(n.live, a.ID)
			if n.jobCount[a.Job]--; n.jobCount[a.Job] <= 0 {
				delete(n.jobCount, a.Job)
			}
		}
		c.free.update(c, n)
	}
	if js != nil {
		if sign > 0 {
			js.live[a.ID] = a
		} else {
			delete(js.live, a.ID)
		}
		if js.Spread != "" && n != nil {
			js.spread[n.Labels[js.Spread]] += sign
		}
	}
}

// setDesired changes what the server wants of an allocation.
func (c *Cell) setDesired(a *Alloc, desired, desc string) {
	if a.DesiredStatus == desired {
		return
	}
	was := a.live()
	a.DesiredStatus, a.DesiredDescription = desired, desc
	if was && !a.live() {
		c.account(a, -1)
	}
	c.touchAlloc(a, true)
	c.maybeForget(a)
}

// setClient records what the launcher reports about an allocation.
func (c *Cell) setClient(a *Alloc, st TaskState) bool {
	if a.ClientStatus == st.State && a.Restarts == st.Restarts && a.Message == st.Message &&
		a.Health == st.Health && (st.Healthy == nil || a.Healthy != nil) {
		return false
	}
	if clientTerminal(a.ClientStatus) && !clientTerminal(st.State) {
		// An allocation that ended stays ended: the launcher starts a restart under the same
		// allocation only while it is still running.
		return false
	}
	was := a.live()
	a.ClientStatus, a.ExitCode, a.OOMKilled, a.Message, a.Restarts = st.State, st.ExitCode, st.OOMKilled, st.Message, st.Restarts
	a.Health = st.Health
	if a.Healthy == nil && st.Healthy != nil {
		// The node's verdict is final; a later report cannot turn a failed
		// replacement into a healthy one.
		v := *st.Healthy
		a.Healthy = &v
		if js := c.jobs[a.Job]; js != nil {
			c.dirty[a.Job] = true // a rollout may take its next step, or fail
		}
	}
	if was && !a.live() {
		c.account(a, -1)
		if js := c.jobs[a.Job]; js != nil && !js.Stopped {
			c.dirty[a.Job] = true // reconcile decides: done, or run again
		}
	}
	c.touchAlloc(a, false)
	c.maybeForget(a)
	return true
}

func (c *Cell) maybeForget(a *Alloc) {
	if a.DesiredStatus == DesiredStop && clientTerminal(a.ClientStatus) {
		c.deleteAlloc(a)
	}
}

// freeIndex buckets schedulable machines on a grid of (free cpu, free memory) so
// that a best-fit search starts at the tightest machines that can still hold a
// request, without looking at the full ones.
type freeIndex struct {
	g      int
	maxCPU int64
	maxMem int64
	cells  [][]freeEntry
	rows   []uint64 // bit j of rows[i]: cell (i, j) is not empty
}

// freeEntry is a machine in the free index with its free cpu and memory beside
// it: a search rejects most machines it looks at without loading their state.
type freeEntry struct {
	slot int32
	cpu  int64
	mem  int64
}

// freeGrid is the grid's side; 64 so that a row's occupancy is one word.
const freeGrid = 64

func newFreeIndex() freeIndex {
	return freeIndex{g: freeGrid, maxCPU: 1, maxMem: 1, cells: make([][]freeEntry, freeGrid*freeGrid), rows: make([]uint64, freeGrid)}
}

func (f *freeIndex) occupied(i, j int) bool { return f.rows[i]&(1<<uint(j)) != 0 }

func (f *freeIndex) fits(capacity Resources) bool {
	return capacity.CPU <= f.maxCPU && capacity.Memory <= f.maxMem
}

func (f *freeIndex) q(v, max int64) int {
	if v <= 0 {
		return 0
	}
	i := int(v * int64(f.g) / (max + 1))
	if i >= f.g {
		i = f.g - 1
	}
	return i
}

func (f *freeIndex) key(free Resources) int {
	return f.q(free.CPU, f.maxCPU)*f.g + f.q(free.Memory, f.maxMem)
}

func (f *freeIndex) insert(c *Cell, n *nodeState) {
	k := f.key(n.freeRes())
	n.fcell, n.fpos = k, len(f.cells[k])
	f.cells[k] = append(f.cells[k], freeEntry{slot: int32(n.slot), cpu: n.free.CPU, mem: n.free.Memory})
	f.rows[k/f.g] |= 1 << uint(k%f.g)
}

func (f *freeIndex) remove(c *Cell, n *nodeState) {
	if n.fcell < 0 {
		return
	}
	cell := f.cells[n.fcell]
	last := cell[len(cell)-1]
	cell[n.fpos] = last
	c.nodes[last.slot].fpos = n.fpos
	f.cells[n.fcell] = cell[:len(cell)-1]
	if len(cell) == 1 {
		f.rows[n.fcell/f.g] &^= 1 << uint(n.fcell%f.g)
	}
	n.fcell = -1
}

func (f *freeIndex) update(c *Cell, n *nodeState) {
	if n.fcell < 0 {
		return
	}
	if k := f.key(n.freeRes()); k != n.fcell {
		f.remove(c, n)
		f.insert(c, n)
		return
	}
	e := &f.cells[n.fcell][n.fpos]
	e.cpu, e.mem = n.free.CPU, n.free.Memory
}

func (f *freeIndex) rebuild(c *Cell, capacity Resources) {
	f.maxCPU = max(f.maxCPU, capacity.CPU)
	f.maxMem = max(f.maxMem, capacity.Memory)
	for i := range f.cells {
		f.cells[i] = f.cells[i][:0]
	}
	clear(f.rows)
	for _, n := range c.nodes {
		if n.fcell >= 0 {
			n.fcell = -1
			f.insert(c, n)
		}
	}
}
