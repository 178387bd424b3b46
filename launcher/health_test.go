package launcher

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"ballena.dev/placement"
)

// passingCheck is a fast check for a task that should pass it: it allows a
// slow start on a loaded machine (40 failures) before it calls the task unhealthy.
func passingCheck(c placement.Check) *placement.Check {
	c.Failures = 40
	return fastCheck(c)
}

// fastCheck is a check that decides within a fraction of a second.
func fastCheck(c placement.Check) *placement.Check {
	c.Interval, c.Timeout = 50*time.Millisecond, 2*time.Second
	if c.Failures == 0 {
		c.Failures = 2
	}
	return &c
}

// await polls the task until cond holds (a task's health has no event to
// await from outside the launcher but its record).
func (e *testEnv) await(id, what string, cond func(Task) bool) Task {
	e.t.Helper()
	var tk Task
	poll.Until(e.t, 60*time.Second, what, func() bool {
		var err error
		tk, err = e.l.Get(id)
		return err == nil && cond(tk)
	})
	return tk
}

// event waits for the launcher to emit a change of task id that cond accepts.
func (e *testEnv) event(id, what string, cond func(Task) bool) Task {
	e.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case tk := <-e.events:
			if tk.ID == id && cond(tk) {
				return tk
			}
		case <-timeout:
			e.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func healthIs(h string) func(Task) bool { return func(t Task) bool { return t.Health == h } }

func verdict(t Task) string {
	if t.Healthy == nil {
		return "none"
	}
	return strconv.FormatBool(*t.Healthy)
}

func portOf(t *testing.T, tk Task, key string) int {
	t.Helper()
	v, ok := envValue(tk.Spec.Env, key)
	if !ok {
		t.Fatalf("task %s has no %s in its env %v", tk.ID, key, tk.Spec.Env)
	}
	p, err := strconv.Atoi(v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// An HTTP check on a port the launcher picked (port_env): the task listens
// where the variable says, turns healthy, and gets its verdict once it has
// stayed healthy for MinHealthyTime. Two such tasks get distinct ports.
func TestHealthHTTPPortEnv(t *testing.T) {
	e := newEnv(t, nil)
	art := e.publishTask()
	spec := TaskSpec{Artifact: art, Args: []string{"http", "ok"}, Env: []string{"HEALTH_PORT_VAR=SVC_PORT"},
		Health: &HealthSpec{Check: passingCheck(placement.Check{HTTP: "/healthz", PortEnv: "SVC_PORT"}),
			MinHealthyTime: 200 * time.Millisecond, HealthyDeadline: time.Minute}}
	a, b := e.start(spec), e.start(spec)
	pa, pb := portOf(t, a, "SVC_PORT"), portOf(t, b, "SVC_PORT")
	if pa == pb {
		t.Errorf("two tasks got port %d", pa)
	}
	if a.Health != placement.HealthStarting || a.Healthy != nil {
		t.Errorf("a new task: health %q verdict %s, want starting and none", a.Health, verdict(a))
	}
	for _, tk := range []Task{a, b} {
		got := e.await(tk.ID, "the task to be healthy", func(t Task) bool { return t.Healthy != nil })
		if verdict(got) != "true" || got.Health != placement.HealthHealthy {
			t.Errorf("task %s: health %q verdict %s, want healthy and true", tk.ID, got.Health, verdict(got))
		}
		if want := fmt.Sprintf("listening %d", portOf(t, tk, "SVC_PORT")); !strings.Contains(e.logs(tk.ID), want) {
			t.Errorf("task %s log %q, want %q", tk.ID, e.logs(tk.ID), want)
		}
	}
	// A port the spec sets is kept.
	spec.Env = append(spec.Env, fmt.Sprintf("SVC_PORT=%d", freePort(t)))
	c := e.start(spec)
	if v, _ := envValue(c.Spec.Env, "SVC_PORT"); v != strings.TrimPrefix(spec.Env[len(spec.Env)-1], "SVC_PORT=") || strings.Count(strings.Join(c.Spec.Env, " "), "SVC_PORT=") != 1 {
		t.Errorf("env %v, want the spec's SVC_PORT alone", c.Spec.Env)
	}
	e.await(c.ID, "the task with a set port to be healthy", healthIs(placement.HealthHealthy))
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// A check that fails Failures times in a row turns the task unhealthy, and
// the run ends as a failure even though the task exits 0 on SIGTERM: with
// on-failure it restarts (counted), with never it ends failed, and the
// message says which check failed and how.
func TestHealthUnhealthyRestartsByPolicy(t *testing.T) {
	e := newEnv(t, nil)
	art := e.publishTask()
	check := fastCheck(placement.Check{HTTP: "/healthz", PortEnv: "PORT"})
	restarts := e.start(TaskSpec{Artifact: art, Args: []string{"http", "sick-after", "2"}, Restart: RestartOnFailure,
		Health: &HealthSpec{Check: check, MinHealthyTime: time.Hour}})
	never := e.start(TaskSpec{Artifact: art, Args: []string{"http", "sick"}, Restart: RestartNever,
		Health: &HealthSpec{Check: check, MinHealthyTime: time.Hour}})

	// (A run that was slow to listen may fail on "connection refused" first:
	// the policy restarts it too.)
	got := e.event(restarts.ID, "the end of a run unhealthy on 500s", func(t Task) bool {
		return t.State == StateRestarting && t.Exit != nil && strings.HasSuffix(t.Exit.Message, "500 Internal Server Error")
	})
	port := portOf(t, restarts, "PORT")
	want := fmt.Sprintf("health check failed 2 times: GET http://127.0.0.1:%d/healthz: 500 Internal Server Error", port)
	if got.Exit == nil || !got.Exit.Unhealthy || got.Exit.Message != want {
		t.Errorf("exit of the unhealthy run: %+v, want unhealthy with %q", got.Exit, want)
	}
	// It was healthy, then unhealthy before MinHealthyTime: the verdict is false, for good.
	if verdict(got) != "false" || portOf(t, got, "PORT") != port {
		t.Errorf("after the restart: verdict %s port %d, want false and %d", verdict(got), portOf(t, got, "PORT"), port)
	}
	got = e.await(restarts.ID, "the restarted run to pass its check", healthIs(placement.HealthHealthy))
	if got.Restarts < 1 || verdict(got) != "false" {
		t.Errorf("restarted: %d restarts, verdict %s; want at least 1 and false still", got.Restarts, verdict(got))
	}

	end := e.wait(never.ID)
	if end.State != StateExited || end.Exit == nil || !end.Exit.Unhealthy || !strings.HasPrefix(end.Exit.Message, "health check failed 2 times: GET") ||
		end.Restarts != 0 || verdict(end) != "false" || end.Health != "" {
		t.Errorf("restart never: %s restarts %d exit %+v verdict %s health %q", end.State, end.Restarts, end.Exit, verdict(end), end.Health)
	}
	if st := taskState("a1", end); st.State != placement.ClientFailed || st.Message != end.Exit.Message || st.Healthy == nil || *st.Healthy {
		t.Errorf("reported as %+v, want failed with the check's message and healthy=false", st)
	}
	if !strings.Contains(e.logs(never.ID), "term") {
		t.Errorf("the unhealthy task was not sent SIGTERM first: %q", e.logs(never.ID))
	}
}

// TCP checks: a listener passes; a task that listens nowhere fails with
// the dial's error.
func TestHealthTCP(t *testing.T) {
	e := newEnv(t, nil)
	art := e.publishTask()
	ok := e.start(TaskSpec{Artifact: art, Args: []string{"http", "ok"},
		Health: &HealthSpec{Check: passingCheck(placement.Check{TCP: true, PortEnv: "PORT"})}})
	port := freePort(t)
	bad := e.start(TaskSpec{Artifact: art, Args: []string{"serve"},
		Health: &HealthSpec{Check: fastCheck(placement.Check{TCP: true, Port: port})}})
	got := e.await(ok.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })
	if verdict(got) != "true" || got.Health != placement.HealthHealthy {
		t.Errorf("listening task: health %q verdict %s", got.Health, verdict(got))
	}
	end := e.wait(bad.ID)
	want := fmt.Sprintf("health check failed 2 times: tcp 127.0.0.1:%d: ", port)
	if end.Exit == nil || !end.Exit.Unhealthy || !strings.HasPrefix(end.Exit.Message, want) || !strings.Contains(end.Exit.Message, "refused") {
		t.Errorf("task listening nowhere: %+v, want %q... connection refused", end.Exit, want)
	}
}

// The verdict is false when HealthyDeadline passes before the task has been
// healthy for MinHealthyTime, while the task runs on (its check has not
// failed often enough to kill it).
func TestHealthVerdictDeadline(t *testing.T) {
	e := newEnv(t, nil)
	art := e.publishTask()
	c := fastCheck(placement.Check{HTTP: "/healthz", PortEnv: "PORT", Failures: 1 << 20})
	tk := e.start(TaskSpec{Artifact: art, Args: []string{"http", "sick"},
		Health: &HealthSpec{Check: c, MinHealthyTime: 100 * time.Millisecond, HealthyDeadline: 300 * time.Millisecond}})
	got := e.await(tk.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })
	if verdict(got) != "false" || got.State != StateRunning || got.Health != placement.HealthStarting {
		t.Errorf("past its deadline: %s health %q verdict %s, want running, starting, false", got.State, got.Health, verdict(got))
	}
	// Without a check, running is healthy: the verdict comes after MinHealthyTime.
	plain := e.start(TaskSpec{Artifact: art, Args: []string{"serve"}, Health: &HealthSpec{MinHealthyTime: 100 * time.Millisecond}})
	if plain.Health != placement.HealthHealthy {
		t.Errorf("a task without a check starts %q, want healthy", plain.Health)
	}
	got = e.await(plain.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })
	if verdict(got) != "true" {
		t.Errorf("a running task without a check: verdict %s", verdict(got))
	}
	// One that exits before MinHealthyTime: false.
	quick := e.wait(e.start(TaskSpec{Artifact: art, Args: []string{"exit", "0"}, Health: &HealthSpec{MinHealthyTime: time.Hour}}).ID)
	if verdict(quick) != "false" {
		t.Errorf("a task that exited at once: verdict %s", verdict(quick))
	}
}

// An exec check of a whale runs inside the task: as its user, in its UTS
// namespace and cgroup, under its seccomp filter with no capabilities. One
// whose command fails makes the task unhealthy with the command's output.
func TestHealthExecWhale(t *testing.T) {
	e := newEnv(t, nil)
	art := e.publishTask()
	spec := func(expectUID string) TaskSpec {
		return TaskSpec{Artifact: art, Args: []string{"serve"}, User: "1000:1000", Hostname: "checked",
			Health: &HealthSpec{Check: fastCheck(placement.Check{Exec: []string{"/proc/1/exe", "incheck", expectUID, "checked", e.parent}})}}
	}
	ok := e.start(spec("1000"))
	got := e.await(ok.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })
	if verdict(got) != "true" {
		t.Fatalf("exec check in the task: health %q verdict %s exit %+v", got.Health, verdict(got), got.Exit)
	}
	bad := e.wait(e.start(spec("0")).ID)
	want := "health check failed 2 times: exec /proc/1/exe incheck 0 checked " + e.parent + ": exit status 1: in check: uid 1000"
	if bad.Exit == nil || !bad.Exit.Unhealthy || bad.Exit.Message != want {
		t.Errorf("failing exec check: %+v, want %q", bad.Exit, want)
	}
	// A command that outlives its timeout is killed, and the check fails.
	slow := TaskSpec{Artifact: art, Args: []string{"serve"},
		Health: &HealthSpec{Check: fastCheck(placement.Check{Exec: []string{"/proc/1/exe", "serve"}})}}
	slow.Health.Check.Timeout = 300 * time.Millisecond
	end := e.wait(e.start(slow).ID)
	want = "health check failed 2 times: exec /proc/1/exe serve: timed out after 300ms"
	if end.Exit == nil || !end.Exit.Unhealthy || end.Exit.Message != want {
		t.Errorf("exec check past its timeout: %+v, want %q", end.Exit, want)
	}
}

