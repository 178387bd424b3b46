package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// adopt takes a task found in the records back under supervision.
func (l *Launcher) adopt(e *entry) {
	t := e.t
	switch {
	case t.State.Final():
		close(e.final)
	case t.State == StateRestarting:
		l.log.Info("resuming restart", "task", t.ID)
		l.wg.Go(func() { l.supervise(e, nil, false) })
	case alive(t.ShimPID, t.ShimStart):
		l.log.Info("adopted running task", "task", t.ID, "pid", t.PID)
		l.wg.Go(func() { l.supervise(e, l.pidWaiter(t.ShimPID, t.ShimStart), true) })
	case alive(t.PID, t.PIDStart) && !fileExists(l.exitPath(t.ID)):
		// The shim is gone but the task runs: watch the task itself; its
		// exit status will be lost.
		l.log.Warn("adopted task without its shim", "task", t.ID, "pid", t.PID)
		l.wg.Go(func() { l.supervise(e, l.pidWaiter(t.PID, t.PIDStart), true) })
	default:
		l.log.Info("task ended while the launcher was away", "task", t.ID)
		l.wg.Go(func() { l.supervise(e, nil, true) })
		return
	}
	if t.Stopping && !t.State.Final() && t.State != StateRestarting {
		// A Stop was under way when the launcher died: finish it.
		l.wg.Go(func() { _ = e.cg.killAll() })
	}
}

// childWaiter waits for a shim this launcher started.
func (l *Launcher) childWaiter(cmd *exec.Cmd) func() bool {
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return func() bool {
		select {
		case <-done:
			return true
		case <-l.ctx.Done():
			return false
		}
	}
}

// pidWaiter waits for a process that is not our child (adopted), via a pidfd.
func (l *Launcher) pidWaiter(pid int, start uint64) func() bool {
	return func() bool {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return true // already gone
		}
		defer unix.Close(fd)
		if !alive(pid, start) { // the PID was reused before we opened it
			return true
		}
		for {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 200)
			if n > 0 {
				return true
			}
			if err != nil && err != unix.EINTR {
				return true
			}
			if l.ctx.Err() != nil {
				return false
			}
		}
	}
}

// supervise watches a task through its runs: it waits for the run to end,
// records how, and restarts by policy. collect false skips straight to the
// restart (a task found waiting out its backoff).
func (l *Launcher) supervise(e *entry, wait func() bool, collect bool) {
	fails := 0
	for {
		if collect {
			if wait != nil {
				stop := l.watchHealth(e)
				ended := wait()
				stop()
				if !ended {
					return // the launcher is closing; the task runs on
				}
			}
			restart := l.endRun(e)
			if !restart {
				close(e.final)
				return
			}
			if t := l.snapshot(e); time.Since(t.StartedAt) > 10*l.cfg.RestartBackoff {
				fails = 0
			}
		}
		collect = true
		d := l.backoff(fails)
		fails++
		select {
		case <-time.After(d):
		case <-e.wake:
			l.finish(e, StateStopped, nil)
			return
		case <-l.ctx.Done():
			return
		}
		cmd, err := l.restart(e)
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			l.log.Error("restart failed", "task", e.t.ID, "digest", l.snapshot(e).Digest, "err", err)
			l.finish(e, StateFailed, &ExitInfo{Code: -1, At: time.Now().UTC(), Message: "restart: " + err.Error()})
			return
		}
		wait = l.childWaiter(cmd)
	}
}

// backoff is the delay before a restart after fails quick failures in a row:
// RestartBackoff doubling, capped at RestartBackoffMax.
func (l *Launcher) backoff(fails int) time.Duration {
	return min(l.cfg.RestartBackoff<<min(fails, 20), l.cfg.RestartBackoffMax)
}

