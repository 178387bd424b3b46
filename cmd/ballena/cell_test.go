package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ballena.dev/internal/poll"
	"ballena.dev/internal/testnet"
	"ballena.dev/launcher"
	"ballena.dev/placement"
	"ballena.dev/placement/cellca"
)

// Real cells: `ballena server` processes with their own data dirs, Raft over
// mutual TLS, the API over HTTPS, killed with SIGKILL. Election and recovery
// times go to the test log; nothing asserts them.

// cellServer is one `ballena server` process of a test cell.
type cellServer struct {
	name, dir, tlsDir string
	api, raft         string        // host:port
	host              *testnet.Host // nil: loopback
	cmd               *exec.Cmd
	stderr            *lockedBuffer
	done              chan error
}

type procCell struct {
	t       *testing.T
	bin     string
	cellDir string
	servers []*cellServer
	admin   *placement.Client
}

// loopbackNet picks a /24 of 127.0.0.0/8 for one test cell: each server gets its
// own loopback address with the standard ports, so no port is guessed free and
// nothing else on the machine (which uses 127.0.0.1) can collide with it.
func loopbackNet() string {
	var b [2]byte
	rand.Read(b[:])
	return fmt.Sprintf("127.%d.%d.", 100+int(b[0])%100, b[1])
}

// newProcCell makes the cell directory and a certificate per server; hosts[i] is
// server i's namespace (nil entries, or a nil slice: loopback).
func newProcCell(t *testing.T, n int, hosts []*testnet.Host) *procCell {
	t.Helper()
	pc := &procCell{t: t, bin: ballenaBinary(t), cellDir: filepath.Join(t.TempDir(), "cell")}
	if code, _, msg := run(t, t.TempDir(), "cell", "init", "--out", pc.cellDir); code != 0 {
		t.Fatalf("cell init: %s", msg)
	}
	lo := loopbackNet()
	for i := range n {
		s := &cellServer{name: fmt.Sprintf("s%d", i+1), dir: t.TempDir()}
		addr := fmt.Sprintf("%s%d", lo, i+1)
		if hosts != nil && hosts[i] != nil {
			s.host = hosts[i]
			addr = s.host.Addr.String()
		}
		s.api, s.raft = addr+":7480", addr+":7481"
		s.tlsDir = filepath.Join(s.dir, "tls")
		if code, _, msg := run(t, t.TempDir(), "cell", "cert", "--cell", pc.cellDir, "--server", "--name", s.name,
			"--host", addr, "--out", s.tlsDir); code != 0 {
			t.Fatalf("cell cert: %s", msg)
		}
		pc.servers = append(pc.servers, s)
	}
	pool, err := cellca.LoadPool(filepath.Join(pc.cellDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := placement.ReadToken(filepath.Join(pc.cellDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if pc.admin, err = placement.NewClient(pc.urls(), tok, placement.WithTLS(cellca.ClientConfig(pool))); err != nil {
		t.Fatal(err)
	}
	pc.admin.FailoverWait = 30 * time.Second
	t.Cleanup(func() {
		for _, s := range pc.servers {
			pc.kill(s)
			if t.Failed() && s.stderr != nil {
				t.Logf("%s stderr (tail):\n%s", s.name, lastLines(s.stderr.String(), 40))
			}
		}
	})
	return pc
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (pc *procCell) urls() string {
	var u []string
	for _, s := range pc.servers {
		u = append(u, "https://"+s.api)
	}
	return strings.Join(u, ",")
}

// start runs server s; a new cell bootstraps with every other server in --join.
func (pc *procCell) start(s *cellServer, bootstrap bool) {
	pc.t.Helper()
	args := []string{"server", "--data", s.dir, "--listen", s.api, "--raft-listen", s.raft, "--cell", pc.cellDir,
		"--tls-dir", s.tlsDir, "--node-ttl", "10s", "--log-level", "debug"}
	if bootstrap {
		args = append(args, "--bootstrap-expect", fmt.Sprint(len(pc.servers)))
	}
	for _, o := range pc.servers {
		if o != s {
			args = append(args, "--join", o.raft)
		}
	}
	if s.host != nil {
		s.cmd = s.host.Command(context.Background(), pc.bin, args...)
	} else {
		s.cmd = exec.Command(pc.bin, args...)
	}
	s.stderr = &lockedBuffer{buf: &bytes.Buffer{}}
	s.cmd.Stderr = s.stderr
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		pc.t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		pc.t.Fatal(err)
	}
	s.done = make(chan error, 1)
	cmd := s.cmd
	go func() { s.done <- cmd.Wait() }()
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "placement server listening") {
				close(listening)
			}
		}
	}()
	select {
	case <-listening:
	case err := <-s.done:
		s.done <- err
		pc.t.Fatalf("%s exited at start: %v\n%s", s.name, err, s.stderr.String())
	case <-time.After(30 * time.Second):
		pc.t.Fatalf("%s did not listen within 30s\n%s", s.name, s.stderr.String())
	}
}

// startJoining starts a server that joins the running cell through via.
func (pc *procCell) startJoining(s, via *cellServer) {
	pc.t.Helper()
	saved := pc.servers
	pc.servers = []*cellServer{s, via} // --join names via only
	pc.start(s, false)
	pc.servers = saved
}

func (pc *procCell) startAll() {
	for _, s := range pc.servers {
		pc.start(s, true)
	}
}

// kill sends SIGKILL and reaps the process.
func (pc *procCell) kill(s *cellServer) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.done <- nil
	s.cmd = nil
}

