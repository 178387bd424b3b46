package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"ballena.dev/internal/timerslack"
)

func TestWhaleIsolation(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"ps", "a1"}, Env: []string{"GREETING=hi"}, Network: "none"})
	if tk.State != StateRunning && !tk.State.Final() {
		t.Fatalf("state after start: %s", tk.State)
	}
	tk = e.wait(tk.ID)
	if tk.State != StateExited || tk.Exit.Code != 0 {
		t.Fatalf("task ended %s %s; log:\n%s", tk.State, tk.Exit, e.logs(tk.ID))
	}
	var got struct {
		Pids         []int
		UID, GID     int
		Hostname     string
		Root         []string
		CapEff       string
		CapBnd       string
		NoNewPrivs   string
		TmpErr       string
		RootWritable string
		Args         []string
		Env          string
		Ifaces       []string
		Fds          []string
	}
	log := e.logs(tk.ID)
	if err := json.Unmarshal([]byte(strings.TrimSpace(log)), &got); err != nil {
		t.Fatalf("task output %q: %v", log, err)
	}
	if !slices.Equal(got.Pids, []int{1}) {
		t.Errorf("task sees PIDs %v, want only itself [1]", got.Pids)
	}
	if got.UID != 65534 || got.GID != 65534 {
		t.Errorf("task runs as %d:%d, want 65534:65534", got.UID, got.GID)
	}
	if got.CapEff != "0000000000000000" || got.CapBnd != "0000000000000000" {
		t.Errorf("capabilities effective %s bounding %s, want none", got.CapEff, got.CapBnd)
	}
	if got.NoNewPrivs != "1" {
		t.Errorf("NoNewPrivs = %q, want 1", got.NoNewPrivs)
	}
	if got.Hostname != "task" {
		t.Errorf("hostname %q, want task", got.Hostname)
	}
	slices.Sort(got.Root)
	// The whale is not in its root: init executes it from the verified descriptor.
	if want := []string{"dev", "etc", "proc", "tmp"}; !slices.Equal(got.Root, want) {
		t.Errorf("root holds %v, want %v", got.Root, want)
	}
	if got.TmpErr != "" || got.RootWritable != "" {
		t.Errorf("/tmp write error %q, root writable: %q", got.TmpErr, got.RootWritable)
	}
	// Beyond 0, 1 and 2, only what the task's own Go runtime opened: the
	// directory it was reading, its epoll and eventfd. No pipe, socket or file
	// of the launcher.
	for _, fd := range got.Fds {
		n, target, _ := strings.Cut(fd, "=")
		if n == "0" || n == "1" || n == "2" || target == "" /* the listing itself, closed since */ || strings.HasPrefix(target, "anon_inode:") || strings.HasPrefix(target, "/proc/") {
			continue
		}
		t.Errorf("task holds fd %s", fd)
	}
	if !slices.Equal(got.Ifaces, []string{"lo:true"}) {
		t.Errorf("with network none the task sees interfaces %v, want only lo, up", got.Ifaces)
	}
	var states []State
	for len(e.events) > 0 {
		states = append(states, (<-e.events).State)
	}
	if !slices.Equal(states, []State{StateRunning, StateExited}) {
		t.Errorf("events: %v, want running then exited", states)
	}
	if !slices.Equal(got.Args, []string{"a1"}) || got.Env != "hi" {
		t.Errorf("args %v env %q", got.Args, got.Env)
	}
	if e.l.List()[0].ID != tk.ID {
		t.Errorf("List does not hold the task")
	}
	assertNoCgroup(t, tk.Cgroup, "after exit")
}