func (l *Launcher) restart(e *entry) (*exec.Cmd, error) {
	t := l.snapshot(e)
	if t.Stopping {
		return nil, errors.New("stopping")
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*time.Minute)
	defer cancel()
	verify := l.cfg.Verifier.Verify
	if rv, ok := l.cfg.Verifier.(RestartVerifier); ok {
		verify = rv.VerifyRestart // a key that expired since the first start still counts
	}
	if rv, ok := l.cfg.Verifier.(RollbackVerifier); ok && t.Spec.AllowRollback {
		verify = rv.VerifyRollback
	}
	art, err := l.timedVerify(func() (Artifact, error) { return verify(ctx, t.Spec.Artifact) })
	if err != nil {
		return nil, err
	}
	l.log.Info("release verified", "task", t.ID, "release", t.Spec.Artifact, "digest", art.Digest)
	l.mu.Lock()
	e.t.Restarts++
	l.mu.Unlock()
	l.m.restarts.Inc()
	return l.startRun(ctx, e, art)
}

// endRun records how a run ended, cleans up its cgroup, and says whether the
// task should run again.
func (l *Launcher) endRun(e *entry) bool {
	t := l.snapshot(e)
	exit := &ExitInfo{Code: -1, At: time.Now().UTC(), Message: "exit status lost: the task's shim was killed"}
	if b, err := os.ReadFile(l.exitPath(t.ID)); err == nil {
		var rec exitRecord
		if json.Unmarshal(b, &rec) == nil {
			ws := unix.WaitStatus(rec.Status)
			exit = &ExitInfo{At: rec.At}
			switch {
			case ws.Exited():
				exit.Code = ws.ExitStatus()
			case ws.Signaled():
				exit.Code = 128 + int(ws.Signal())
				exit.Signal = unix.SignalName(ws.Signal())
				exit.OOM = rec.OOMKill && ws.Signal() == unix.SIGKILL
			}
		}
	}
	if t.Kind == "oci" {
		_ = exec.Command(l.cfg.Runc, "--root", filepath.Join(l.dir, "runc"), "delete", "--force", containerID(t.ID)).Run()
	}
	if err := e.cg.destroy(); err != nil {
		l.log.Warn("remove cgroup", "task", t.ID, "err", err)
	}
	l.ids.put(t.UserNS)                                        // nothing of the run is left to hold its ids
	_ = os.RemoveAll(filepath.Join(l.taskDir(t.ID), "rootfs")) // a chowned image root, when there was one
	l.mu.Lock()
	if e.t.HealthKill != "" && !e.t.Stopping {
		exit.Unhealthy, exit.Message = true, e.t.HealthKill
	}
	if e.t.Spec.Health != nil && e.t.Healthy == nil && !e.t.Stopping {
		e.t.Healthy = new(false) // it ended or restarts before its verdict
	}
	e.t.Health, e.t.HealthySince, e.t.HealthKill = "", time.Time{}, ""
	e.t.Exit = exit
	e.t.PID, e.t.PIDStart, e.t.ShimPID, e.t.ShimStart = 0, 0, 0, 0
	p := e.t.Spec.Restart
	failed := exit.Code != 0 || exit.OOM || exit.Unhealthy
	restart := !e.t.Stopping && (p == RestartAlways || (p == RestartOnFailure && failed))
	switch {
	case restart:
		e.t.State = StateRestarting
	case e.t.Stopping:
		e.t.State = StateStopped
	case exit.OOM:
		e.t.State = StateOOM
	default:
		e.t.State = StateExited
	}
	_ = l.save(e)
	l.mu.Unlock()
	if exit.OOM {
		l.m.oomKills.Inc()
	}
	l.log.Info("task ended", "task", t.ID, "release", t.Spec.Artifact, "digest", t.Digest, "exit", exit.String(), "restart", restart)
	l.emit(e)
	return restart
}

// finish puts a task in a final state.
func (l *Launcher) finish(e *entry, s State, exit *ExitInfo) {
	l.mu.Lock()
	e.t.State = s
	if exit != nil {
		e.t.Exit = exit
	}
	e.t.PID = 0
	_ = l.save(e)
	l.mu.Unlock()
	l.emit(e)
	close(e.final)
}
