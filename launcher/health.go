package launcher

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"ballena.dev/placement"
)

// A task whose spec has a HealthSpec is watched, run by run, by a monitor
// that lives exactly as long as the launcher waits for the run (supervise).
// The monitor runs the check every Interval (the first one Interval after
// the start), turns the run healthy on a pass and unhealthy after Failures
// failures in a row, and then kills the run: SIGTERM to its first process,
// SIGKILL to its cgroup after healthKillGrace. The run's end is then a
// failure whatever its exit status, so the restart policy handles it as it
// handles a crash. The monitor also gives the one-time verdict Task.Healthy.
// Every change is saved in the task's record (a restarted launcher picks up
// where it was) and emitted, so the agent reports it at once.

// healthKillGrace is how long an unhealthy run has to end after SIGTERM.
const healthKillGrace = 5 * time.Second

// normalizeHealth fills a check's defaults (as the placement service does)
// and refuses a check that cannot run.
func normalizeHealth(s *TaskSpec) error {
	if s.Health == nil {
		return nil
	}
	h := *s.Health
	if h.MinHealthyTime < 0 || h.HealthyDeadline < 0 {
		return fmt.Errorf("%w: health: negative min healthy time or deadline", ErrInvalid)
	}
	if h.Check != nil {
		c := *h.Check
		n := 0
		for _, set := range []bool{c.HTTP != "", c.TCP, len(c.Exec) > 0} {
			if set {
				n++
			}
		}
		switch {
		case n != 1:
			return fmt.Errorf("%w: check: want exactly one of http, tcp, exec", ErrInvalid)
		case (c.HTTP != "" || c.TCP) && (c.Port == 0) == (c.PortEnv == ""):
			return fmt.Errorf("%w: check: an http or tcp check needs one of port, port_env", ErrInvalid)
		case c.Port < 0 || c.Port > 65535:
			return fmt.Errorf("%w: check: port %d", ErrInvalid, c.Port)
		case c.Interval < 0 || c.Timeout < 0 || c.Failures < 0:
			return fmt.Errorf("%w: check: negative interval, timeout or failures", ErrInvalid)
		}
		if c.Interval == 0 {
			c.Interval = placement.DefaultCheckInterval
		}
		if c.Timeout == 0 {
			c.Timeout = placement.DefaultCheckTimeout
		}
		if c.Failures == 0 {
			c.Failures = placement.DefaultCheckFailures
		}
		h.Check = &c
	}
	s.Health = &h
	return nil
}

// runHealth is what a new run starts with: starting until its check first
// passes, or healthy at once when it has none.
func runHealth(t *Task) {
	t.HealthKill = ""
	t.Health, t.HealthySince = "", time.Time{}
	if t.Spec.Health == nil {
		return
	}
	t.Health = placement.HealthStarting
	if t.Spec.Health.Check == nil {
		t.Health, t.HealthySince = placement.HealthHealthy, t.StartedAt
	}
}

// watchHealth starts the monitor of e's current run; stop ends it and
// waits for it. The caller calls stop once the run has ended.
func (l *Launcher) watchHealth(e *entry) (stop func()) {
	t := l.snapshot(e)
	if t.Spec.Health == nil || t.State != StateRunning {
		return func() {}
	}
	ctx, cancel := context.WithCancel(l.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.monitor(ctx, e)
	}()
	return func() {
		cancel()
		<-done
	}
}

// update applies f to e's task under the lock, and saves and emits the task
// when f says it changed something.
func (l *Launcher) update(e *entry, f func(t *Task) bool) {
	l.mu.Lock()
	changed := f(&e.t)
	if changed {
		if err := l.save(e); err != nil {
			l.log.Error("save task record", "task", e.t.ID, "err", err)
		}
	}
	l.mu.Unlock()
	if changed {
		l.emit(e)
	}
}