// TestTaskTimerSlack: a node that widens its own timer slack starts its tasks
// with Config.TaskTimerSlack, not with its own.
func TestTaskTimerSlack(t *testing.T) {
	orig, err := timerslack.Get()
	if err != nil {
		t.Fatal(err)
	}
	const nodes = 3 * time.Millisecond // this process plays the node
	if err := timerslack.Set(nodes); err != nil {
		t.Skipf("cannot widen this process's timer slack: %v", err)
	}
	t.Cleanup(func() { timerslack.Set(orig) })

	for _, tc := range []struct {
		name      string
		tasks     time.Duration
		wantSlack time.Duration
	}{
		{"TaskTimerSlack set", orig, orig},
		{"unset: the node's own", 0, nodes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.TaskTimerSlack = tc.tasks })
			tk := e.wait(e.start(TaskSpec{Artifact: e.publishTask(), Args: []string{"ps"}, Network: "none"}).ID)
			var got struct{ TimerSlack string }
			if err := json.Unmarshal([]byte(strings.TrimSpace(e.logs(tk.ID))), &got); err != nil {
				t.Fatalf("task ended %s; output %q: %v", tk.State, e.logs(tk.ID), err)
			}
			if want := strconv.FormatInt(tc.wantSlack.Nanoseconds(), 10); got.TimerSlack != want {
				t.Errorf("task's timer slack %s ns, want %s", got.TimerSlack, want)
			}
		})
	}
}

func TestExitCodesAndRestart(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()

	tk := e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"exit", "3"}}).ID)
	if tk.State != StateExited || tk.Exit.Code != 3 || tk.Restarts != 0 {
		t.Errorf("never: got %s %s restarts %d, want exited 3 without restart", tk.State, tk.Exit, tk.Restarts)
	}

	// on-failure restarts a failing task until it is stopped.
	tk = e.start(TaskSpec{Artifact: ref, Args: []string{"exit", "4"}, Restart: RestartOnFailure})
	poll.Until(t, 20*time.Second, "3 restarts", func() bool {
		g, _ := e.l.Get(tk.ID)
		return g.Restarts >= 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tk, err := e.l.Stop(ctx, tk.ID, 0, time.Second)
	if err != nil || tk.State != StateStopped {
		t.Fatalf("stop: %v, state %s", err, tk.State)
	}

	// on-failure does not restart a clean exit; always does.
	tk = e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"exit", "0"}, Restart: RestartOnFailure}).ID)
	if tk.State != StateExited || tk.Restarts != 0 {
		t.Errorf("on-failure after exit 0: %s restarts %d", tk.State, tk.Restarts)
	}
	tk = e.start(TaskSpec{Artifact: ref, Args: []string{"exit", "0"}, Restart: RestartAlways})
	poll.Until(t, 20*time.Second, "2 restarts", func() bool {
		g, _ := e.l.Get(tk.ID)
		return g.Restarts >= 2
	})
	if tk, _ = e.l.Stop(ctx, tk.ID, 0, time.Second); tk.State != StateStopped {
		t.Errorf("stop always: state %s", tk.State)
	}
}

func TestMemoryHogIsOOMKilled(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"hog"}, MemoryBytes: 32 << 20}).ID)
	if tk.State != StateOOM || tk.Exit == nil || !tk.Exit.OOM || tk.Exit.Signal != "SIGKILL" {
		t.Fatalf("hog ended %s (%+v), want oom", tk.State, tk.Exit)
	}
}

func TestForkBombHitsPidsLimit(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	const limit = 32
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"bomb"}, Pids: limit, CPUMillis: 500})
	cg := newTaskCgroup(e.parent, tk.ID)
	pidsDir := cg.dir("pids")
	poll.Until(t, 20*time.Second, "the pids limit to refuse a fork", func() bool {
		kv, _ := readKV(filepath.Join(pidsDir, "pids.events"))
		return kv["max"] > 0
	})
	n, err := readInt(filepath.Join(pidsDir, "pids.current"))
	if err != nil || n > limit {
		t.Fatalf("pids.current = %d (%v), limit %d", n, err, limit)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tk, err = e.l.Stop(ctx, tk.ID, syscall.SIGTERM, 100*time.Millisecond)
	if err != nil || tk.State != StateStopped {
		t.Fatalf("stop bomb: %v, state %s", err, tk.State)
	}
	assertNoCgroup(t, cg.path, "after stop")
	// The machine still forks.
	if out, err := exec.Command("/bin/true").CombinedOutput(); err != nil {
		t.Fatalf("machine unhealthy after fork bomb: %v %s", err, out)
	}
}