// members asks the cell (any server of the list) for its servers.
func (pc *procCell) members(ctx context.Context) ([]placement.Member, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pc.admin.Members(ctx)
}

// leader waits until the cell names one leader that answers, and returns it.
func (pc *procCell) leader() *cellServer {
	pc.t.Helper()
	var lead *cellServer
	poll.Until(pc.t, 60*time.Second, "a leader", func() bool {
		ms, err := pc.members(context.Background())
		if err != nil {
			return false
		}
		lead = nil
		for _, m := range ms {
			if m.Leader && m.Healthy {
				for _, s := range pc.servers {
					if s.name == m.Name && s.cmd != nil {
						lead = s
					}
				}
			}
		}
		return lead != nil
	})
	return lead
}

// TestCellSurvivesKillingTheLeader: a 3-server cell and a node running two
// tasks. While jobs stream in, the leader gets SIGKILL. Afterwards every job
// whose submission got a 2xx is in the state, the tasks run on with the same
// PIDs, and the killed server, restarted, catches up as a follower.
func TestCellSurvivesKillingTheLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cell of three servers and a node")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: tasks run in cgroups and namespaces")
	}
	ctx := context.Background()
	pc := newProcCell(t, 3, nil)
	start := time.Now()
	pc.startAll()
	lead := pc.leader()
	t.Logf("cell of 3 formed; leader %s after %v", lead.name, time.Since(start).Round(time.Millisecond))

	// A node with two tasks, joined through the whole server list.
	dir := t.TempDir()
	nodeDir := filepath.Join(dir, "node")
	startNodeAt(t, "cellnode", nodeDir, "--server", pc.urls(), "--ca", filepath.Join(pc.cellDir, "ca.pem"),
		"--join-token-file", filepath.Join(pc.cellDir, "join.token"))
	if code, _, msg := run(t, nodeDir, "key", "generate", "--dir", dir, "release"); code != 0 {
		t.Fatal(msg)
	}
	policy := fmt.Sprintf("keys:\n  - path: %s\n    names: [\"hello\"]\n", filepath.Join(dir, "release.pub"))
	if err := os.WriteFile(filepath.Join(nodeDir, "trust.yaml"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(pc.bin, "publish", "--data", nodeDir, "--key", filepath.Join(dir, "release.key"),
		"--name", "hello", "--version", "1.0.0", sampleWhale(t)).CombinedOutput(); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	base := 21000 + os.Getpid()%20000
	if _, err := pc.admin.SubmitJob(ctx, &placement.Job{Name: "hello", Artifact: "hello@1.0.0", Count: 2,
		Resources: placement.Resources{CPU: 100, Memory: 64 << 20, PIDs: 64}, Priority: placement.BandProd,
		Args: []string{"--port-base", fmt.Sprint(base)}}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 90*time.Second, "2 running tasks", func() bool {
		st, err := pc.admin.JobStatus(ctx, "hello")
		return err == nil && st.Summary["running"] == 2
	})
	psTasks := func() map[string]int {
		out, err := exec.Command(pc.bin, "ps", "--json", "--data", nodeDir).Output()
		if err != nil {
			t.Fatalf("ps: %v", err)
		}
		var tasks []launcher.Task
		if err := json.Unmarshal(out, &tasks); err != nil {
			t.Fatalf("ps --json: %v", err)
		}
		pids := map[string]int{}
		for _, tk := range tasks {
			if !tk.State.Final() {
				pids[tk.ID] = tk.PID
			}
		}
		return pids
	}
	before := psTasks()
	if len(before) != 2 {
		t.Fatalf("tasks before the kill: %v", before)
	}

	// A stream of submissions (jobs too big to place: writes, no new tasks).
	var mu sync.Mutex
	var acked []string
	var firstAfterKill time.Time
	var killedAt time.Time
	stop := make(chan struct{})
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("stream-%04d", i)
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := pc.admin.SubmitJob(cctx, &placement.Job{Name: name, Artifact: "hello@1.0.0", Count: 1,
				Resources: placement.Resources{CPU: 1 << 40, Memory: 1 << 50}, Priority: placement.BandBatch})
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, name)
				if !killedAt.IsZero() && firstAfterKill.IsZero() {
					firstAfterKill = time.Now()
				}
				mu.Unlock()
			}
		}
	}()
	poll.Until(t, 30*time.Second, "some acknowledged submissions", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 20
	})
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	pc.kill(lead)
	next := pc.leader()
	elected := time.Since(killedAt)
	poll.Until(t, 60*time.Second, "a write accepted after the kill", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !firstAfterKill.IsZero()
	})
	poll.Until(t, 30*time.Second, "more acknowledged submissions", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return firstAfterKill.Before(time.Now().Add(-time.Second))
	})
	close(stop)
	<-streamDone
	t.Logf("leader %s killed (SIGKILL); %s leads %v later (seen through the API); first write accepted after %v; %d submissions acknowledged",
		lead.name, next.name, elected.Round(time.Millisecond), firstAfterKill.Sub(killedAt).Round(time.Millisecond), len(acked))

	// Every acknowledged submission is in the state.
	jobs, err := pc.admin.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, j := range jobs {
		have[j.Name] = true
	}
	for _, name := range acked {
		if !have[name] {
			t.Errorf("acknowledged job %s is missing after the failover", name)
		}
	}
	// The tasks never stopped: same IDs, same PIDs, and the cell still sees them running.
	after := psTasks()
	for id, pid := range before {
		if after[id] != pid {
			t.Errorf("task %s: pid %d before the failover, %d after", id, pid, after[id])
		}
	}
	if st, err := pc.admin.JobStatus(ctx, "hello"); err != nil || st.Summary["running"] != 2 {
		t.Errorf("hello after the failover: %v %v", err, st)
	}
	// The killed server comes back and catches up from the others.
	restarted := time.Now()
	pc.start(lead, false)
	var ms []placement.Member
	poll.Until(t, 60*time.Second, lead.name+" healthy and caught up", func() bool {
		ms, err = pc.members(ctx)
		if err != nil {
			return false
		}
		var top uint64
		var back *placement.Member
		for i := range ms {
			top = max(top, ms[i].LastIndex)
			if ms[i].Name == lead.name {
				back = &ms[i]
			}
		}
		return back != nil && back.Healthy && !back.Leader && back.LastIndex+2 >= top
	})
	t.Logf("%s restarted and caught up after %v", lead.name, time.Since(restarted).Round(time.Millisecond))
	// `server members --json` tells the same story to scripts.
	code, out, msg := run(t, t.TempDir(), "server", "members", "--json", "--server", pc.urls(),
		"--ca", filepath.Join(pc.cellDir, "ca.pem"), "--token-file", filepath.Join(pc.cellDir, "admin.token"))
	var listed []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 3 {
		t.Fatalf("server members --json: %d %s %s", code, out, msg)
	}
	leaders := 0
	for _, m := range listed {
		if m["leader"] == true {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("server members: %d leaders: %s", leaders, out)
	}
}