// monitor watches one run until ctx ends (the run ended, or the launcher closes).
func (l *Launcher) monitor(ctx context.Context, e *entry) {
	t := l.snapshot(e)
	if t.HealthKill != "" { // a previous launcher was killing this run
		l.killUnhealthy(ctx, e)
		return
	}
	c := t.Spec.Health.Check
	var check *time.Timer
	var checkC <-chan time.Time
	if c != nil {
		check = time.NewTimer(c.Interval)
		defer check.Stop()
		checkC = check.C
	}
	fails := 0
	for {
		var verdictC <-chan time.Time
		vt := time.NewTimer(time.Hour)
		if at, ok := verdictDue(l.snapshot(e)); ok {
			vt.Reset(time.Until(at))
			verdictC = vt.C
		}
		select {
		case <-ctx.Done():
			vt.Stop()
			return
		case <-verdictC:
			l.update(e, func(t *Task) bool {
				v, ok := verdictNow(*t, time.Now())
				if ok {
					t.Healthy = &v
					l.log.Info("health verdict", "task", t.ID, "healthy", v)
				}
				return ok
			})
		case <-checkC:
			err := l.runCheck(ctx, l.snapshot(e))
			if ctx.Err() != nil {
				vt.Stop()
				return // the run ended under the check: its result does not count
			}
			if err == nil {
				fails = 0
				l.setHealthy(e)
				check.Reset(c.Interval)
				break
			}
			fails++
			l.m.checkFailures.Inc()
			l.log.Info("health check failed", "task", t.ID, "failures", fails, "of", c.Failures, "err", err)
			if fails < c.Failures {
				check.Reset(c.Interval)
				break
			}
			vt.Stop()
			why := fmt.Sprintf("health check failed %d times: %s", fails, oneLine(err))
			l.update(e, func(t *Task) bool {
				t.Health, t.HealthySince, t.HealthKill = placement.HealthUnhealthy, time.Time{}, why
				if t.Healthy == nil {
					t.Healthy = new(false)
				}
				return true
			})
			l.log.Warn("task unhealthy: killing it", "task", t.ID, "why", why)
			l.m.unhealthyKills.Inc()
			l.killUnhealthy(ctx, e)
			return
		}
		vt.Stop()
	}
}

// verdictDue is when the verdict on t may next be given: when its healthy
// streak reaches MinHealthyTime, or its deadline, whichever comes first.
func verdictDue(t Task) (time.Time, bool) {
	hs := t.Spec.Health
	if hs == nil || t.Healthy != nil {
		return time.Time{}, false
	}
	var at time.Time
	if t.Health == placement.HealthHealthy {
		at = t.HealthySince.Add(hs.MinHealthyTime)
	}
	if hs.HealthyDeadline > 0 {
		if dl := t.CreatedAt.Add(hs.HealthyDeadline); at.IsZero() || dl.Before(at) {
			at = dl
		}
	}
	return at, !at.IsZero()
}

// verdictNow gives the verdict on t at now, if it is due: true for a
// healthy streak of MinHealthyTime, false past the deadline.
func verdictNow(t Task, now time.Time) (healthy, ok bool) {
	hs := t.Spec.Health
	if hs == nil || t.Healthy != nil {
		return false, false
	}
	if t.Health == placement.HealthHealthy && !now.Before(t.HealthySince.Add(hs.MinHealthyTime)) {
		return true, true
	}
	if hs.HealthyDeadline > 0 && !now.Before(t.CreatedAt.Add(hs.HealthyDeadline)) {
		return false, true
	}
	return false, false
}

// setHealthy records a passing check.
func (l *Launcher) setHealthy(e *entry) {
	l.update(e, func(t *Task) bool {
		if t.Health == placement.HealthHealthy || t.State != StateRunning {
			return false
		}
		t.Health, t.HealthySince = placement.HealthHealthy, time.Now().UTC()
		l.log.Info("task healthy", "task", t.ID)
		return true
	})
}

// killUnhealthy ends the run: SIGTERM, then SIGKILL to its whole cgroup if it
// has not ended within healthKillGrace. ctx ends with the run.
func (l *Launcher) killUnhealthy(ctx context.Context, e *entry) {
	t := l.snapshot(e)
	if alive(t.PID, t.PIDStart) {
		_ = syscall.Kill(t.PID, syscall.SIGTERM)
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(healthKillGrace):
	}
	if err := e.cg.killAll(); err != nil {
		l.log.Warn("kill unhealthy task", "task", t.ID, "err", err)
	}
}