// HTTP and TCP checks of a task with its own network namespace run inside
// it: its loopback is not the host's, where nothing listens on its port.
func TestHealthInsideNetworkNone(t *testing.T) {
	e := newEnv(t, nil)
	art := e.publishTask()
	httpTask := e.start(TaskSpec{Artifact: art, Args: []string{"http", "ok"}, Network: "none",
		Health: &HealthSpec{Check: passingCheck(placement.Check{HTTP: "/healthz", PortEnv: "PORT"})}})
	tcpTask := e.start(TaskSpec{Artifact: art, Args: []string{"http", "ok"}, Network: "none",
		Health: &HealthSpec{Check: passingCheck(placement.Check{TCP: true, PortEnv: "PORT"})}})
	for _, tk := range []Task{httpTask, tcpTask} {
		got := e.await(tk.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })
		if verdict(got) != "true" {
			t.Errorf("check inside network none: health %q verdict %s exit %+v", got.Health, verdict(got), got.Exit)
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", portOf(t, tk, "PORT")), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("the task's port is reachable from the host: the test proves nothing")
		}
	}
	// An exec check enters the network namespace too: it reaches the
	// task's loopback listener (its port from the task's environment).
	execTask := e.start(TaskSpec{Artifact: art, Args: []string{"http", "ok"}, Network: "none",
		Health: &HealthSpec{Check: passingCheck(placement.Check{Exec: []string{"/proc/1/exe", "dial-env", "PORT"}, PortEnv: "PORT"})}})
	got := e.await(execTask.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })
	if verdict(got) != "true" {
		t.Errorf("exec check inside network none: health %q verdict %s exit %+v", got.Health, verdict(got), got.Exit)
	}
}

