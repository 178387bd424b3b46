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
	"regexp"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Start verifies spec's artifact and starts it. It returns once the task's
// process runs inside its cgroup, or with an error, in which case nothing
// was started and nothing is left behind.
func (l *Launcher) Start(ctx context.Context, spec TaskSpec) (Task, error) {
	start := time.Now()
	if err := l.normalize(&spec); err != nil {
		return Task{}, err
	}
	if err := l.assignCheckPort(&spec); err != nil {
		return Task{}, err
	}
	verify := l.cfg.Verifier.Verify
	if rv, ok := l.cfg.Verifier.(RollbackVerifier); ok && spec.AllowRollback {
		verify = rv.VerifyRollback
	}
	art, err := l.timedVerify(func() (Artifact, error) { return verify(ctx, spec.Artifact) })
	if err != nil {
		return Task{}, fmt.Errorf("start %s: %w", spec.Artifact, err)
	}
	if art.Kind != "whale" && art.Kind != "oci" {
		return Task{}, fmt.Errorf("start %s: unknown artifact kind %q", spec.Artifact, art.Kind)
	}
	if art.Kind == "oci" && l.cfg.Runc == "" {
		return Task{}, fmt.Errorf("start %s: images need runc, which is not installed", spec.Artifact)
	}
	if err := checkPin(spec, art); err != nil {
		return Task{}, fmt.Errorf("start %s: %w", spec.Artifact, err)
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
	if s.User != "" && !userRE.MatchString(s.User) {
		return fmt.Errorf("%w: user %q: want uid, uid:gid, or for images a name or name:group", ErrInvalid, s.User)
	}
	switch s.Seccomp {
	case "":
		s.Seccomp = SeccompDefault
	case SeccompDefault, SeccompUnconfined:
	default:
		return fmt.Errorf("%w: seccomp %q: want default or unconfined", ErrInvalid, s.Seccomp)
	}
	s.Digest = strings.TrimPrefix(s.Digest, "sha256:")
	if s.Digest != "" && !digestRE.MatchString(s.Digest) {
		return fmt.Errorf("%w: digest %q: want 64 hex digits", ErrInvalid, s.Digest)
	}
	if s.NoFile == 0 {
		s.NoFile = l.cfg.DefaultNoFile
	}
	if s.NoFile < 16 || s.NoFile > 1<<20 {
		return fmt.Errorf("%w: nofile %d: want 16..1048576", ErrInvalid, s.NoFile)
	}
	if s.CoreBytes < 0 {
		return fmt.Errorf("%w: core %d: must not be negative", ErrInvalid, s.CoreBytes)
	}
	if err := normalizeHealth(s); err != nil {
		return err
	}
	for _, kv := range s.Env {
		if !strings.Contains(kv, "=") {
			return fmt.Errorf("%w: env %q: want KEY=VALUE", ErrInvalid, kv)
		}
	}
	return nil
}

var (
	userRE   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$`)
	digestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// checkPin refuses an artifact whose digest is not the one the spec pins.
func checkPin(spec TaskSpec, art Artifact) error {
	if spec.Digest != "" && spec.Digest != art.Digest {
		return fmt.Errorf("%w: %s is pinned to sha256:%s but this node holds sha256:%s for it", ErrRefused, spec.Artifact, spec.Digest, art.Digest)
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
func (l *Launcher) startRun(ctx context.Context, e *entry, art Artifact) (cmd *exec.Cmd, err error) {
	t := l.snapshot(e)
	if err := checkPin(t.Spec, art); err != nil {
		return nil, err
	}
	dir := l.taskDir(t.ID)
	_ = os.Remove(l.exitPath(t.ID))
	hostname := t.Spec.Hostname
	if hostname == "" {
		hostname = art.Name[:min(len(art.Name), 64)]
	}
	// The run's user namespace: a warm shim's (its init waits in it), or a fresh block.
	var ws *warmShim
	if art.Kind == "whale" && t.Spec.Network != "none" {
		ws = l.takeWarm()
	}
	var idmap *IDMap
	switch {
	case ws != nil:
		idmap = ws.idmap
	case l.iso.UserNS:
		if idmap, err = l.ids.get(); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			if ws != nil {
				ws.idmap = nil // released just below
				ws.discard()
			}
			l.ids.put(idmap)
		}
	}()
	unconfined := t.Spec.Seccomp == SeccompUnconfined
	if unconfined {
		l.log.Warn("task runs without a seccomp filter, as its spec asks (seccomp: unconfined)", "task", t.ID, "release", t.Spec.Artifact)
	}
	rc := runConfig{
		ID: t.ID, Kind: art.Kind,
		LogPath: l.logPath(t.ID), LogMaxBytes: l.cfg.LogMaxBytes, LogKeep: l.cfg.LogKeep,
		ExitPath: l.exitPath(t.ID), OOMFile: oomKillsFile(e.cg.dir("memory"), e.cg.v2),
		IDMap: idmap,
	}
	var uid, gid int
	var bin *os.File // the verified whale, handed to the shim
	switch art.Kind {
	case "whale":
		uid, gid, err = ParseUser(cmp.Or(t.Spec.User, l.cfg.DefaultUser))
		if err != nil {
			return nil, err
		}
		if err := fitsIDMap(uid, gid, idmap); err != nil {
			return nil, err
		}
		var done func()
		bin, done, err = l.executable(ctx, art)
		if err != nil {
			return nil, err
		}
		defer done()
		args := art.Cmd
		if t.Spec.Args != nil {
			args = t.Spec.Args
		}
		rc.Binary, rc.UID, rc.GID, rc.Hostname = bin.Name(), uid, gid, hostname
		rc.Args = append([]string{art.Name}, args...)
		rc.Env = mergeEnv([]string{"PATH=/", "HOME=/tmp", "HOSTNAME=" + hostname}, art.Env, t.Spec.Env)
		rc.Cwd = cmp.Or(t.Spec.WorkingDir, art.WorkingDir)
		rc.NewNet = t.Spec.Network == "none"
		rc.TmpBytes = l.cfg.TmpBytes
		rc.Unconfined = unconfined
		rc.NoFile, rc.CoreBytes = uint64(t.Spec.NoFile), uint64(t.Spec.CoreBytes)
		if err := e.cg.create(t.Spec); err != nil {
			return nil, err
		}
		rc.CgroupProcs = e.cg.procsFiles()
	case "oci":
		var b bundle
		b, err = l.prepareBundle(ctx, t, art, idmap, hostname)
		if err != nil {
			return nil, err
		}
		uid, gid = b.uid, b.gid
		_ = exec.Command(l.cfg.Runc, "--root", filepath.Join(l.dir, "runc"), "delete", "--force", containerID(t.ID)).Run()
		_ = e.cg.destroy()
		rc.Runc, rc.RuncRoot, rc.Bundle, rc.ContainerID = l.cfg.Runc, filepath.Join(l.dir, "runc"), b.dir, containerID(t.ID)
		rc.RootSource, rc.RootTarget, rc.RootIDMap = b.rootSource, b.rootTarget, b.idmapped
	}
	b, err := json.Marshal(rc)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "run.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, err
	}
	cmd, st, err := l.startShim(ctx, dir, cfgPath, ws, rc.RootSource != "", bin, l.ids.lockFile(idmap))
	ws = nil // startShim used or discarded it
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
	e.t.Seccomp, e.t.UserNS, e.t.User = t.Spec.Seccomp, idmap, fmt.Sprintf("%d:%d", uid, gid)
	runHealth(&e.t)
	stopping := e.t.Stopping
	err = l.save(e)
	l.mu.Unlock()
	if stopping { // Stop came while we were starting: it found nothing to signal
		go func() { _ = e.cg.killAll() }()
	}
	if err != nil {
		l.log.Error("save task record", "task", t.ID, "err", err)
	}
	l.log.Info("task started", "task", t.ID, "release", t.Spec.Artifact, "digest", art.Digest, "pid", st.PID,
		"seccomp", t.Spec.Seccomp, "userns", idmap.String(), "user", fmt.Sprintf("%d:%d", uid, gid))
	l.emit(e)
	return cmd, nil
}

// fitsIDMap checks that uid and gid exist in the task's user namespace.
// sendControl tells a warm shim its run config's path, with the whale's
// descriptor attached (SCM_RIGHTS) when there is one.
func sendControl(sock *os.File, cfgPath string, bin *os.File) error {
	msg := []byte(cfgPath + "\n")
	var oob []byte
	if bin != nil {
		oob = unix.UnixRights(int(bin.Fd()))
	}
	conn, err := sock.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = conn.Write(func(s uintptr) bool {
		var n int
		n, serr = unix.SendmsgN(int(s), msg, oob, nil, 0)
		if serr == unix.EAGAIN {
			return false
		}
		if serr == nil && n < len(msg) {
			serr = fmt.Errorf("short write to the shim (%d of %d bytes)", n, len(msg))
		}
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

func fitsIDMap(uid, gid int, m *IDMap) error {
	if m != nil && (uid >= int(m.Size) || gid >= int(m.Size)) {
		return fmt.Errorf("%w: user %d:%d: a task's user namespace has ids 0..%d", ErrInvalid, uid, gid, m.Size-1)
	}
	return nil
}

// startShim starts the task's shim in its own session (so a terminal's ^C
// does not reach it) and waits for its one status line. A warm shim ws, when
// given, is used (its init already waits in its namespaces); ownMountNS puts
// a cold shim in a mount namespace of its own (for an image root it mounts);
// bin is a whale's verified executable, passed to the shim as a descriptor.
func (l *Launcher) startShim(ctx context.Context, dir, cfgPath string, ws *warmShim, ownMountNS bool, bin, lock *os.File) (*exec.Cmd, shimStatus, error) {
	var st shimStatus
	if ws != nil {
		if err := sendControl(ws.ctrl, cfgPath, bin); err == nil {
			ws.ctrl.Close()
			st, err := l.readStatus(ctx, ws.cmd, ws.status)
			ws.status.Close()
			return ws.cmd, st, err
		}
		ws.idmap = nil // the run keeps its id block
		ws.discard()   // it died: start a cold one
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
	attr := &syscall.SysProcAttr{Setsid: true}
	if ownMountNS {
		attr.Cloneflags = syscall.CLONE_NEWNS
	}
	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{"ballena-shim", filepath.Base(dir)},
		Env:         []string{modeEnv + "=shim", configEnv + "=" + cfgPath},
		Stdout:      shimLog,
		Stderr:      shimLog,
		ExtraFiles:  []*os.File{w},
		SysProcAttr: attr,
	}
	// fd 4: the whale; fd 5: the claim on the run's id block, which the
	// shim keeps for as long as the task lives.
	cmd.ExtraFiles = append(cmd.ExtraFiles, bin, lock)
	err = l.startChild(cmd)
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
