package launcher

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/testnet"
	"ballena.dev/placement"
)

// agentCell is a real placement server on loopback and one machine's agent
// driving a real launcher, as `ballena node --server` wires them.
type agentCell struct {
	env   *testEnv
	admin *placement.Client
	srv   *placement.Server
}

func newAgentCell(t *testing.T) *agentCell {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	env := newEnv(t, nil)
	srv, err := placement.Open(placement.Options{Dir: t.TempDir(), AdminToken: "admin", JoinToken: "join", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() }) // after the HTTP server below is closed
	url := testnet.Serve(t, srv.Handler())
	admin, err := placement.NewClient(url, "admin")
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	nc, err := placement.NewNodeClient(url, "join", key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ag := NewAgent(AgentConfig{
		Placement: nc, Logger: quiet,
		// The artifact is already in this machine's store; the swarm's fetch is
		// tested in swarm and end to end in cmd/ballena.
		Fetch: func(ctx context.Context, ref artifact.Ref) error {
			_, _, err := env.store.Release(ref)
			return err
		},
		Holdings:  func() []string { return nil },
		Capacity:  placement.Resources{CPU: 2000, Memory: 4 << 30, PIDs: 4096},
		Labels:    map[string]string{"rack": "r1"},
		StopGrace: 5 * time.Second,
	})
	env.l.cfg.OnEvent = ag.Observe
	done := make(chan struct{})
	go func() { ag.Run(ctx, env.l); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &agentCell{env: env, admin: admin, srv: srv}
}

// waitJob polls the job's status until ok says so; the server's state is the
// event here, and every poll is a real API read.
func (c *agentCell) waitJob(t *testing.T, name string, ok func(*placement.JobStatus) bool) *placement.JobStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.admin.JobStatus(context.Background(), name)
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not converge: %+v (err %v)", name, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func submit(t *testing.T, c *agentCell, yaml string) {
	t.Helper()
	job, err := placement.ParseJob("job.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.admin.SubmitJob(context.Background(), job); err != nil {
		t.Fatal(err)
	}
}

func running(n int) func(*placement.JobStatus) bool {
	return func(st *placement.JobStatus) bool { return st.Summary["running"] == n }
}

func TestAgentRunsAssignedTasks(t *testing.T) {
	c := newAgentCell(t)
	c.env.publishTask()
	submit(t, c, "name: svc\nartifact: task@1.0.0\ncount: 2\nresources: {cpu: 100m, memory: 64MiB, pids: 64}\npriority: prod\nargs: [serve]\n")
	c.waitJob(t, "svc", running(2))
	live := 0
	for _, tk := range c.env.l.List() {
		if tk.State == StateRunning && tk.Spec.Labels[allocLabel] != "" {
			live++
			if tk.Spec.MemoryBytes != 64<<20 || tk.Spec.CPUMillis != 100 {
				t.Errorf("task %s limits %d/%d, want the job's", tk.ID, tk.Spec.MemoryBytes, tk.Spec.CPUMillis)
			}
		}
	}
	if live != 2 {
		t.Fatalf("%d tasks run on the machine, want 2", live)
	}

	if _, err := c.admin.StopJob(context.Background(), "svc"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := 0
		for _, tk := range c.env.l.List() {
			if !tk.State.Final() {
				n++
			}
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tasks still run after job stop", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAgentRefusesUnverifiedAndReportsWhy(t *testing.T) {
	c := newAgentCell(t)
	c.env.publishTask()
	c.env.writePolicy("keys:\n  - path: release.pub\n    names: [\"other-*\"]\n")
	submit(t, c, "name: svc\nartifact: task@1.0.0\ncount: 1\nresources: {cpu: 100m, memory: 64MiB}\npriority: prod\nargs: [serve]\n")
	st := c.waitJob(t, "svc", func(st *placement.JobStatus) bool {
		for _, ts := range st.Tasks {
			if strings.Contains(ts.Message, "may not sign") {
				return true
			}
		}
		return false
	})
	for _, tk := range c.env.l.List() {
		t.Errorf("a task was created despite the refusal: %+v", tk)
	}
	_ = st
}

// An update to a version that fails verification starts nothing of it: the
// rollout stops at the first replacement, which reports why, and the other
// task keeps running the old version.
func TestAgentUpdateHaltsOnRefusal(t *testing.T) {
	c := newAgentCell(t)
	c.env.publishTask()
	_, rogue, _ := ed25519.GenerateKey(nil)
	if _, _, err := artifact.Publish(context.Background(), c.env.store, taskBinary(t), artifact.PublishOptions{
		Name: "task", Version: "2.0.0", Keys: []ed25519.PrivateKey{rogue}}); err != nil {
		t.Fatal(err)
	}
	job := "name: svc\nartifact: task@%s\ncount: 2\nresources: {cpu: 100m, memory: 64MiB}\npriority: prod\nargs: [serve]\nupdate: {max_parallel: 1}\n"
	submit(t, c, fmt.Sprintf(job, "1.0.0"))
	c.waitJob(t, "svc", running(2))
	submit(t, c, fmt.Sprintf(job, "2.0.0"))
	c.waitJob(t, "svc", func(st *placement.JobStatus) bool {
		for _, ts := range st.Tasks {
			if strings.Contains(ts.Message, "not in trust policy") {
				return st.Summary["running"] == 1
			}
		}
		return false
	})
	for _, tk := range c.env.l.List() {
		if tk.Spec.Artifact != "task@1.0.0" {
			t.Errorf("started %s, which fails verification", tk.Spec.Artifact)
		}
	}
}

// A job's isolation reaches the task: network none (the host's loopback
// listener is out of reach), the seccomp opt-out, the user, the limits.
func TestAgentAppliesJobIsolation(t *testing.T) {
	c := newAgentCell(t)
	c.env.publishTask()
	ln := testnet.Loopback(t)
	submit(t, c, fmt.Sprintf("name: iso\nartifact: task@1.0.0\nresources: {cpu: 100m, memory: 64MiB}\nrestart: never\n"+
		"network: none\nseccomp: unconfined\nuser: \"0:0\"\nlimits: {nofile: 100}\nargs: [probe, %q]\n", ln.Addr().String()))
	c.waitJob(t, "iso", func(st *placement.JobStatus) bool { return st.Summary["done"] == 1 })
	tasks := c.env.l.List()
	if len(tasks) != 1 {
		t.Fatalf("%d tasks, want 1", len(tasks))
	}
	tk := tasks[0]
	var r probeReport
	if err := json.Unmarshal([]byte(strings.TrimSpace(c.env.logs(tk.ID))), &r); err != nil {
		t.Fatalf("probe output %q: %v", c.env.logs(tk.ID), err)
	}
	if tk.Spec.Network != "none" || r.Dial == "connected" {
		t.Errorf("network none: spec %q, dial to the host's loopback %q", tk.Spec.Network, r.Dial)
	}
	if tk.Seccomp != SeccompUnconfined || r.Seccomp != "0" {
		t.Errorf("seccomp: unconfined: record %q, status %q", tk.Seccomp, r.Seccomp)
	}
	if in, host, _ := uidMapOf(t, r.UIDMap); r.UID != 0 || in != 0 || host < defaultIDRangeStart {
		t.Errorf("user 0:0: uid %d, uid_map %q", r.UID, r.UIDMap)
	}
	if r.NoFile != "100/100" {
		t.Errorf("limits.nofile 100: %s", r.NoFile)
	}
}

// The digest a job pins is enforced by the node: another one is not started.
func TestAgentEnforcesPinnedDigest(t *testing.T) {
	c := newAgentCell(t)
	c.env.publishTask()
	other := strings.Repeat("cd", 32)
	submit(t, c, "name: pin\nartifact: task@1.0.0\ndigest: "+other+"\nresources: {cpu: 100m, memory: 64MiB}\nargs: [serve]\n")
	c.waitJob(t, "pin", func(st *placement.JobStatus) bool {
		for _, ts := range st.Tasks {
			if strings.Contains(ts.Message, "pinned to sha256:"+other) {
				return true
			}
		}
		return false
	})
	if n := len(c.env.l.List()); n != 0 {
		t.Errorf("%d tasks started for a job pinned to another digest", n)
	}
}

// A job's health check reaches the node, which runs it and reports health
// and the verdict to the server at once (job status shows them); a task
// whose check fails is killed and, with restart never, ends failed with the
// check's message.
func TestAgentReportsHealth(t *testing.T) {
	c := newAgentCell(t)
	c.env.publishTask()
	// The good job allows a slow start on a loaded machine (failures: 20).
	job := "name: %s\nartifact: task@1.0.0\nresources: {cpu: 100m, memory: 64MiB}\nrestart: never\nargs: [http, %s]\n" +
		"update: {min_healthy_time: 200ms, healthy_deadline: 1m}\n" +
		"check: {http: /healthz, port_env: PORT, interval: 100ms, failures: %d}\n"
	submit(t, c, fmt.Sprintf(job, "good", "ok", 20))
	submit(t, c, fmt.Sprintf(job, "bad", "sick", 2))
	st := c.waitJob(t, "good", func(st *placement.JobStatus) bool {
		return len(st.Tasks) == 1 && st.Tasks[0].Healthy != nil
	})
	if ts := st.Tasks[0]; !*ts.Healthy || ts.Health != placement.HealthHealthy || ts.ClientStatus != placement.ClientRunning {
		t.Errorf("good job's task: %+v, want running, healthy, verdict true", ts)
	}
	st = c.waitJob(t, "bad", func(st *placement.JobStatus) bool {
		return len(st.Tasks) == 1 && st.Tasks[0].ClientStatus == placement.ClientFailed
	})
	if ts := st.Tasks[0]; ts.Healthy == nil || *ts.Healthy || !strings.HasPrefix(ts.Message, "health check failed 2 times: GET http://127.0.0.1:") {
		t.Errorf("bad job's task: %+v, want failed by its check, verdict false", ts)
	}
}
