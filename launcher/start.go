package launcher

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Start verifies spec's artifact and starts it. It returns once the task's
// process runs inside its cgroup, or with an error, in which case nothing
// was started and nothing is left behind.
func (l *Launcher) Start(ctx context.Context, spec TaskSpec) (Task, error) {
	start := time.Now()
	if err := l.normalize(&spec); err != nil {
		return Task{}, err
	}
	art, err := l.timedVerify(func() (Artifact, error) { return l.cfg.Verifier.Verify(ctx, spec.Artifact) })
	if err != nil {
		return Task{}, fmt.Errorf("start %s: %w", spec.Artifact, err)
	}
	if art.Kind != "whale" && art.Kind != "oci" {
		return Task{}, fmt.Errorf("start %s: unknown artifact kind %q", spec.Artifact, art.Kind)
	}
	if art.Kind == "oci" && l.cfg.Runc == "" {
		return Task{}, fmt.Errorf("start %s: images need runc, which is not installed", spec.Artifact)
	}
	id, err := newID()
	if err != nil {
		return Task{}, err
	}
	l.log.Info("release verified", "task", id, "release", spec.Artifact, "digest", art.Digest)
	now := time.Now().UTC()
	e := &entry{
		t: Task{ID: id, Spec: spec, Kind: art.Kind, Digest: art.Digest, State: StateStarting,
			Cgroup: newTaskCgroup(l.cfg.CgroupParent, id).path, CreatedAt: now},
		cg:    newTaskCgroup(l.cfg.CgroupParent, id),
		final: make(chan struct{}),
		wake:  make(chan struct{}),
	}
	if err := os.MkdirAll(l.taskDir(id), 0o700); err != nil {
		return Task{}, fmt.Errorf("start %s: %w", spec.Artifact, err)
	}
	l.mu.Lock()
	l.tasks[id] = e
	err = l.save(e)
	l.mu.Unlock()
	if err == nil {
		var cmd *exec.Cmd
		cmd, err = l.startRun(ctx, e, art)
		if err == nil {
			l.wg.Go(func() { l.supervise(e, l.childWaiter(cmd), true) })
			l.m.starts.Inc()
			l.m.launch.Observe(time.Since(start).Seconds())
			return l.snapshot(e), nil
		}
	}
	// Leave nothing behind.
	l.mu.Lock()
	delete(l.tasks, id)
	_ = l.deleteRecord(id)
	l.mu.Unlock()
	_ = e.cg.destroy()
	_ = os.RemoveAll(l.taskDir(id))
	return Task{}, fmt.Errorf("start %s: %w", spec.Artifact, err)
}

func (l *Launcher) normalize(s *TaskSpec) error {
	if s.Artifact == "" || !strings.Contains(s.Artifact, "@") {
		return fmt.Errorf("%w: artifact %q: want name@version", ErrInvalid, s.Artifact)
	}
	if s.MemoryBytes == 0 {
		s.MemoryBytes = l.cfg.DefaultMemory
	}
	if s.Pids == 0 {
		s.Pids = l.cfg.DefaultPids
	}
	switch {
	case s.MemoryBytes < 4<<20:
		return fmt.Errorf("%w: memory %d bytes: at least 4MiB", ErrInvalid, s.MemoryBytes)
	case s.CPUMillis < 0:
		return fmt.Errorf("%w: cpu %dm: must not be negative", ErrInvalid, s.CPUMillis)
	case s.Pids < 1:
		return fmt.Errorf("%w: pids %d: at least 1", ErrInvalid, s.Pids)
	}
	switch s.Restart {
	case "":
		s.Restart = RestartNever
	case RestartNever, RestartOnFailure, RestartAlways:
	default:
		return fmt.Errorf("%w: restart %q: want never, on-failure or always", ErrInvalid, s.Restart)
	}
	switch s.Network {
	case "":
		s.Network = "host"
	case "host", "none":
	default:
		return fmt.Errorf("%w: network %q: want host or none", ErrInvalid, s.Network)
	}
	if len(s.Hostname) > 64 || strings.ContainsAny(s.Hostname, "/\x00 ") {
		return fmt.Errorf("%w: hostname %q: at most 64 characters, no spaces or slashes", ErrInvalid, s.Hostname)
	}
	if s.User == "" {
		s.User = l.cfg.DefaultUser
	}
	if _, _, err := ParseUser(s.User); err != nil {
		return err
	}
	for _, kv := range s.Env {
		if !strings.Contains(kv, "=") {
			return fmt.Errorf("%w: env %q: want KEY=VALUE", ErrInvalid, kv)
		}
	}
	return nil
}

