package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"

	"ballena.dev/internal/cgtest"
)

// The reattach test runs launchers as separate processes (this test binary,
// re-executed) so that it can kill -9 them.
const (
	daemonEnv       = "_LAUNCHER_TEST_DAEMON"        // data dir
	daemonParentEnv = "_LAUNCHER_TEST_CGROUP_PARENT" // cgroup parent
	startSpecsEnv   = "_LAUNCHER_TEST_START"         // JSON []TaskSpec to start
)

// runTestDaemon is the first launcher: it starts the tasks named in
// startSpecsEnv, prints each as a JSON line, and runs until it is killed.
func runTestDaemon() int {
	dir := os.Getenv(daemonEnv)
	st, err := artifact.Open(filepath.Join(dir, "store"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	defer st.Close()
	l, err := New(Config{
		DataDir: dir, DB: st.DB(), CgroupParent: os.Getenv(daemonParentEnv),
		Verifier: &StoreVerifier{Store: st, PolicyPath: filepath.Join(dir, "trust.yaml")},
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	defer l.Close()
	var specs []TaskSpec
	if err := json.Unmarshal([]byte(os.Getenv(startSpecsEnv)), &specs); err != nil {
		fmt.Fprintln(os.Stderr, "daemon: specs:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	enc := json.NewEncoder(os.Stdout)
	for _, spec := range specs {
		tk, err := l.Start(ctx, spec)
		if err != nil {
			fmt.Fprintln(os.Stderr, "daemon: start:", err)
			return 1
		}
		enc.Encode(tk)
	}
	<-ctx.Done()
	return 0
}

// startDaemon runs a launcher in a process of its own on dir, has it start
// specs, and returns it with the tasks it started.
func startDaemon(t *testing.T, dir, parent string, specs []TaskSpec) (*exec.Cmd, []Task) {
	t.Helper()
	js, _ := json.Marshal(specs)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonEnv+"="+dir, daemonParentEnv+"="+parent, startSpecsEnv+"="+string(js))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("daemon %d stderr:\n%s", cmd.Process.Pid, stderr.String())
		}
	})
	// The pipe closes if the daemon dies: the decode fails instead of hanging.
	dec := json.NewDecoder(out)
	tasks := make([]Task, len(specs))
	for i := range tasks {
		if err := dec.Decode(&tasks[i]); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("daemon: task %d: %v\n%s", i, err, stderr.String())
		}
	}
	return cmd, tasks
}

func TestReattachAfterKill9(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	parent := fmt.Sprintf("ballena-test-%d-reattach", os.Getpid())
	t.Cleanup(func() { cgtest.RemoveParent(parent) })
	// Publish with the store open here, then hand the data dir to the daemons.
	e := &testEnv{t: t, dir: dir}
	st, err := artifact.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	if _, _, _, err := signingWriteKeyPair(dir, "release"); err != nil {
		t.Fatal(err)
	}
	e.priv = loadKey(t, filepath.Join(dir, "release.key"))
	e.policy = filepath.Join(dir, "trust.yaml")
	e.writePolicy("threshold: 1\nkeys:\n  - path: release.pub\n    names: [\"*\"]\n")
	e.publishTask()
	st.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	serve := TaskSpec{Artifact: "task@1.0.0", Args: []string{"serve"}}
	always := serve
	always.Restart = RestartAlways
	a, started := startDaemon(t, dir, parent, []TaskSpec{serve, serve, always})
	keep, dies, again := started[0], started[1], started[2]
	t.Cleanup(func() { // whatever happens, leave no task behind
		for _, tk := range []Task{keep, dies, again} {
			_ = newTaskCgroup(parent, tk.ID).destroy()
		}
	})

	for _, tk := range []Task{keep, dies, again} { // their SIGTERM handlers are in place
		poll.Until(t, 10*time.Second, "ready", func() bool { return logSize(t, dir, tk.ID) > int64(len("ready\n")) })
	}
	// kill -9 the launcher: its tasks run on.
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait()
	if !alive(keep.PID, keep.PIDStart) || !alive(dies.PID, dies.PIDStart) || !alive(again.PID, again.PIDStart) {
		t.Fatal("tasks died with their launcher")
	}
	// Two tasks end while no launcher watches: their shims record exit 7.
	for _, tk := range []Task{dies, again} {
		if err := syscall.Kill(tk.PID, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, 10*time.Second, "the task to end", func() bool { return !alive(tk.ShimPID, tk.ShimStart) })
	}
	logBefore := logSize(t, dir, keep.ID)

	// The second launcher, in this process, adopts what the first left.
	st, err = artifact.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := New(Config{
		DataDir: dir, DB: st.DB(), CgroupParent: parent,
		Verifier: &StoreVerifier{Store: st, PolicyPath: e.policy},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got, err := b.Get(keep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateRunning || got.PID != keep.PID || got.Restarts != 0 {
		t.Errorf("adopted task: state %s pid %d (was %d) restarts %d; want running, same pid, no restart",
			got.State, got.PID, keep.PID, got.Restarts)
	}
	if got.Usage == nil || got.Usage.MemoryBytes <= 0 {
		t.Errorf("adopted task has no usage: %+v", got.Usage)
	}
	pids, _ := newTaskCgroup(parent, keep.ID).procs()
	if len(pids) != 1 || pids[0] != keep.PID {
		t.Errorf("cgroup of the adopted task holds %v, want only %d", pids, keep.PID)
	}
	if pp := ppid(keep.PID); pp != keep.ShimPID || !alive(keep.ShimPID, keep.ShimStart) {
		t.Errorf("the adopted task's parent is %d, want its original shim %d", pp, keep.ShimPID)
	}
	poll.Until(t, 20*time.Second, "the dead task's end state", func() bool {
		got, _ = b.Get(dies.ID)
		return got.State.Final()
	})
	if got.State != StateExited || got.Exit == nil || got.Exit.Code != 7 {
		t.Errorf("task that ended meanwhile: %s %s, want exited with code 7", got.State, got.Exit)
	}
	// The one whose policy says always is restarted by the new launcher.
	poll.Until(t, 20*time.Second, "the restart", func() bool {
		got, _ = b.Get(again.ID)
		return got.Restarts == 1 && got.State == StateRunning
	})
	if got.PID == again.PID || !alive(got.PID, got.PIDStart) {
		t.Errorf("restarted task: pid %d (was %d) not a new live process", got.PID, again.PID)
	}
	if _, err := b.Stop(ctx, again.ID, syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// Its log keeps flowing without a launcher in between.
	poll.Until(t, 10*time.Second, "the adopted task's log to grow", func() bool { return logSize(t, dir, keep.ID) > logBefore })

	// The new launcher notices the adopted task's end (it is not its parent).
	stopped, err := b.Stop(ctx, keep.ID, syscall.SIGTERM, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.State != StateStopped || stopped.Exit == nil || stopped.Exit.Code != 7 {
		t.Errorf("stop of the adopted task: %s %s, want stopped with code 7", stopped.State, stopped.Exit)
	}
	rc, err := b.Logs(ctx, keep.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(rc)
	rc.Close()
	if !strings.Contains(string(body), "ready") || !strings.HasSuffix(string(body), "term\n") {
		t.Errorf("logs of the adopted task: %q...", firstN(string(body), 200))
	}
}

func logSize(t *testing.T, dir, id string) int64 {
	st, err := os.Stat(filepath.Join(dir, "launcher", "tasks", id, "log"))
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// ppid returns a process's parent PID, or 0.
func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	n, _ := strconv.Atoi(f[1])
	return n
}

func firstN(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