// TestCellFiveServersTwoDown: a 5-server cell keeps taking writes with two
// servers killed; `server remove` takes a dead one out.
func TestCellFiveServersTwoDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cell of five servers")
	}
	ctx := context.Background()
	pc := newProcCell(t, 5, nil)
	pc.startAll()
	lead := pc.leader()
	// The leader and one follower go.
	var dead *cellServer
	for _, s := range pc.servers {
		if s != lead {
			dead = s
			break
		}
	}
	killedAt := time.Now()
	pc.kill(lead)
	pc.kill(dead)
	for i := range 10 {
		if _, err := pc.admin.SubmitJob(ctx, job5(i)); err != nil {
			t.Fatalf("write %d with two of five servers down: %v", i, err)
		}
		if i == 0 {
			t.Logf("leader %s and %s killed; first write accepted after %v", lead.name, dead.name, time.Since(killedAt).Round(time.Millisecond))
		}
	}
	jobs, err := pc.admin.Jobs(ctx)
	if err != nil || len(jobs) != 10 {
		t.Fatalf("jobs: %v %d", err, len(jobs))
	}
	if code, out, msg := run(t, t.TempDir(), "server", "remove", dead.name, "--server", pc.urls(),
		"--ca", filepath.Join(pc.cellDir, "ca.pem"), "--token-file", filepath.Join(pc.cellDir, "admin.token")); code != 0 {
		t.Fatalf("server remove: %d %s %s", code, out, msg)
	}
	ms, err := pc.members(ctx)
	if err != nil || len(ms) != 4 {
		t.Fatalf("members after remove: %v %+v", err, ms)
	}
	for _, m := range ms {
		if m.Name == dead.name {
			t.Errorf("%s still a member after remove", dead.name)
		}
	}
	// A new server joins the running cell through any live one, catches up and
	// counts as a healthy voter.
	lo := strings.TrimSuffix(pc.servers[0].api, "1:7480")
	s6 := &cellServer{name: "s6", dir: t.TempDir(), api: lo + "6:7480", raft: lo + "6:7481"}
	s6.tlsDir = filepath.Join(s6.dir, "tls")
	if code, _, msg := run(t, t.TempDir(), "cell", "cert", "--cell", pc.cellDir, "--server", "--name", "s6",
		"--host", lo+"6", "--out", s6.tlsDir); code != 0 {
		t.Fatalf("cell cert: %s", msg)
	}
	var live *cellServer
	for _, s := range pc.servers {
		if s.cmd != nil {
			live = s
		}
	}
	pc.servers = append(pc.servers, s6)
	pc.startJoining(s6, live)
	poll.Until(t, 60*time.Second, "s6 a healthy voter with the jobs", func() bool {
		ms, err := pc.members(ctx)
		if err != nil {
			return false
		}
		var top uint64
		var m6 *placement.Member
		for i := range ms {
			top = max(top, ms[i].LastIndex)
			if ms[i].Name == "s6" {
				m6 = &ms[i]
			}
		}
		return len(ms) == 5 && m6 != nil && m6.Voter && m6.Healthy && m6.LastIndex+2 >= top
	})
}

