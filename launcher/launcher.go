package launcher

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"

	"ballena.dev/internal/ctxio"
)

// keyPrefix is the launcher's part of the node's shared badger.
const keyPrefix = "launcher/task/"

// Config configures a Launcher. DataDir, DB and Verifier are required.
type Config struct {
	DataDir      string     // the launcher keeps its files in DataDir/launcher
	DB           *badger.DB // task records live under "launcher/"
	Verifier     Verifier   // consulted before every start and restart
	CgroupParent string     // task cgroups are <parent>/<id>; default "ballena"

	DefaultUser   string // default "65534:65534"
	DefaultMemory int64  // used when a spec sets none; default 512 MiB
	DefaultPids   int64  // used when a spec sets none; default 1024
	TmpBytes      int64  // size of a whale's private /tmp; default 64 MiB

	LogMaxBytes int64 // a task's log rotates past this size; default 10 MiB
	LogKeep     int   // rotated logs kept; default 2

	RestartBackoff    time.Duration // first restart delay; default 1s, doubling
	RestartBackoffMax time.Duration // default 1m

	Runc string // runc binary for images; default found on PATH

	// WarmShims is how many shims (each with its init already forked into
	// fresh namespaces) wait for the next whale start; default 1, negative for none.
	WarmShims int

	// OnEvent, when set, is called after every state change of a task. It must
	// not block; the node forwards these to the placement service.
	OnEvent func(Task)
	Logger  *slog.Logger
}

// Launcher runs tasks. It is safe for concurrent use.
type Launcher struct {
	cfg    Config
	dir    string
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	pool chan *warmShim

	mu    sync.Mutex
	tasks map[string]*entry
}

// warmShim is a shim waiting for a run config on ctrl.
type warmShim struct {
	cmd    *exec.Cmd
	status *os.File // read end of its status pipe
	ctrl   *os.File // write end of its control pipe
}

// entry is the launcher's live view of a task; t is guarded by Launcher.mu.
type entry struct {
	t        Task
	cg       *taskCgroup
	final    chan struct{} // closed when t.State is final
	wake     chan struct{} // closed by Stop to cut a restart backoff short
	wakeOnce sync.Once
}