func newID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// startRun starts one run of a task: cgroup, shim, init or runc. It returns
// the shim once the task's process runs.
func (l *Launcher) startRun(ctx context.Context, e *entry, art Artifact) (*exec.Cmd, error) {
	t := l.snapshot(e)
	dir := l.taskDir(t.ID)
	_ = os.Remove(l.exitPath(t.ID))
	uid, gid, _ := ParseUser(t.Spec.User)
	hostname := t.Spec.Hostname
	if hostname == "" {
		hostname = art.Name[:min(len(art.Name), 64)]
	}
	rc := runConfig{
		ID: t.ID, Kind: art.Kind,
		LogPath: l.logPath(t.ID), LogMaxBytes: l.cfg.LogMaxBytes, LogKeep: l.cfg.LogKeep,
		ExitPath: l.exitPath(t.ID), OOMFile: oomKillsFile(e.cg.dir("memory"), e.cg.v2),
	}
	switch art.Kind {
	case "whale":
		bin, err := l.executable(ctx, art)
		if err != nil {
			return nil, err
		}
		root := filepath.Join(dir, "root")
		if err := os.MkdirAll(root, 0o700); err != nil {
			return nil, err
		}
		args := art.Cmd
		if t.Spec.Args != nil {
			args = t.Spec.Args
		}
		rc.Root, rc.Binary, rc.UID, rc.GID, rc.Hostname = root, bin, uid, gid, hostname
		rc.Args = append([]string{art.Name}, args...)
		rc.Env = mergeEnv([]string{"PATH=/", "HOME=/tmp", "HOSTNAME=" + hostname}, art.Env, t.Spec.Env)
		rc.Cwd = cmp.Or(t.Spec.WorkingDir, art.WorkingDir)
		rc.NewNet = t.Spec.Network == "none"
		rc.TmpBytes = l.cfg.TmpBytes
		if err := e.cg.create(t.Spec); err != nil {
			return nil, err
		}
		rc.CgroupProcs = e.cg.procsFiles()
	case "oci":
		bundle, err := l.prepareBundle(ctx, t, art, uid, gid, hostname)
		if err != nil {
			return nil, err
		}
		_ = exec.Command(l.cfg.Runc, "--root", filepath.Join(l.dir, "runc"), "delete", "--force", containerID(t.ID)).Run()
		_ = e.cg.destroy()
		rc.Runc, rc.RuncRoot, rc.Bundle, rc.ContainerID = l.cfg.Runc, filepath.Join(l.dir, "runc"), bundle, containerID(t.ID)
	}
	b, err := json.Marshal(rc)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "run.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, err
	}
	cmd, st, err := l.startShim(ctx, dir, cfgPath, art.Kind == "whale" && !rc.NewNet)
	if err != nil {
		_ = e.cg.destroy()
		return nil, err
	}
	shimStart, _ := procStartTime(cmd.Process.Pid)
	l.mu.Lock()
	e.t.State = StateRunning
	e.t.PID, e.t.PIDStart = st.PID, st.Start
	e.t.ShimPID, e.t.ShimStart = cmd.Process.Pid, shimStart
	e.t.StartedAt = time.Now().UTC()
	e.t.Exit = nil
	e.t.Digest = art.Digest
	stopping := e.t.Stopping
	err = l.save(e)
	l.mu.Unlock()
	if stopping { // Stop came while we were starting: it found nothing to signal
		go func() { _ = e.cg.killAll() }()
	}
	if err != nil {
		l.log.Error("save task record", "task", t.ID, "err", err)
	}
	l.log.Info("task started", "task", t.ID, "release", t.Spec.Artifact, "digest", art.Digest, "pid", st.PID)
	l.emit(e)
	return cmd, nil
}

// startShim starts the task's shim in its own session (so a terminal's ^C
// does not reach it) and waits for its one status line.
func (l *Launcher) startShim(ctx context.Context, dir, cfgPath string, warmOK bool) (*exec.Cmd, shimStatus, error) {
	var st shimStatus
	if warmOK {
		select {
		case ws := <-l.pool:
			l.refill()
			if _, err := ws.ctrl.Write([]byte(cfgPath + "\n")); err == nil {
				ws.ctrl.Close()
				st, err := l.readStatus(ctx, ws.cmd, ws.status)
				ws.status.Close()
				return ws.cmd, st, err
			}
			ws.discard() // it died: start a cold one
		default:
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, st, err
	}
	defer r.Close()
	shimLog, err := os.OpenFile(filepath.Join(dir, "shim.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		w.Close()
		return nil, st, err
	}
	defer shimLog.Close()
	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{"ballena-shim", filepath.Base(dir)},
		Env:         []string{modeEnv + "=shim", configEnv + "=" + cfgPath},
		Stdout:      shimLog,
		Stderr:      shimLog,
		ExtraFiles:  []*os.File{w},
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return nil, st, fmt.Errorf("start shim: %w", err)
	}
	st, err = l.readStatus(ctx, cmd, r)
	return cmd, st, err
}

// readStatus reads a shim's status line; on failure the shim is killed and reaped.
func (l *Launcher) readStatus(ctx context.Context, cmd *exec.Cmd, r *os.File) (shimStatus, error) {
	var st shimStatus
	line := make(chan []byte, 1)
	go func() {
		b, _ := bufio.NewReader(r).ReadBytes('\n')
		line <- b
	}()
	select {
	case b := <-line:
		if err := json.Unmarshal(b, &st); err != nil || (st.PID == 0 && st.Error == "") {
			st.Error = "shim died before the task started"
		}
	case <-ctx.Done():
		st.Error = ctx.Err().Error()
	}
	if st.Error != "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return st, errors.New(st.Error)
	}
	return st, nil
}

// mergeEnv joins KEY=VALUE lists; later lists override earlier keys.
func mergeEnv(lists ...[]string) []string {
	var out []string
	idx := map[string]int{}
	for _, l := range lists {
		for _, kv := range l {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}
