package launcher

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Stop sends sig (SIGTERM if 0) to the task, waits up to timeout for it to
// end, then kills every process left in its cgroup. It returns the task in
// its final state. Stopping a finished task is not an error.
func (l *Launcher) Stop(ctx context.Context, id string, sig syscall.Signal, timeout time.Duration) (Task, error) {
	e, err := l.lookup(id)
	if err != nil {
		return Task{}, err
	}
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	l.mu.Lock()
	if e.t.State.Final() {
		l.mu.Unlock()
		return l.snapshot(e), nil
	}
	e.t.Stopping = true
	_ = l.save(e)
	pid, start := e.t.PID, e.t.PIDStart
	l.mu.Unlock()
	e.wakeOnce.Do(func() { close(e.wake) })
	if alive(pid, start) {
		_ = syscall.Kill(pid, sig)
	}
	select {
	case <-e.final:
		return l.snapshot(e), nil
	case <-time.After(timeout):
	case <-ctx.Done():
		return l.snapshot(e), ctx.Err()
	}
	if err := e.cg.killAll(); err != nil {
		return l.snapshot(e), fmt.Errorf("stop %s: %w", id, err)
	}
	select {
	case <-e.final:
		return l.snapshot(e), nil
	case <-ctx.Done():
		return l.snapshot(e), ctx.Err()
	}
}

// Wait blocks until the task reaches a final state.
func (l *Launcher) Wait(ctx context.Context, id string) (Task, error) {
	e, err := l.lookup(id)
	if err != nil {
		return Task{}, err
	}
	select {
	case <-e.final:
		return l.snapshot(e), nil
	case <-ctx.Done():
		return l.snapshot(e), ctx.Err()
	}
}

// Get returns a task by ID or unique ID prefix, with its usage if it runs.
func (l *Launcher) Get(id string) (Task, error) {
	e, err := l.lookup(id)
	if err != nil {
		return Task{}, err
	}
	return l.withUsage(e), nil
}

// List returns every task the launcher knows, newest first.
func (l *Launcher) List() []Task {
	l.mu.Lock()
	es := slices.Collect(maps.Values(l.tasks))
	l.mu.Unlock()
	ts := make([]Task, 0, len(es))
	for _, e := range es {
		ts = append(ts, l.withUsage(e))
	}
	slices.SortFunc(ts, func(a, b Task) int { return b.CreatedAt.Compare(a.CreatedAt) })
	return ts
}

// Remove forgets a finished task: its record, log and files.
func (l *Launcher) Remove(id string) error {
	e, err := l.lookup(id)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !e.t.State.Final() {
		return fmt.Errorf("remove %s: the task is %s: stop it first", e.t.ID, e.t.State)
	}
	if err := l.deleteRecord(e.t.ID); err != nil {
		return err
	}
	delete(l.tasks, e.t.ID)
	return os.RemoveAll(l.taskDir(e.t.ID))
}

func (l *Launcher) withUsage(e *entry) Task {
	t := l.snapshot(e)
	if t.State == StateRunning {
		if u, err := e.cg.usage(); err == nil {
			t.Usage = u
		}
	}
	return t
}

func (l *Launcher) lookup(id string) (*entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.tasks[id]; ok {
		return e, nil
	}
	var found *entry
	if id != "" {
		for k, e := range l.tasks {
			if strings.HasPrefix(k, id) {
				if found != nil {
					return nil, fmt.Errorf("task %q: %w: the prefix is ambiguous", id, ErrInvalid)
				}
				found = e
			}
		}
	}
	if found == nil {
		return nil, fmt.Errorf("task %q: %w", id, ErrNotFound)
	}
	return found, nil
}
