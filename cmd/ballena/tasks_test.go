package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"ballena.dev/launcher"

	"ballena.dev/internal/cgtest"
	"ballena.dev/internal/testbin"
)

// TestMain lets this test binary serve as a task's shim and init, as the
// ballena binary does.
func TestMain(m *testing.M) {
	launcher.MaybeRunInit()
	if os.Getenv("BALLENA_TEST_MAIN") == "1" { // be the ballena binary, for signal tests
		os.Args = append([]string{"ballena"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// TestRunAttachedForwardsInterrupt: ^C on an attached run stops the task
// (SIGTERM, grace, SIGKILL) and ballena exits with the task's status.
func TestRunAttachedForwardsInterrupt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: tasks run in new namespaces and cgroups")
	}
	f := newFixture(t)
	parent := fmt.Sprintf("ballena-clitest-%d-int", os.Getpid())
	t.Cleanup(func() { cgtest.RemoveParent(parent) })
	trust := f.write(t, "trust.yaml", "keys:\n  - path: release.pub\n    names: [\"api\"]\n")
	cmd := exec.Command(os.Args[0], "--data", f.data, "run", "api@1.4.0", "--trust", trust, "--cgroup-parent", parent,
		"--stop-timeout", "500ms", "--", "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "BALLENA_TEST_MAIN=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Read while ballena may still be writing to it, on the failure paths.
	stderr := &lockedBuffer{buf: &bytes.Buffer{}}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	serving := make(chan bool, 1)
	stopped := make(chan bool, 1)
	go func() {
		ok, bye := false, false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), "serving on") {
				ok = true
				serving <- true
			}
			bye = bye || strings.Contains(sc.Text(), "hello: stopped")
		}
		if !ok {
			serving <- false
		}
		stopped <- bye
	}()
	select {
	case ok := <-serving:
		if !ok {
			t.Fatalf("the task never said it was serving; stderr: %s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("timed out waiting for the task to serve")
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("ballena run did not end after ^C")
	}
	// hello shuts down on the forwarded SIGTERM, says so, and exits 0, which
	// becomes ballena's own exit status.
	if err != nil {
		t.Fatalf("ballena run after ^C: %v, want the task's exit 0; stderr: %s", err, stderr.String())
	}
	if !<-stopped {
		t.Fatalf("the task never said it stopped: ^C was not forwarded as a stop; stderr: %s", stderr.String())
	}
}

func TestTasksCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: tasks run in new namespaces and cgroups")
	}
	f := newFixture(t)
	parent := fmt.Sprintf("ballena-clitest-%d", os.Getpid())
	t.Cleanup(func() { cgtest.RemoveParent(parent) })
	trust := f.write(t, "trust.yaml", "keys:\n  - path: release.pub\n    names: [\"api\"]\n")
	cg := "--cgroup-parent=" + parent

	// Flags after the artifact, task args after "--"; the task's exit code comes back.
	code, out, msg := run(t, f.data, "run", "api@1.4.0", "--memory", "64MiB", "--cpu", "500m", "--pids", "32", "--trust", trust, cg, "--", "--no-such-flag")
	if code != 2 || !strings.Contains(out, "flag provided but not defined") {
		t.Errorf("run with a bad task flag: exit %d (%s), output %q; want the task's exit 2 and its complaint", code, msg, out)
	}

	// Detached, then ps, logs, stop.
	code, out, msg = run(t, f.data, "run", "-d", "api@1.4.0", "--trust", trust, cg, "--", "--listen", "127.0.0.1:0", "--message", "hi")
	if code != 0 {
		t.Fatalf("run -d: exit %d: %s", code, msg)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n") // a warning (no node runs), then the ID
	id := lines[len(lines)-1]
	code, out, msg = run(t, f.data, "ps", "--json", cg)
	var ts []launcher.Task
	if code != 0 || json.Unmarshal([]byte(out), &ts) != nil || len(ts) != 1 || ts[0].ID != id || ts[0].State != launcher.StateRunning {
		t.Fatalf("ps --json: exit %d (%s): %s", code, msg, out)
	}
	if ts[0].Spec.MemoryBytes != 512<<20 || ts[0].Usage == nil {
		t.Errorf("ps: limits or usage missing: %+v", ts[0])
	}
	_, out, _ = run(t, f.data, "ps", cg)
	mustContain(t, out, "ID", "ARTIFACT", id, "api@1.4.0", "running")
	waitLog := func() string {
		for range 100 {
			_, out, _ := run(t, f.data, "logs", id[:6], cg)
			if strings.Contains(out, "serving on") {
				return out
			}
			time.Sleep(50 * time.Millisecond)
		}
		return ""
	}
	if out := waitLog(); out == "" {
		t.Errorf("logs never showed the task's output")
	}
	// hello logs to stderr: the streams are kept apart.
	if _, out, _ := run(t, f.data, "logs", "--stdout", id, cg); strings.Contains(out, "serving on") {
		t.Errorf("logs --stdout shows stderr: %q", out)
	}
	if _, out, _ := run(t, f.data, "logs", "--stderr", id, cg); !strings.Contains(out, "serving on") {
		t.Errorf("logs --stderr: %q", out)
	}
	if _, out, _ := run(t, f.data, "logs", "--json", id, cg); !strings.Contains(out, `{"stream":"stderr","line":"`) {
		t.Errorf("logs --json: %q", out)
	}
	// ps and inspect show how the task is confined.
	_, out, _ = run(t, f.data, "ps", cg)
	mustContain(t, out, "ISOLATION", "seccomp,userns")
	_, out, _ = run(t, f.data, "inspect", id, cg)
	mustContain(t, out, "seccomp:", "default filter", "user namespace:", "uids and gids 0-65535", "user:", "65534:65534")
	code, out, msg = run(t, f.data, "stop", id, "--timeout", "5s", cg)
	if code != 0 || !strings.Contains(out, "stopped") {
		t.Errorf("stop: exit %d (%s): %s", code, msg, out)
	}

	// The seccomp opt-out is shown by ps and inspect.
	code, out, msg = run(t, f.data, "run", "-d", "api@1.4.0", "--seccomp", "unconfined", "--trust", trust, cg, "--", "--listen", "127.0.0.1:0")
	if code != 0 {
		t.Fatalf("run -d --seccomp unconfined: exit %d: %s", code, msg)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	id = lines[len(lines)-1]
	_, out, _ = run(t, f.data, "ps", cg)
	mustContain(t, out, id, "SECCOMP-UNCONFINED")
	_, out, _ = run(t, f.data, "inspect", id, cg)
	mustContain(t, out, "UNCONFINED: no system call filter")
	if code, _, _ := run(t, f.data, "stop", id, "--timeout", "5s", cg); code != 0 {
		t.Errorf("stop unconfined task: exit %d", code)
	}
	if code, _, _ := run(t, f.data, "run", "api@1.4.0", "--seccomp", "off", cg); code != exitUsage {
		t.Errorf("run --seccomp off: exit %d, want %d", code, exitUsage)
	}

	// Refused by the trust policy: exit 3, nothing runs.
	other := f.write(t, "other-trust.yaml", "keys:\n  - path: other.pub\n    names: [\"*\"]\n")
	if code, _, msg := run(t, f.data, "run", "api@1.4.0", "--trust", other, cg); code != exitVerify {
		t.Errorf("run with an untrusted key: exit %d (%s), want %d", code, msg, exitVerify)
	}
	if code, _, _ := run(t, f.data, "stop", "nosuchtask", cg); code != exitNotFound {
		t.Errorf("stop of a missing task: exit %d, want %d", code, exitNotFound)
	}
	if code, _, _ := run(t, f.data, "run", "api@1.4.0", "--memory", "lots", cg); code != exitUsage {
		t.Errorf("run --memory lots: exit %d, want %d", code, exitUsage)
	}
}