// A restarted launcher keeps the verdict, the health and the picked port of
// the tasks it adopts, and a later restart of the task changes neither the
// verdict nor the port.
func TestHealthSurvivesLauncherRestart(t *testing.T) {
	e := newEnv(t, nil)
	art := e.publishTask()
	tk := e.start(TaskSpec{Artifact: art, Args: []string{"http", "ok"}, Restart: RestartAlways,
		Health: &HealthSpec{Check: passingCheck(placement.Check{HTTP: "/healthz", PortEnv: "PORT"}), MinHealthyTime: 100 * time.Millisecond}})
	port := portOf(t, tk, "PORT")
	e.await(tk.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })

	cfg := e.l.cfg
	e.l.Close()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.l = l
	got, err := e.l.Get(tk.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.PID != tk.PID || verdict(got) != "true" || got.Health != placement.HealthHealthy {
		t.Errorf("adopted: pid %d (was %d) health %q verdict %s", got.PID, tk.PID, got.Health, verdict(got))
	}
	if err := syscall.Kill(got.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got = e.await(tk.ID, "the restart to be healthy", func(t Task) bool {
		return t.Restarts == 1 && t.Health == placement.HealthHealthy
	})
	if verdict(got) != "true" || portOf(t, got, "PORT") != port {
		t.Errorf("after a restart: verdict %s port %d, want true and %d", verdict(got), portOf(t, got, "PORT"), port)
	}
	if !strings.Contains(e.logs(tk.ID), fmt.Sprintf("listening %d", port)) {
		t.Errorf("the restarted run did not listen on %d: %q", port, e.logs(tk.ID))
	}
}

// An image task's exec check runs through runc exec: inside the container,
// as its user, in its cgroup, under its filter.
func TestHealthExecImage(t *testing.T) {
	requireRunc(t)
	e := newEnv(t, nil)
	e.publish(buildImage(t), "taskimg", "1.0.0", artifact.KindOCI)
	spec := func(expectUID string) TaskSpec {
		return TaskSpec{Artifact: "taskimg@1.0.0", Args: []string{"serve"}, Hostname: "imgcheck",
			Health: &HealthSpec{Check: fastCheck(placement.Check{Exec: []string{"/bin/task", "incheck", expectUID, "imgcheck", e.parent}})}}
	}
	ok := e.start(spec("65534"))
	got := e.await(ok.ID, "the verdict", func(t Task) bool { return t.Healthy != nil })
	if verdict(got) != "true" {
		t.Fatalf("exec check in the image task: health %q verdict %s exit %+v", got.Health, verdict(got), got.Exit)
	}
	bad := e.wait(e.start(spec("0")).ID)
	want := "health check failed 2 times: exec /bin/task incheck 0 imgcheck " + e.parent + ": exit status 1: in check: uid 65534"
	if bad.Exit == nil || !bad.Exit.Unhealthy || bad.Exit.Message != want {
		t.Errorf("failing exec check: %+v, want %q", bad.Exit, want)
	}
}