func TestCPUQuotaHolds(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	const millis = 200
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"spin"}, CPUMillis: millis})
	cg := newTaskCgroup(e.parent, tk.ID)
	u0, err := cg.usage()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(1500 * time.Millisecond) // an interval to measure over, not a synchronisation
	u1, err := cg.usage()
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(t0).Seconds()
	used := u1.CPUSeconds - u0.CPUSeconds
	quota := float64(millis) / 1000 * wall
	t.Logf("spinner used %.3f CPU-seconds over %.2fs (quota %.3f)", used, wall, quota)
	if used <= 0 {
		t.Errorf("spinner used no CPU")
	}
	if used > 1.5*quota {
		t.Errorf("spinner used %.3fs CPU, more than 1.5x its quota of %.3fs", used, quota)
	}
}

func TestStopKillsGrandchildren(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"forker"}})
	cg := newTaskCgroup(e.parent, tk.ID)
	var pids []int
	poll.Until(t, 10*time.Second, "the grandchild", func() bool {
		pids, _ = cg.procs()
		if g, _ := e.l.Get(tk.ID); g.State.Final() {
			t.Fatalf("forker ended early: %s; log:\n%s", g.Exit, e.logs(tk.ID))
		}
		return len(pids) >= 2 && strings.Contains(e.logs(tk.ID), "child ready")
	})
	starts := map[int]uint64{}
	for _, p := range pids {
		starts[p], _ = procStartTime(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tk, err := e.l.Stop(ctx, tk.ID, syscall.SIGTERM, 300*time.Millisecond)
	if err != nil || tk.State != StateStopped {
		t.Fatalf("stop: %v, state %s", err, tk.State)
	}
	for p, s := range starts {
		if alive(p, s) {
			t.Errorf("process %d of the task survived stop", p)
		}
	}
	if tk.Exit == nil || tk.Exit.Signal != "SIGKILL" {
		t.Errorf("exit %+v, want killed by SIGKILL after the grace period", tk.Exit)
	}
}

func TestStopGraceful(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}, Restart: RestartAlways})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	poll.Until(t, 10*time.Second, "ready", func() bool { return strings.Contains(e.logs(tk.ID), "ready") })
	tk, err := e.l.Stop(ctx, tk.ID, syscall.SIGTERM, 10*time.Second)
	if err != nil || tk.State != StateStopped || tk.Exit.Code != 7 {
		t.Fatalf("stop: %v, state %s exit %s, want stopped with code 7", err, tk.State, tk.Exit)
	}
	if tk.Restarts != 0 {
		t.Errorf("a stopped task was restarted %d times", tk.Restarts)
	}
}

func TestLogsRotateAndFollow(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.LogMaxBytes = 4000; c.LogKeep = 2 })
	ref := e.publishTask()
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"spew", "200"}})
	rc, err := e.l.Logs(context.Background(), tk.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte)
	go func() {
		var b []byte
		buf := make([]byte, 1024)
		for {
			n, err := rc.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				break
			}
		}
		done <- b
	}()
	tk = e.wait(tk.ID)
	var followed []byte
	select {
	case followed = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end after the task did")
	}
	rc.Close()
	if !strings.Contains(string(followed), "line 199") {
		t.Errorf("followed log lacks the last line; %d bytes", len(followed))
	}
	dir := e.l.taskDir(tk.ID)
	for _, f := range []string{"log", "log.1", "log.2"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if st.Size() > 4000 {
			t.Errorf("%s is %d bytes, over the 4000 limit", f, st.Size())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "log.3")); err == nil {
		t.Errorf("log.3 kept; want 2 rotated files")
	}
	lines := strings.Split(strings.TrimSpace(e.logs(tk.ID)), "\n")
	if last := strings.TrimSpace(lines[len(lines)-1]); last != "line 199" {
		t.Errorf("last log line %q", last)
	}
	for i := 1; i < len(lines); i++ { // what is kept is in order, without gaps
		var a, b int
		_, _ = fmtSscan(lines[i-1], &a)
		_, _ = fmtSscan(lines[i], &b)
		if b != a+1 {
			t.Fatalf("log out of order at %q then %q", lines[i-1], lines[i])
		}
	}
}