// New opens the launcher's records and adopts the tasks a previous launcher
// left running: they are watched again, not restarted. Tasks that ended
// meanwhile get their end state recorded (and are restarted if their policy says so).
func New(cfg Config) (*Launcher, error) {
	if cfg.DataDir == "" || cfg.DB == nil || cfg.Verifier == nil {
		return nil, errors.New("launcher: DataDir, DB and Verifier are required")
	}
	if os.Getenv(modeEnv) != "" {
		// We were re-executed as a shim or init, but main (or TestMain) did
		// not call MaybeRunInit: refuse rather than recurse.
		return nil, errors.New("launcher: this binary must call launcher.MaybeRunInit first thing in main (and TestMain)")
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "ballena"
	}
	if cfg.DefaultUser == "" {
		cfg.DefaultUser = "65534:65534"
	}
	if _, _, err := ParseUser(cfg.DefaultUser); err != nil {
		return nil, fmt.Errorf("launcher: default user: %w", err)
	}
	if cfg.DefaultMemory == 0 {
		cfg.DefaultMemory = 512 << 20
	}
	if cfg.DefaultPids == 0 {
		cfg.DefaultPids = 1024
	}
	if cfg.TmpBytes == 0 {
		cfg.TmpBytes = 64 << 20
	}
	if cfg.LogMaxBytes == 0 {
		cfg.LogMaxBytes = 10 << 20
	}
	if cfg.LogKeep == 0 {
		cfg.LogKeep = 2
	}
	if cfg.RestartBackoff == 0 {
		cfg.RestartBackoff = time.Second
	}
	if cfg.RestartBackoffMax == 0 {
		cfg.RestartBackoffMax = time.Minute
	}
	if cfg.Runc == "" {
		cfg.Runc = findRunc()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.WarmShims == 0 {
		cfg.WarmShims = 1
	}
	dir := filepath.Join(cfg.DataDir, "launcher")
	for _, d := range []string{dir, filepath.Join(dir, "tasks"), filepath.Join(dir, "bin"), filepath.Join(dir, "images"), filepath.Join(dir, "runc")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("launcher: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Launcher{cfg: cfg, dir: dir, log: cfg.Logger, ctx: ctx, cancel: cancel, tasks: map[string]*entry{},
		pool: make(chan *warmShim, max(cfg.WarmShims, 0))}
	recs, err := l.loadRecords()
	if err != nil {
		cancel()
		return nil, err
	}
	for _, t := range recs {
		e := &entry{t: t, cg: &taskCgroup{path: t.Cgroup, v2: cgroupV2()}, final: make(chan struct{}), wake: make(chan struct{})}
		l.tasks[t.ID] = e
		l.adopt(e)
	}
	for range max(cfg.WarmShims, 0) {
		l.refill()
	}
	return l, nil
}

// adopt takes a task found in the records back under supervision.
func (l *Launcher) adopt(e *entry) {
	t := e.t
	switch {
	case t.State.Final():
		close(e.final)
	case t.State == StateRestarting:
		l.log.Info("resuming restart", "task", t.ID)
		l.go_(func() { l.supervise(e, nil, false) })
	case alive(t.ShimPID, t.ShimStart):
		l.log.Info("adopted running task", "task", t.ID, "pid", t.PID)
		l.go_(func() { l.supervise(e, l.pidWaiter(t.ShimPID, t.ShimStart), true) })
	case alive(t.PID, t.PIDStart) && !fileExists(l.exitPath(t.ID)):
		// The shim is gone but the task runs: watch the task itself; its
		// exit status will be lost.
		l.log.Warn("adopted task without its shim", "task", t.ID, "pid", t.PID)
		l.go_(func() { l.supervise(e, l.pidWaiter(t.PID, t.PIDStart), true) })
	default:
		l.log.Info("task ended while the launcher was away", "task", t.ID)
		l.go_(func() { l.supervise(e, nil, true) })
		return
	}
	if t.Stopping && !t.State.Final() && t.State != StateRestarting {
		// A Stop was under way when the launcher died: finish it.
		l.go_(func() { _ = e.cg.killAll() })
	}
}

func (l *Launcher) go_(f func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
}

// Close stops watching tasks. The tasks keep running; a later New adopts them.
func (l *Launcher) Close() error {
	l.cancel()
	l.wg.Wait()
	for {
		select {
		case ws := <-l.pool:
			ws.discard()
		default:
			return nil
		}
	}
}

// refill starts a warm shim in the background for the pool.
func (l *Launcher) refill() {
	if cap(l.pool) == 0 || l.ctx.Err() != nil {
		return
	}
	l.go_(func() {
		ws, err := l.spawnWarm()
		if err != nil {
			l.log.Warn("warm shim", "err", err)
			return
		}
		select {
		case l.pool <- ws:
		default:
			ws.discard()
		}
	})
}

func (l *Launcher) spawnWarm() (*warmShim, error) {
	sr, sw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cr, cw, err := os.Pipe()
	if err != nil {
		sr.Close()
		sw.Close()
		return nil, err
	}
	shimLog, err := os.OpenFile(filepath.Join(l.dir, "shim.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer shimLog.Close()
	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{"ballena-shim-warm"},
		Env:         []string{modeEnv + "=shim"},
		Stdout:      shimLog,
		Stderr:      shimLog,
		ExtraFiles:  []*os.File{sw, cr},
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	err = cmd.Start()
	sw.Close()
	cr.Close()
	if err != nil {
		sr.Close()
		cw.Close()
		return nil, fmt.Errorf("start shim: %w", err)
	}
	return &warmShim{cmd: cmd, status: sr, ctrl: cw}, nil
}

// discard ends an unused warm shim: EOF on its control pipe.
func (ws *warmShim) discard() {
	ws.ctrl.Close()
	ws.status.Close()
	_ = ws.cmd.Wait()
}

func (l *Launcher) taskDir(id string) string  { return filepath.Join(l.dir, "tasks", id) }
func (l *Launcher) exitPath(id string) string { return filepath.Join(l.taskDir(id), "exit.json") }
func (l *Launcher) logPath(id string) string  { return filepath.Join(l.taskDir(id), "log") }

// Start verifies spec's artifact and starts it. It returns once the task's
// process runs inside its cgroup, or with an error, in which case nothing
// was started and nothing is left behind.
func (l *Launcher) Start(ctx context.Context, spec TaskSpec) (Task, error) {
	if err := l.normalize(&spec); err != nil {
		return Task{}, err
	}
	art, err := l.cfg.Verifier.Verify(ctx, spec.Artifact)
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
			l.go_(func() { l.supervise(e, l.childWaiter(cmd), true) })
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
		rc.Cwd = cmp(t.Spec.WorkingDir, art.WorkingDir)
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

// executable returns a path to the whale that its unprivileged user may
// execute: store blobs are not executable, so a read-only copy is made once
// per digest, hashed as it is copied.
func (l *Launcher) executable(ctx context.Context, art Artifact) (string, error) {
	dst := filepath.Join(l.dir, "bin", art.Digest)
	if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == 0o555 {
		return dst, nil
	}
	src, err := os.Open(art.BlobPath)
	if err != nil {
		return "", fmt.Errorf("open blob: %w", err)
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Join(l.dir, "bin"), ".tmp-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), ctxio.Reader(ctx, src)); err != nil {
		tmp.Close()
		return "", fmt.Errorf("copy blob: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != art.Digest {
		return "", fmt.Errorf("%w: blob changed after verification (sha256 %s, want %s)", ErrRefused, got, art.Digest)
	}
	if err := os.Chmod(tmp.Name(), 0o555); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
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

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
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
			if wait != nil && !wait() {
				return // the launcher is closing; the task runs on
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
			l.log.Error("restart failed", "task", e.t.ID, "err", err)
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
	art, err := l.cfg.Verifier.Verify(ctx, t.Spec.Artifact)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	e.t.Restarts++
	l.mu.Unlock()
	return l.startRun(ctx, e, art)
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
	l.mu.Lock()
	e.t.Exit = exit
	e.t.PID, e.t.PIDStart, e.t.ShimPID, e.t.ShimStart = 0, 0, 0, 0
	p := e.t.Spec.Restart
	restart := !e.t.Stopping && (p == RestartAlways || (p == RestartOnFailure && (exit.Code != 0 || exit.OOM)))
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
	l.log.Info("task ended", "task", t.ID, "exit", exit.String(), "restart", restart)
	l.emit(e)
	return restart
}

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
	es := make([]*entry, 0, len(l.tasks))
	for _, e := range l.tasks {
		es = append(es, e)
	}
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

// Prune removes staged executables and unpacked images that no task the
// launcher knows refers to; the node calls it after the store's GC. It
// returns the digests it dropped.
func (l *Launcher) Prune() ([]string, error) {
	l.mu.Lock()
	used := map[string]bool{}
	for _, e := range l.tasks {
		used[e.t.Digest] = true
	}
	l.mu.Unlock()
	var dropped []string
	var errs []error
	for _, sub := range []string{"bin", "images"} {
		ents, err := os.ReadDir(filepath.Join(l.dir, sub))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, d := range ents {
			n := d.Name()
			if len(n) != 64 || used[n] { // also skips in-flight ".tmp-" and ".unpack-" entries
				continue
			}
			if err := os.RemoveAll(filepath.Join(l.dir, sub, n)); err != nil {
				errs = append(errs, err)
				continue
			}
			dropped = append(dropped, n)
		}
	}
	return dropped, errors.Join(errs...)
}

// Logs returns the task's stdout and stderr, interleaved as written. With
// follow it keeps streaming until the task ends or ctx is done.
func (l *Launcher) Logs(ctx context.Context, id string, follow bool) (io.ReadCloser, error) {
	e, err := l.lookup(id)
	if err != nil {
		return nil, err
	}
	done := func() bool {
		select {
		case <-e.final:
			return true
		default:
			return false
		}
	}
	return newLogReader(ctx, l.logPath(e.t.ID), l.cfg.LogKeep, follow, done), nil
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

func (l *Launcher) snapshot(e *entry) Task {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := e.t
	if t.Exit != nil {
		x := *t.Exit
		t.Exit = &x
	}
	return t
}

func (l *Launcher) emit(e *entry) {
	if l.cfg.OnEvent != nil {
		l.cfg.OnEvent(l.snapshot(e))
	}
}

// save writes the task's record; l.mu must be held.
func (l *Launcher) save(e *entry) error {
	b, err := json.Marshal(e.t)
	if err != nil {
		return err
	}
	return l.cfg.DB.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keyPrefix+e.t.ID), b)
	})
}

func (l *Launcher) deleteRecord(id string) error {
	return l.cfg.DB.Update(func(txn *badger.Txn) error {
		return txn.Delete([]byte(keyPrefix + id))
	})
}

func (l *Launcher) loadRecords() ([]Task, error) {
	var ts []Task
	err := l.cfg.DB.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			err := it.Item().Value(func(v []byte) error {
				var t Task
				if err := json.Unmarshal(v, &t); err != nil {
					return fmt.Errorf("task record %s: %w", it.Item().Key(), err)
				}
				ts = append(ts, t)
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("launcher: load records: %w", err)
	}
	return ts, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func containerID(id string) string { return "ballena-" + id }

// findRunc looks for runc on PATH, then where distributions put it (a
// daemon's PATH may lack the sbin directories).
func findRunc() string {
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}