func job5(i int) *placement.Job {
	return &placement.Job{Name: fmt.Sprintf("five-%d", i), Artifact: "hello@1.0.0", Count: 1,
		Resources: placement.Resources{CPU: 100, Memory: 64 << 20}, Priority: placement.BandProd}
}

// TestCellMinorityCannotCommit: three servers in three network namespaces; one
// follower is cut off. Writes sent to it fail with a clear "no leader" error
// (not a hang), the majority keeps committing, and once the link is back the
// follower catches up.
func TestCellMinorityCannotCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cell of three servers in namespaces")
	}
	nt := testnet.New(t, 3)
	pc := newProcCell(t, 3, nt.Hosts)
	pc.startAll()
	lead := pc.leaderNS(nt)
	var cut *cellServer
	for _, s := range pc.servers {
		if s != lead {
			cut = s
			break
		}
	}
	if err := cut.host.Cut(); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	// From inside the cut-off namespace, the CLI gets an answer, and it is "no leader".
	start := time.Now()
	code, out, msg := pc.cliIn(cut.host, cut.api, "job", "run", pc.jobFile(t, "minority"))
	if code == 0 || !strings.Contains(out+msg, "no leader") && !strings.Contains(out+msg, "no quorum") {
		t.Fatalf("write on the cut-off follower: exit %d %q %q, want a no leader / no quorum error", code, out, msg)
	}
	t.Logf("cut-off follower refused the write after %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(msg))
	// The majority still commits.
	for _, s := range pc.servers {
		if s != cut {
			if code, out, msg := pc.cliIn(s.host, s.api, "job", "run", pc.jobFile(t, "majority")); code != 0 {
				t.Fatalf("write on the majority side: %d %s %s", code, out, msg)
			}
			break
		}
	}
	if err := cut.host.Restore(); err != nil {
		t.Fatal(err)
	}
	t.Logf("link restored %v after the cut", time.Since(cutAt).Round(time.Millisecond))
	poll.Until(t, 60*time.Second, cut.name+" to catch up", func() bool {
		code, out, _ := pc.cliIn(cut.host, cut.api, "job", "status", "--json", "majority")
		return code == 0 && strings.Contains(out, `"majority"`)
	})
}

