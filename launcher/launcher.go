package launcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/internal/timerslack"
)

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
	DefaultNoFile int64  // RLIMIT_NOFILE of a task whose spec sets none; default 4096

	// IDRangeStart and IDRangeCount are the subordinate range of host uids
	// and gids that tasks' user namespaces map to, 65536 per running task;
	// default 2^30 and 1024 tasks' worth. Keep it clear of /etc/subuid
	// ranges handed to users.
	IDRangeStart uint32
	IDRangeCount uint32
	// NoUserNS runs tasks without user namespaces (as where the kernel
	// refuses them): uid 0 in a task is then uid 0 on the host, without capabilities.
	NoUserNS bool
	// NoIDMappedMounts gives each image task a chowned copy of the image
	// root instead of an idmapped mount of the shared one (as where the
	// kernel or filesystem lacks them).
	NoIDMappedMounts bool
	// NoMemfd runs whales from a copy on disk re-hashed before every start,
	// as where the kernel refuses executable memfds (vm.memfd_noexec=2).
	NoMemfd bool

	LogMaxBytes int64 // a task's log rotates past this size; default 10 MiB
	LogKeep     int   // rotated logs kept; default 2

	RestartBackoff    time.Duration // first restart delay; default 1s, doubling
	RestartBackoffMax time.Duration // default 1m

	Runc string // runc binary for images; default found on PATH

	// TaskTimerSlack, when set, is the timer slack tasks and their checks
	// start with: a node that runs with a wide slack for itself
	// (internal/timerslack) passes the one it was started with, so tasks'
	// timers keep the usual precision.
	TaskTimerSlack time.Duration

	// CheckHelper is the executable that runs a whale's exec checks inside
	// the task (health_exec.go): a static build of a program that calls
	// MaybeRunInit first. Default /proc/self/exe, the static ballena binary.
	CheckHelper string

	// WarmShims is how many shims (each with its init already forked into
	// fresh namespaces) wait for the next whale start; default 1, negative for none.
	WarmShims int

	// OnEvent, when set, is called after every state change of a task. It must
	// not block; the node forwards these to the placement service.
	OnEvent func(Task)
	Logger  *slog.Logger
	// Metrics, when set, is where the launcher registers its metrics (see
	// metrics.go); the node daemon serves them.
	Metrics prometheus.Registerer
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

	m   *metrics
	iso IsolationStatus
	ids *idAllocator

	helperOnce sync.Once
	helperErr  error // why CheckHelper cannot run inside a whale's root

	exeMu   sync.Mutex
	exes    map[string]*os.File // digest -> sealed memfd of the whale
	noMemfd bool                // the kernel refused executable memfds: copies on disk

	mu    sync.Mutex
	tasks map[string]*entry
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
	if cfg.DefaultNoFile == 0 {
		cfg.DefaultNoFile = 4096
	}
	if cfg.IDRangeStart == 0 {
		cfg.IDRangeStart = defaultIDRangeStart
	}
	if cfg.IDRangeCount == 0 {
		cfg.IDRangeCount = defaultIDRangeCount
	}
	if cfg.IDRangeCount < idsPerTask || uint64(cfg.IDRangeStart)+uint64(cfg.IDRangeCount) > 1<<32-1 {
		return nil, fmt.Errorf("launcher: subordinate id range %d+%d: want at least %d ids, ending below 2^32-1", cfg.IDRangeStart, cfg.IDRangeCount, idsPerTask)
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
	if cfg.CheckHelper == "" {
		cfg.CheckHelper = "/proc/self/exe"
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
		pool: make(chan *warmShim, max(cfg.WarmShims, 0)), m: newMetrics(),
		iso: probeIsolation(cfg, filepath.Join(dir, "images")), ids: newIDAllocator(cfg.IDRangeStart, cfg.IDRangeCount),
		exes: map[string]*os.File{}, noMemfd: cfg.NoMemfd}
	if !l.iso.UserNS {
		l.log.Warn("tasks run WITHOUT user namespaces: uid 0 in a task is uid 0 on the host (with no capabilities)", "reason", l.iso.UserNSError)
	} else if !l.iso.IDMappedMounts {
		l.log.Warn("no idmapped mounts: each image task gets a chowned copy of its image root", "reason", l.iso.IDMappedError)
	}
	recs, err := l.loadRecords()
	if err != nil {
		cancel()
		return nil, err
	}
	for _, t := range recs {
		e := &entry{t: t, cg: &taskCgroup{path: t.Cgroup, v2: cgroupV2()}, final: make(chan struct{}), wake: make(chan struct{})}
		l.tasks[t.ID] = e
		if !t.State.Final() && t.State != StateRestarting {
			l.ids.take(t.UserNS)
		}
		l.adopt(e)
	}
	for range max(cfg.WarmShims, 0) {
		l.refill()
	}
	if cfg.Metrics != nil {
		if err := l.register(cfg.Metrics); err != nil {
			l.Close()
			return nil, fmt.Errorf("launcher: metrics: %w", err)
		}
	}
	return l, nil
}

// Close stops watching tasks. The tasks keep running; a later New adopts them.
func (l *Launcher) Close() error {
	l.cancel()
	l.wg.Wait()
	l.exeMu.Lock()
	for d, f := range l.exes {
		f.Close()
		delete(l.exes, d)
	}
	l.exeMu.Unlock()
	for {
		select {
		case ws := <-l.pool:
			ws.discard()
		default:
			return nil
		}
	}
}

func (l *Launcher) taskDir(id string) string  { return filepath.Join(l.dir, "tasks", id) }
func (l *Launcher) exitPath(id string) string { return filepath.Join(l.taskDir(id), "exit.json") }
func (l *Launcher) logPath(id string) string  { return filepath.Join(l.taskDir(id), "log") }

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

// startChild starts a process that is, or becomes, part of a task (its shim, a
// warm shim, an exec check) with the tasks' timer slack.
func (l *Launcher) startChild(cmd *exec.Cmd) error {
	if l.cfg.TaskTimerSlack <= 0 {
		return cmd.Start()
	}
	return timerslack.Start(cmd, l.cfg.TaskTimerSlack)
}