// TestRefusals proves that a start refused by verification starts nothing:
// no process, no cgroup, no task record or directory.
func TestRefusals(t *testing.T) {
	cases := []struct {
		name  string
		setup func(e *testEnv) string // returns the ref to start
	}{
		{"tampered blob", func(e *testEnv) string {
			rel := e.publish(taskBinary(t), "task", "1.0.0", artifact.KindWhale)
			p := e.store.BlobPath(rel.Digest)
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("evil"))
			f.Close()
			return "task@1.0.0"
		}},
		{"untrusted key", func(e *testEnv) string {
			e.publishTask()
			other := t.TempDir()
			if _, _, _, err := signingWriteKeyPair(other, "other"); err != nil {
				t.Fatal(err)
			}
			e.writePolicy("threshold: 1\nkeys:\n  - path: " + filepath.Join(other, "other.pub") + "\n    names: [\"*\"]\n")
			return "task@1.0.0"
		}},
		{"revoked key", func(e *testEnv) string {
			e.publishTask()
			e.writePolicy("threshold: 1\nkeys:\n  - path: release.pub\n    names: [\"*\"]\nrevoked: [\"" + keyIDOf(t, e.pubPath) + "\"]\n")
			return "task@1.0.0"
		}},
		{"out of scope", func(e *testEnv) string {
			e.publishTask()
			e.writePolicy("threshold: 1\nkeys:\n  - path: release.pub\n    names: [\"api\"]\n")
			return "task@1.0.0"
		}},
		{"expired key", func(e *testEnv) string {
			e.publishTask()
			e.writePolicy("keys:\n  - path: release.pub\n    names: [\"*\"]\n    not_after: 2020-01-01T00:00:00Z\n")
			return "task@1.0.0"
		}},
		{"threshold", func(e *testEnv) string {
			e.publishTask()
			if _, _, _, err := signingWriteKeyPair(e.dir, "second"); err != nil {
				t.Fatal(err)
			}
			e.writePolicy("threshold: 2\nkeys:\n  - path: release.pub\n    names: [\"*\"]\n  - path: second.pub\n    names: [\"*\"]\n")
			return "task@1.0.0"
		}},
		{"rollback", func(e *testEnv) string {
			e.publish(taskBinary(t), "task", "2.0.0", artifact.KindWhale)
			if _, err := e.l.cfg.Verifier.Verify(context.Background(), "task@2.0.0"); err != nil {
				t.Fatal(err)
			}
			e.publishTask()
			return "task@1.0.0"
		}},
		{"no policy", func(e *testEnv) string {
			e.publishTask()
			os.Remove(e.policy)
			return "task@1.0.0"
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, nil)
			ref := c.setup(e)
			before := children()
			_, err := e.l.Start(context.Background(), TaskSpec{Artifact: ref, Args: []string{"serve"}})
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("start: %v, want a refusal", err)
			}
			t.Logf("refused: %v", err)
			if after := children(); len(after) > len(before) {
				t.Errorf("a process was started: children %v -> %v", before, after)
			}
			if n := len(e.l.List()); n != 0 {
				t.Errorf("%d task records after a refusal", n)
			}
			if ents, _ := os.ReadDir(filepath.Join(e.dir, "launcher", "tasks")); len(ents) != 0 {
				t.Errorf("task directories left: %v", ents)
			}
			if ents, _ := os.ReadDir(filepath.Join(e.dir, "launcher", "bin")); len(ents) != 0 {
				t.Errorf("the binary was staged for exec: %v", ents)
			}
			for _, c := range v1Controllers {
				if ents, err := os.ReadDir(filepath.Join(cgroupRoot, c, e.parent)); err == nil && len(ents) > 0 {
					for _, d := range ents {
						if d.IsDir() {
							t.Errorf("cgroup %s/%s/%s created", c, e.parent, d.Name())
						}
					}
				}
			}
		})
	}
}