// leaderNS finds the leader by asking each server from inside its namespace.
func (pc *procCell) leaderNS(nt *testnet.Net) *cellServer {
	pc.t.Helper()
	var lead *cellServer
	poll.Until(pc.t, 60*time.Second, "a leader", func() bool {
		for _, s := range pc.servers {
			code, out, _ := pc.cliIn(s.host, s.api, "server", "members", "--json")
			if code != 0 {
				continue
			}
			var ms []placement.Member
			if json.Unmarshal([]byte(out), &ms) != nil {
				continue
			}
			for _, m := range ms {
				if m.Leader && m.Healthy {
					for _, o := range pc.servers {
						if o.name == m.Name {
							lead = o
							return true
						}
					}
				}
			}
		}
		return false
	})
	return lead
}

// cliIn runs a client command against api from inside host's namespace.
func (pc *procCell) cliIn(h *testnet.Host, api string, args ...string) (int, string, string) {
	pc.t.Helper()
	full := append(args, "--server", "https://"+api, "--ca", filepath.Join(pc.cellDir, "ca.pem"),
		"--token-file", filepath.Join(pc.cellDir, "admin.token"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := h.Command(ctx, pc.bin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		pc.t.Fatalf("run ballena %s: %v", strings.Join(args, " "), err)
	}
	return code, stdout.String(), stderr.String()
}

func (pc *procCell) jobFile(t *testing.T, name string) string {
	p := filepath.Join(t.TempDir(), name+".yaml")
	os.WriteFile(p, []byte("name: "+name+"\nartifact: hello@1.0.0\ncount: 1\nresources: {cpu: 100m, memory: 64MiB}\n"), 0o644)
	return p
}
