package launcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
	"ballena.dev/internal/localapi"
	"ballena.dev/internal/poll"

	"ballena.dev/internal/cgtest"
)

// The reattach test runs launchers as separate processes (this test binary,
// re-executed) so that it can kill -9 them.
const (
	daemonEnv       = "_LAUNCHER_TEST_DAEMON"        // data dir
	daemonParentEnv = "_LAUNCHER_TEST_CGROUP_PARENT" // cgroup parent
)

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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	mux := http.NewServeMux()
	l.Routes(mux)
	if err := localapi.Serve(ctx, dir, mux); err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	return 0
}

// startDaemon runs a launcher daemon on dir and returns it with a client once
// its socket answers.
func startDaemon(t *testing.T, dir, parent string) (*exec.Cmd, *localapi.Client) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonEnv+"="+dir, daemonParentEnv+"="+parent)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
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
	var c *localapi.Client
	poll.Until(t, 20*time.Second, "the daemon's socket", func() bool {
		var err error
		c, err = localapi.Dial(dir)
		return err == nil
	})
	return cmd, c
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
	a, ca := startDaemon(t, dir, parent)
	var keep, dies, again Task
	for _, tk := range []*Task{&keep, &dies, &again} {
		spec := TaskSpec{Artifact: "task@1.0.0", Args: []string{"serve"}}
		if tk == &again {
			spec.Restart = RestartAlways
		}
		if err := ca.Do(ctx, "POST", "/v1/tasks", spec, tk); err != nil {
			t.Fatal(err)
		}
	}
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

	_, cb := startDaemon(t, dir, parent)
	var got Task // reset before each decode: fields left out would keep old values
	if err := cb.Do(ctx, "GET", "/v1/tasks/"+keep.ID, nil, &got); err != nil {
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
		got = Task{}
		_ = cb.Do(ctx, "GET", "/v1/tasks/"+dies.ID, nil, &got)
		return got.State.Final()
	})
	if got.State != StateExited || got.Exit == nil || got.Exit.Code != 7 {
		t.Errorf("task that ended meanwhile: %s %s, want exited with code 7", got.State, got.Exit)
	}
	// The one whose policy says always is restarted by the new launcher.
	poll.Until(t, 20*time.Second, "the restart", func() bool {
		got = Task{}
		_ = cb.Do(ctx, "GET", "/v1/tasks/"+again.ID, nil, &got)
		return got.Restarts == 1 && got.State == StateRunning
	})
	if got.PID == again.PID || !alive(got.PID, got.PIDStart) {
		t.Errorf("restarted task: pid %d (was %d) not a new live process", got.PID, again.PID)
	}
	if _, err := cb.Stream(ctx, "POST", "/v1/tasks/"+again.ID+"/stop", StopRequest{Timeout: "5s"}); err != nil {
		t.Fatal(err)
	}

	// Its log keeps flowing without a launcher in between.
	poll.Until(t, 10*time.Second, "the adopted task's log to grow", func() bool { return logSize(t, dir, keep.ID) > logBefore })

	// The new launcher notices the adopted task's end (it is not its parent).
	var stopped Task
	if err := cb.Do(ctx, "POST", "/v1/tasks/"+keep.ID+"/stop", StopRequest{Timeout: "5s"}, &stopped); err != nil {
		t.Fatal(err)
	}
	if stopped.State != StateStopped || stopped.Exit == nil || stopped.Exit.Code != 7 {
		t.Errorf("stop of the adopted task: %s %s, want stopped with code 7", stopped.State, stopped.Exit)
	}
	resp, err := cb.Stream(ctx, "GET", "/v1/tasks/"+keep.ID+"/logs", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "ready") || !strings.HasSuffix(string(body), "term\n") {
		t.Errorf("logs through the API: %q...", firstN(string(body), 200))
	}

	// Errors carry the codes the CLI maps to exit codes.
	var le *localapi.Error
	err = cb.Do(ctx, "POST", "/v1/tasks", TaskSpec{Artifact: "nope@1.0.0"}, nil)
	if !errors.As(err, &le) || le.Code != "notfound" {
		t.Errorf("start of a missing artifact: %v, want code notfound", err)
	}
	e.writePolicy("keys:\n  - path: release.pub\n    names: [\"other\"]\n")
	err = cb.Do(ctx, "POST", "/v1/tasks", TaskSpec{Artifact: "task@1.0.0"}, nil)
	if !errors.As(err, &le) || le.Code != "verify" {
		t.Errorf("start refused by the policy: %v, want code verify", err)
	}
	err = cb.Do(ctx, "POST", "/v1/tasks", TaskSpec{Artifact: "task@1.0.0", Restart: "sometimes"}, nil)
	if !errors.As(err, &le) || le.Code != "usage" {
		t.Errorf("bad spec: %v, want code usage", err)
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