func TestBadSpecs(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	for _, s := range []TaskSpec{
		{Artifact: "task"},
		{Artifact: ref, MemoryBytes: 1000},
		{Artifact: ref, Restart: "sometimes"},
		{Artifact: ref, User: "nobody"},
		{Artifact: ref, Network: "bridge"},
		{Artifact: ref, Hostname: strings.Repeat("h", 65)},
		{Artifact: ref, Env: []string{"NOEQUALS"}},
	} {
		if _, err := e.l.Start(context.Background(), s); !errors.Is(err, ErrInvalid) {
			t.Errorf("start %+v: %v, want ErrInvalid", s, err)
		}
	}
	if _, err := e.l.Start(context.Background(), TaskSpec{Artifact: "nope@1.0.0"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("start of a missing artifact: %v, want ErrNotFound", err)
	}
}

// TestRestartReverifies: a restart is a start, so it is verified again; a key
// revoked meanwhile stops the task from coming back.
func TestRestartReverifies(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}, Restart: RestartAlways})
	poll.Until(t, 10*time.Second, "ready", func() bool { return strings.Contains(e.logs(tk.ID), "ready") })
	e.writePolicy("threshold: 1\nkeys:\n  - path: release.pub\n    names: [\"*\"]\nrevoked: [\"" + keyIDOf(t, e.pubPath) + "\"]\n")
	if err := syscall.Kill(tk.PID, syscall.SIGTERM); err != nil { // the task ends on its own
		t.Fatal(err)
	}
	tk = e.wait(tk.ID)
	if tk.State != StateFailed || tk.Exit == nil || !strings.Contains(tk.Exit.Message, "revoked") || tk.Restarts != 0 {
		t.Fatalf("after revocation: %s %+v restarts %d; want failed, revoked, not restarted", tk.State, tk.Exit, tk.Restarts)
	}
}

func TestPrune(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"exit", "0"}}).ID)
	if dropped, err := e.l.Prune(); err != nil || len(dropped) != 0 {
		t.Fatalf("prune with a task that uses the binary: %v %v", dropped, err)
	}
	if err := e.l.Remove(tk.ID); err != nil {
		t.Fatal(err)
	}
	if dropped, err := e.l.Prune(); err != nil || len(dropped) != 1 || dropped[0] != tk.Digest {
		t.Fatalf("prune after remove: %v %v, want [%s]", dropped, err, tk.Digest)
	}
	if _, err := e.l.Get(tk.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed task still found: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	l := &Launcher{cfg: Config{RestartBackoff: time.Second, RestartBackoffMax: time.Minute}}
	var got []time.Duration
	for fails := range 9 {
		got = append(got, l.backoff(fails))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoff = %v, want doubling from 1s capped at 1m", got)
		}
	}
	if d := l.backoff(1000); d != time.Minute {
		t.Errorf("backoff(1000) = %v", d)
	}
}

// TestRootUserHasNoCapabilities: uid 0 inside a task is still powerless.
func TestRootUserHasNoCapabilities(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"ps"}, User: "0:0"}).ID)
	var got struct {
		UID                                      int
		CapEff, CapBnd, NoNewPrivs, RootWritable string
		Sysctl                                   string
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(e.logs(tk.ID))), &got); err != nil {
		t.Fatalf("%s: %v", e.logs(tk.ID), err)
	}
	if got.UID != 0 || got.CapEff != "0000000000000000" || got.CapBnd != "0000000000000000" || got.NoNewPrivs != "1" || got.RootWritable != "" {
		t.Errorf("uid 0 task: %+v", got)
	}
	// Read-only mount, and in a user namespace not its files either: host root owns them.
	if !strings.Contains(got.Sysctl, "read-only file system") && !strings.Contains(got.Sysctl, "permission denied") {
		t.Errorf("uid 0 task opening a sysctl for writing: %q, want read-only file system or permission denied", got.Sysctl)
	}
}
