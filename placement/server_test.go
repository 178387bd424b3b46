package placement

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"ballena.dev/internal/testnet"
)

const (
	testAdmin = "admin-token-0123456789abcdef"
	testJoin  = "join-token-0123456789abcdef"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

type testServer struct {
	*Server
	url   string
	clock *fakeClock
	admin *Client
}

func startServer(t *testing.T, dir string) *testServer {
	t.Helper()
	clock := newFakeClock()
	s, err := Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, NodeTTL: 15 * time.Second,
		Now: clock.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // after the HTTP server below is closed
	url := testnet.Serve(t, s.Handler())
	admin, err := NewClient(url, testAdmin)
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{Server: s, url: url, clock: clock, admin: admin}
}

// testNode plays a launcher: it registers, and reports every allocation it is
// given as running (or complete once told to stop).
type testNode struct {
	*Client
	t *testing.T
	// sick lists artifacts whose tasks fail their health check here, and
	// states what the node reports instead for an artifact's tasks (AllocID
	// filled in); every other task it runs is healthy at once, as after
	// min_healthy_time.
	sick   map[string]bool
	states map[string]TaskState
}

func (ts *testServer) addNode(t *testing.T, cpu, memGiB int64, labels map[string]string) *testNode {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewNodeClient(ts.url, testJoin, key)
	if err != nil {
		t.Fatal(err)
	}
	cl.Now = ts.clock.Now
	if _, _, err := cl.Register(context.Background(), NodeRegistration{
		Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, Labels: labels,
		Capacity: Resources{CPU: cpu, Memory: memGiB * gib, PIDs: 10000},
	}); err != nil {
		t.Fatal(err)
	}
	return &testNode{Client: cl, t: t}
}

var yes, no = true, false

// converge reads the node's allocations and reports them running (and healthy,
// unless sick) or stopped.
func (n *testNode) converge() *HeartbeatResponse {
	n.t.Helper()
	ctx := context.Background()
	l, err := n.WatchAllocations(ctx, 0, 0)
	if err != nil {
		n.t.Fatal(err)
	}
	var hb Heartbeat
	for _, a := range l.Allocations {
		st := TaskState{AllocID: a.ID, State: ClientRunning, Health: HealthHealthy, Healthy: &yes}
		switch {
		case a.DesiredStatus == DesiredStop:
			st = TaskState{AllocID: a.ID, State: ClientComplete}
		case n.sick[a.Artifact]:
			st.Health, st.Healthy, st.Message = HealthUnhealthy, &no, "health check failed 3 times: GET /healthz: 500"
		default:
			if s, ok := n.states[a.Artifact]; ok {
				st, st.AllocID = s, a.ID
			}
		}
		hb.Tasks = append(hb.Tasks, st)
	}
	resp, err := n.Heartbeat(ctx, hb)
	if err != nil {
		n.t.Fatal(err)
	}
	return resp
}

func (n *testNode) allocs() []*Alloc {
	n.t.Helper()
	l, err := n.WatchAllocations(context.Background(), 0, 0)
	if err != nil {
		n.t.Fatal(err)
	}
	return l.Allocations
}

func liveOn(allocs []*Alloc) (run []*Alloc) {
	for _, a := range allocs {
		if a.DesiredStatus == DesiredRun && !clientTerminal(a.ClientStatus) {
			run = append(run, a)
		}
	}
	return run
}

func (ts *testServer) submit(t *testing.T, j *Job) *Evaluation {
	t.Helper()
	resp, err := ts.admin.SubmitJob(context.Background(), j)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Evaluations[0]
}

func TestNodeLossAndReturn(t *testing.T) {
	ts := startServer(t, t.TempDir())
	nodes := map[string]*testNode{}
	for _, r := range []string{"r1", "r2", "r3"} {
		n := ts.addNode(t, 4000, 8, map[string]string{"rack": r})
		nodes[n.NodeID()] = n
	}
	// A watch that starts before the job exists returns when it is placed.
	type watch struct {
		l   *AllocationList
		err error
	}
	watched := make(chan watch, len(nodes))
	start := ts.Index()
	for _, n := range nodes {
		go func() {
			l, err := n.WatchAllocations(context.Background(), start, 30*time.Second)
			watched <- watch{l, err}
		}()
	}
	j := job("api", 2, 1000, 1024, BandProd)
	j.DistinctHosts = true
	if ev := ts.submit(t, j); ev.Placed != 2 {
		t.Fatalf("placed %d", ev.Placed)
	}
	got := 0
	for range 2 {
		w := <-watched
		if w.err != nil {
			t.Fatal(w.err)
		}
		got += len(w.l.Allocations)
	}
	if got != 2 {
		t.Fatalf("long-polls returned %d allocations, want 2", got)
	}
	for _, n := range nodes {
		n.converge()
	}
	st, _ := ts.admin.JobStatus(context.Background(), "api")
	victim := nodes[st.Tasks[0].NodeID]
	lost := st.Tasks[0].AllocID

	// Everyone but the victim keeps heartbeating; the victim misses its TTL.
	ts.clock.Advance(10 * time.Second)
	for _, n := range nodes {
		if n != victim {
			n.converge()
		}
	}
	ts.clock.Advance(6 * time.Second)
	if err := ts.Sweep(); err != nil {
		t.Fatal(err)
	}
	infos, _ := ts.admin.Nodes(context.Background())
	for _, info := range infos {
		want := NodeReady
		if info.ID == victim.NodeID() {
			want = NodeDown
		}
		if info.Status != want {
			t.Errorf("node %s is %s, want %s", info.ID, info.Status, want)
		}
	}
	st, _ = ts.admin.JobStatus(context.Background(), "api")
	for _, task := range st.Tasks {
		if task.NodeID == victim.NodeID() || task.State != TaskPlaced {
			t.Errorf("task %d is %s on %s after its machine died", task.Index, task.State, task.NodeID)
		}
	}
	// The victim comes back, still running its old task: it is told to kill it.
	resp, err := victim.Heartbeat(context.Background(), Heartbeat{Tasks: []TaskState{{AllocID: lost, State: ClientRunning}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Stop) != 1 || resp.Stop[0] != lost {
		t.Errorf("returning machine told to stop %v, want [%s]", resp.Stop, lost)
	}
	as := victim.allocs()
	if len(as) != 1 || as[0].ID != lost || as[0].DesiredStatus != DesiredStop {
		t.Fatalf("returning machine's allocations: %+v", as)
	}
	victim.converge() // kills it, reports complete
	if as := victim.allocs(); len(as) != 0 {
		t.Errorf("machine still has %d allocations after killing the duplicate", len(as))
	}
	// Nothing but the two replacements runs.
	running := 0
	for _, n := range nodes {
		running += len(liveOn(n.allocs()))
	}
	if running != 2 {
		t.Errorf("%d tasks run across the cell, want 2", running)
	}
}

func TestDrainMovesAFewAtATime(t *testing.T) {
	ts := startServer(t, t.TempDir())
	a := ts.addNode(t, 8000, 16, nil)
	j := job("api", 5, 1000, 1024, BandProd)
	j.Update.MaxParallel = 2
	ts.submit(t, j)
	a.converge()
	b := ts.addNode(t, 8000, 16, nil)
	if _, err := ts.admin.Drain(context.Background(), a.NodeID(), true); err != nil {
		t.Fatal(err)
	}
	for step, wantA := range []int{3, 1, 0} {
		onA, onB := len(liveOn(a.allocs())), len(liveOn(b.allocs()))
		if onA != wantA || onA+onB != 5 {
			t.Fatalf("step %d: %d tasks on a, %d on b; want %d on a and 5 in all", step, onA, onB, wantA)
		}
		pending := 0
		for _, x := range liveOn(b.allocs()) {
			if x.ClientStatus == ClientPending {
				pending++
			}
		}
		if pending > 2 {
			t.Fatalf("step %d: %d replacements in flight, max_parallel is 2", step, pending)
		}
		a.converge()
		b.converge() // replacements run: the next batch moves
	}
	infos, _ := ts.admin.Nodes(context.Background())
	for _, info := range infos {
		if info.ID == a.NodeID() && (!info.Drain || info.Tasks != 0) {
			t.Errorf("drained node: drain %v, %d tasks", info.Drain, info.Tasks)
		}
	}
}

func TestRollingUpdate(t *testing.T) {
	ts := startServer(t, t.TempDir())
	n := ts.addNode(t, 16000, 32, nil)
	j := job("api", 4, 1000, 1024, BandProd)
	ts.submit(t, j)
	n.converge()
	j2 := job("api", 4, 1000, 1024, BandProd)
	j2.Artifact = "api@1.1.0"
	ev := ts.submit(t, j2)
	if ev.Placed != 1 || ev.Stopped != 1 || len(ev.Notes) != 1 || !strings.Contains(ev.Notes[0], "3 more tasks") {
		t.Fatalf("first update step placed %d stopped %d notes %q, want 1, 1 and 3 more to go", ev.Placed, ev.Stopped, ev.Notes)
	}
	for step := 0; step < 10; step++ {
		var v2, inflight int
		for _, a := range liveOn(n.allocs()) {
			if a.JobVersion == 2 {
				v2++
				if a.ClientStatus == ClientPending {
					inflight++
				}
			}
		}
		if inflight > 1 {
			t.Fatalf("%d new-version tasks starting at once, max_parallel is 1", inflight)
		}
		if v2 == 4 && inflight == 0 {
			st, _ := ts.admin.JobStatus(context.Background(), "api")
			if st.Summary[ClientRunning] != 4 {
				t.Errorf("summary %v", st.Summary)
			}
			return
		}
		n.converge()
	}
	t.Fatal("update did not finish in 10 steps")
}

// A version whose replacement never starts (the launcher refuses it) must not
// block the next version: that replacement is itself replaced.
func TestUpdatePastAStuckVersion(t *testing.T) {
	ts := startServer(t, t.TempDir())
	n := ts.addNode(t, 16000, 32, nil)
	ts.submit(t, job("api", 2, 1000, 1024, BandProd))
	n.converge()
	bad := job("api", 2, 1000, 1024, BandProd)
	bad.Artifact = "api@2.0.0"
	ts.submit(t, bad) // its first replacement stays pending: n does not converge
	good := job("api", 2, 1000, 1024, BandProd)
	good.Artifact = "api@3.0.0"
	ev := ts.submit(t, good)
	if ev.Placed != 1 {
		t.Fatalf("update past a stuck version placed %d, want 1 (notes %q)", ev.Placed, ev.Notes)
	}
	for _, a := range n.allocs() {
		if a.Artifact == "api@2.0.0" && a.DesiredStatus == DesiredRun {
			t.Errorf("the stuck 2.0.0 replacement %s is still wanted", a.ID)
		}
	}
	for step := 0; step < 10; step++ {
		v3 := 0
		for _, a := range liveOn(n.allocs()) {
			if a.Artifact == "api@3.0.0" && a.ClientStatus == ClientRunning {
				v3++
			}
		}
		if v3 == 2 {
			return
		}
		n.converge()
	}
	t.Fatal("the update to 3.0.0 did not finish in 10 steps")
}

func TestSubmitConflict(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	resp, err := ts.admin.SubmitJobAt(ctx, job("api", 1, 100, 64, BandProd), 0)
	if err != nil {
		t.Fatal(err)
	}
	idx := resp.Job.ModifyIndex
	if _, err := ts.admin.SubmitJobAt(ctx, job("api", 2, 100, 64, BandProd), idx); err != nil {
		t.Fatalf("update at the current index: %v", err)
	}
	_, err = ts.admin.SubmitJobAt(ctx, job("api", 3, 100, 64, BandProd), idx)
	var ae *APIError
	if !asAPIError(err, &ae) || ae.Status != http.StatusConflict {
		t.Fatalf("stale update: %v, want 409 conflict", err)
	}
	st, _ := ts.admin.JobStatus(ctx, "api")
	if st.Job.Count != 2 {
		t.Errorf("count %d after a refused stale update, want 2", st.Job.Count)
	}
}

func asAPIError(err error, ae **APIError) bool {
	for err != nil {
		if e, ok := err.(*APIError); ok {
			*ae = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func TestAuthRefusals(t *testing.T) {
	ts := startServer(t, t.TempDir())
	node := ts.addNode(t, 4000, 8, nil)
	other := ts.addNode(t, 4000, 8, nil)
	ctx := context.Background()
	jobBody, _ := json.Marshal(job("api", 1, 100, 64, BandProd))

	raw := func(method, path string, body []byte, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.url+path, bytes.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e apiError
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 300 && (json.Unmarshal(b, &e) != nil || e.Error == "") {
			t.Errorf("%s %s: error body is not JSON with an error: %s", method, path, b)
		}
		return resp.StatusCode, e.Error
	}
	signed := func(method, path string, body []byte, id string, key ed25519.PrivateKey, at time.Time) map[string]string {
		req, _ := http.NewRequest(method, ts.url+path, nil)
		signRequest(req, id, key, at, body)
		return map[string]string{HeaderNode: req.Header.Get(HeaderNode), HeaderTime: req.Header.Get(HeaderTime),
			HeaderNonce: req.Header.Get(HeaderNonce), HeaderSignature: req.Header.Get(HeaderSignature)}
	}
	hbPath := "/v1/nodes/" + node.NodeID() + "/heartbeat"
	hbBody := []byte(`{"tasks":[]}`)
	_, forger, _ := ed25519.GenerateKey(nil)
	now := ts.clock.Now()
	replayed := signed("POST", hbPath, hbBody, node.NodeID(), node.nodeKey, now)

	cases := []struct {
		name   string
		method string
		path   string
		body   []byte
		hdr    map[string]string
		want   int
	}{
		{"submit without token", "POST", "/v1/jobs", jobBody, nil, 401},
		{"submit with wrong token", "POST", "/v1/jobs", jobBody, map[string]string{"Authorization": "Bearer nope"}, 403},
		{"submit with join token", "POST", "/v1/jobs", jobBody, map[string]string{"Authorization": "Bearer " + testJoin}, 403},
		{"stop without token", "DELETE", "/v1/jobs/api", nil, nil, 401},
		{"drain without token", "POST", "/v1/nodes/" + node.NodeID() + "/drain", nil, nil, 401},
		{"register without join token", "POST", "/v1/nodes/register", []byte(`{}`), nil, 401},
		{"unsigned heartbeat", "POST", hbPath, hbBody, nil, 401},
		{"forged heartbeat", "POST", hbPath, hbBody, signed("POST", hbPath, hbBody, node.NodeID(), forger, now), 401},
		{"body swapped after signing", "POST", hbPath, []byte(`{"tasks":[{"alloc_id":"x","state":"running"}]}`), signed("POST", hbPath, hbBody, node.NodeID(), node.nodeKey, now), 401},
		{"stale signature", "POST", hbPath, hbBody, signed("POST", hbPath, hbBody, node.NodeID(), node.nodeKey, now.Add(-time.Minute)), 401},
		{"signed heartbeat", "POST", hbPath, hbBody, replayed, 200},
		{"replayed heartbeat", "POST", hbPath, hbBody, replayed, 401},
		{"node acting for another", "POST", "/v1/nodes/" + other.NodeID() + "/heartbeat", hbBody,
			signed("POST", "/v1/nodes/"+other.NodeID()+"/heartbeat", hbBody, node.NodeID(), node.nodeKey, now), 403},
		{"allocations unsigned", "GET", "/v1/nodes/" + node.NodeID() + "/allocations", nil, nil, 401},
		{"read on loopback without token", "GET", "/v1/nodes", nil, nil, 401},
		{"status without token", "GET", "/v1/status", nil, nil, 401},
		{"read with the join token", "GET", "/v1/jobs", nil, map[string]string{"Authorization": "Bearer " + testJoin}, 403},
		{"read with the admin token", "GET", "/v1/nodes", nil, map[string]string{"Authorization": "Bearer " + testAdmin}, 200},
		{"unknown job", "GET", "/v1/jobs/nope", nil, map[string]string{"Authorization": "Bearer " + testAdmin}, 404},
		{"body over the cap", "POST", "/v1/jobs", bytes.Repeat([]byte(" "), maxBody+1), map[string]string{"Authorization": "Bearer " + testAdmin}, 413},
	}
	for _, tc := range cases {
		if got, msg := raw(tc.method, tc.path, tc.body, tc.hdr); got != tc.want {
			t.Errorf("%s: status %d (%s), want %d", tc.name, got, msg, tc.want)
		}
	}
	// Credentials are checked before the body is read: a request without them is
	// refused while its body is still being sent (this body never ends).
	for _, path := range []string{"/v1/jobs", "/v1/nodes/register", hbPath} {
		pr, pw := io.Pipe()
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		req, _ := http.NewRequestWithContext(rctx, "POST", ts.url+path, pr)
		go pw.Write([]byte("{"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("POST %s with an endless body and no credentials: %v (the server waited for the body)", path, err)
		} else {
			if resp.StatusCode != 401 {
				t.Errorf("POST %s with an endless body and no credentials: %d, want 401", path, resp.StatusCode)
			}
			resp.Body.Close()
		}
		cancel()
		pw.Close()
	}
	// Registering a key under another node's ID fails: the ID is the key's.
	_, key2, _ := ed25519.GenerateKey(nil)
	reg, _ := json.Marshal(NodeRegistration{PublicKey: key2.Public().(ed25519.PublicKey), Capacity: Resources{CPU: 1000, Memory: gib}})
	hdr := signed("POST", "/v1/nodes/register", reg, node.NodeID(), key2, now)
	hdr["Authorization"] = "Bearer " + testJoin
	if got, msg := raw("POST", "/v1/nodes/register", reg, hdr); got != 401 {
		t.Errorf("register a key under another node's ID: %d (%s), want 401", got, msg)
	}
	// The client reports these as refusals.
	bad, _ := NewClient(ts.url, "wrong-token-0123456789")
	if _, err := bad.SubmitJob(ctx, job("api", 1, 100, 64, BandProd)); !IsUnauthorized(err) {
		t.Errorf("client with a wrong token: %v", err)
	}
	if _, err := ts.admin.JobStatus(ctx, "nope"); !IsNotFound(err) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing job: %v", err)
	}
}

func TestBadJobOverAPI(t *testing.T) {
	ts := startServer(t, t.TempDir())
	j := job("api", 1, 100, 64, "urgent")
	_, err := ts.admin.SubmitJob(context.Background(), j)
	var ae *APIError
	if !asAPIError(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "priority") {
		t.Fatalf("bad job: %v, want 400 naming priority", err)
	}
}

func TestConcurrentWritesLoseNothing(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	n := ts.addNode(t, 64000, 256, nil)
	resp, err := ts.admin.SubmitJob(ctx, job("shared", 1, 100, 64, BandProd))
	if err != nil {
		t.Fatal(err)
	}
	idx := resp.Job.ModifyIndex
	const writers = 16
	var wg sync.WaitGroup
	wins := make(chan int, writers)
	errs := make(chan error, 3*writers)
	for i := range writers {
		wg.Add(3)
		go func() { // racing editors of one job: exactly one wins at the index they read
			defer wg.Done()
			_, err := ts.admin.SubmitJobAt(ctx, job("shared", 2+i, 100, 64, BandProd), idx)
			var ae *APIError
			switch {
			case err == nil:
				wins <- 2 + i
			case !asAPIError(err, &ae) || ae.Status != http.StatusConflict:
				errs <- err
			}
		}()
		go func() { // independent jobs all land
			defer wg.Done()
			if _, err := ts.admin.SubmitJob(ctx, job(fmt.Sprintf("own-%02d", i), 2, 100, 64, BandBatch)); err != nil {
				errs <- err
			}
		}()
		go func() { // heartbeats interleave with the writes
			defer wg.Done()
			if _, err := n.Heartbeat(ctx, Heartbeat{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(wins)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var won []int
	for w := range wins {
		won = append(won, w)
	}
	if len(won) != 1 {
		t.Fatalf("%d racing updates at one index succeeded, want exactly 1: %v", len(won), won)
	}
	st, err := ts.admin.JobStatus(ctx, "shared")
	if err != nil || st.Job.Count != won[0] || len(st.Tasks) != won[0] {
		t.Errorf("shared job count %d with %d tasks, want the winner's %d (%v)", st.Job.Count, len(st.Tasks), won[0], err)
	}
	jobs, _ := ts.admin.Jobs(ctx)
	if len(jobs) != writers+1 {
		t.Errorf("%d jobs, want %d", len(jobs), writers+1)
	}
}

// TestRevokeMovesTasks: a revoked machine's tasks are placed elsewhere, and it
// can no longer watch its allocations, heartbeat or register again.
func TestRevokeMovesTasks(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	a := ts.addNode(t, 4000, 8, nil)
	b := ts.addNode(t, 4000, 8, nil)
	j := job("api", 2, 1000, 1024, BandProd)
	j.DistinctHosts = true
	if ev := ts.submit(t, j); ev.Placed != 2 {
		t.Fatalf("placed %d", ev.Placed)
	}
	a.converge()
	b.converge()
	c := ts.addNode(t, 4000, 8, nil)
	if _, err := ts.admin.Revoke(ctx, a.NodeID()); err != nil {
		t.Fatal(err)
	}
	st, err := ts.admin.JobStatus(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range st.Tasks {
		if tk.NodeID == a.NodeID() || tk.State != TaskPlaced {
			t.Errorf("task %d after the revocation: %s on %s", tk.Index, tk.State, tk.NodeID)
		}
	}
	if len(liveOn(c.allocs())) != 1 {
		t.Errorf("the third machine took %d tasks, want the revoked machine's one", len(liveOn(c.allocs())))
	}
	if _, err := a.WatchAllocations(ctx, 0, 0); !IsUnauthorized(err) {
		t.Errorf("revoked machine watching its allocations: %v, want refused", err)
	}
	if _, err := a.Heartbeat(ctx, Heartbeat{}); !IsUnauthorized(err) {
		t.Errorf("revoked machine heartbeating: %v, want refused", err)
	}
	if _, _, err := a.Register(ctx, NodeRegistration{Capacity: Resources{CPU: 4000, Memory: 8 * gib}}); !IsUnauthorized(err) {
		t.Errorf("revoked machine registering: %v, want refused", err)
	}
	nodes, err := ts.admin.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == a.NodeID() && (!n.Revoked || n.Status != NodeDown) {
			t.Errorf("revoked machine listed as %+v", n)
		}
	}
}
