package launcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/placement"
)

// allocLabel marks a task with the placement allocation it runs.
const allocLabel = "ballena.alloc"

// Placement is what the agent needs of the placement service; placement.Client
// implements it with the node's signed requests.
type Placement interface {
	Register(ctx context.Context, reg placement.NodeRegistration) (*placement.RegisterResponse, []string, error)
	Heartbeat(ctx context.Context, hb placement.Heartbeat) (*placement.HeartbeatResponse, error)
	WatchAllocations(ctx context.Context, index uint64, wait time.Duration) (*placement.AllocationList, error)
	ReportTaskState(ctx context.Context, st placement.TaskState) error
}

// Holdings lists what the machine holds, as refs and "sha256:<hex>" digests.
type Holdings func() []string

// AgentConfig configures an Agent.
type AgentConfig struct {
	Placement Placement
	Fetch     func(ctx context.Context, ref artifact.Ref) error // brings the artifact into the store
	Holdings  Holdings
	// Releases, if set, describes held and downloading releases (provenance and
	// progress) with each heartbeat, for the web UI.
	Releases  func() []placement.ReleaseReport
	Addrs     []string
	Labels    map[string]string
	Capacity  placement.Resources
	StopGrace time.Duration // before SIGKILL; default 10s
	Logger    *slog.Logger
}

// Agent makes this machine run what the placement service assigns it: it
// registers, heartbeats what runs and what it holds, long-polls its
// allocations, fetches and starts (verification happens in Launcher.Start),
// stops what it must not run, and reports every state change.
type Agent struct {
	cfg AgentConfig
	log *slog.Logger
	l   *Launcher // set by Run

	mu       sync.Mutex
	want     map[string]bool // alloc IDs the server wants running here, as of the last watch
	starting map[string]bool // alloc IDs being fetched or started
	reports  chan placement.TaskState
}

// NewAgent returns an agent. Create it before the launcher, so that the
// launcher's OnEvent can be the agent's Observe; then call Run with the launcher.
func NewAgent(cfg AgentConfig) *Agent {
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Agent{cfg: cfg, log: cfg.Logger.With("room", "agent"), want: map[string]bool{},
		starting: map[string]bool{}, reports: make(chan placement.TaskState, 1024)}
}

// Observe is the launcher's OnEvent hook: it forwards task changes to the server.
func (a *Agent) Observe(t Task) {
	id := t.Spec.Labels[allocLabel]
	if id == "" {
		return
	}
	select {
	case a.reports <- taskState(id, t):
	default:
		a.log.Warn("report queue full; the next heartbeat carries the state", "alloc", id)
	}
}

// taskState maps a launcher task to the placement service's vocabulary.
func taskState(allocID string, t Task) placement.TaskState {
	st := placement.TaskState{AllocID: allocID, Restarts: t.Restarts}
	switch t.State {
	case StateStarting:
		st.State = placement.ClientPending
	case StateRunning, StateRestarting:
		st.State = placement.ClientRunning
	case StateStopped:
		st.State = placement.ClientComplete
	case StateExited:
		st.State = placement.ClientFailed
		if t.Exit != nil && t.Exit.Code == 0 && !t.Exit.Unhealthy {
			st.State = placement.ClientComplete
		}
	default: // oom, failed
		st.State = placement.ClientFailed
	}
	if t.Exit != nil {
		code := t.Exit.Code
		st.ExitCode, st.OOMKilled, st.Message = &code, t.Exit.OOM, t.Exit.Message
	}
	if t.State == StateRunning {
		st.Health = t.Health
	}
	if st.Message == "" && t.HealthKill != "" {
		st.Message = t.HealthKill // the rollout that fails on it says why
	}
	if t.Healthy != nil {
		st.Healthy = new(*t.Healthy)
	}
	return st
}

// Run registers and then keeps the machine, through l, in line with its
// allocations until ctx ends.
func (a *Agent) Run(ctx context.Context, l *Launcher) error {
	a.l = l
	resp, err := a.register(ctx)
	if err != nil {
		return err
	}
	interval := resp.HeartbeatInterval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	var wg sync.WaitGroup
	wg.Go(func() { a.reportLoop(ctx) })
	wg.Go(func() { a.heartbeatLoop(ctx, interval) })
	err = a.watchLoop(ctx)
	wg.Wait()
	return err
}

// register retries until the server answers, so a node can start before its server.
func (a *Agent) register(ctx context.Context) (*placement.RegisterResponse, error) {
	backoff := 500 * time.Millisecond
	for {
		reg := placement.NodeRegistration{Addrs: a.cfg.Addrs, Labels: a.cfg.Labels, Capacity: a.cfg.Capacity,
			Artifacts: a.cfg.Holdings(), Tasks: a.states()}
		resp, stop, err := a.cfg.Placement.Register(ctx, reg)
		if err == nil {
			a.log.Info("registered with placement service", "heartbeat", resp.HeartbeatInterval)
			a.stopAllocs(ctx, stop, "the server placed it elsewhere")
			return resp, nil
		}
		if placement.IsUnauthorized(err) {
			return nil, fmt.Errorf("register: %w (check --join-token-file)", err)
		}
		a.log.Warn("register failed; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// states reports every task this machine runs for the placement service.
func (a *Agent) states() []placement.TaskState {
	var out []placement.TaskState
	for _, t := range a.l.List() {
		if id := t.Spec.Labels[allocLabel]; id != "" {
			out = append(out, taskState(id, t))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AllocID < out[j].AllocID })
	return out
}

func (a *Agent) heartbeatLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		resp, err := a.cfg.Placement.Heartbeat(ctx, placement.Heartbeat{Tasks: a.states(), Artifacts: a.cfg.Holdings(), Releases: a.releases()})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if placement.IsNotFound(err) {
				// The server lost us (or a new server): register again, reporting what runs.
				if _, err := a.register(ctx); err != nil {
					a.log.Warn("re-register failed", "err", err)
				}
				continue
			}
			a.log.Warn("heartbeat failed", "err", err)
			continue
		}
		a.stopAllocs(ctx, resp.Stop, "the server placed it elsewhere while this machine was away")
	}
}

func (a *Agent) reportLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-a.reports:
			if err := a.cfg.Placement.ReportTaskState(ctx, st); err != nil && ctx.Err() == nil {
				a.log.Warn("report task state failed; the next heartbeat carries it", "alloc", st.AllocID, "err", err)
			}
		}
	}
}

func (a *Agent) watchLoop(ctx context.Context) error {
	var index uint64
	for {
		list, err := a.cfg.Placement.WatchAllocations(ctx, index, 30*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.log.Warn("watch allocations failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		index = list.Index
		a.reconcile(ctx, list.Allocations)
	}
}

// reconcile starts what should run and is not running, and stops the rest.
func (a *Agent) reconcile(ctx context.Context, allocs []*placement.Alloc) {
	want := map[string]*placement.Alloc{}
	ids := map[string]bool{}
	for _, al := range allocs {
		if al.DesiredStatus == placement.DesiredRun {
			want[al.ID] = al
			ids[al.ID] = true
		}
	}
	a.mu.Lock()
	a.want = ids
	a.mu.Unlock()
	have := map[string]Task{}
	for _, t := range a.l.List() {
		id := t.Spec.Labels[allocLabel]
		if id == "" {
			continue // started by hand with `ballena run`: not the server's business
		}
		if _, ok := want[id]; !ok {
			if !t.State.Final() {
				a.stop(ctx, t, "its allocation was stopped")
			}
			continue
		}
		have[id] = t
	}
	for id, al := range want {
		if _, ok := have[id]; ok {
			continue // running, restarting by policy, or ended: the launcher and server track it
		}
		a.mu.Lock()
		busy := a.starting[id]
		if !busy {
			a.starting[id] = true
		}
		a.mu.Unlock()
		if !busy {
			go a.launch(ctx, al)
		}
	}
}

// launch fetches, verifies and starts an allocation. A refusal or a failed
// fetch is reported with its reason and tried again with backoff while the
// server still wants the allocation here: fixing the trust policy or
// publishing the artifact is enough, and the server does not churn placements.
func (a *Agent) launch(ctx context.Context, al *placement.Alloc) {
	defer func() {
		a.mu.Lock()
		delete(a.starting, al.ID)
		a.mu.Unlock()
	}()
	log := a.log.With("alloc", al.ID, "name", al.Name(), "artifact", al.Artifact)
	backoff := time.Second
	for {
		t, err := a.attempt(ctx, al)
		if err == nil {
			log.Info("allocation started", "task", t.ID, "digest", t.Digest, "pid", t.PID)
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Error("task not started", "err", err, "retry", backoff)
		st := placement.TaskState{AllocID: al.ID, State: placement.ClientPending, Message: oneLine(err)}
		if rerr := a.cfg.Placement.ReportTaskState(ctx, st); rerr != nil {
			log.Warn("report failure", "err", rerr)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
		a.mu.Lock()
		wanted := a.want[al.ID]
		a.mu.Unlock()
		if !wanted {
			return
		}
	}
}

func (a *Agent) attempt(ctx context.Context, al *placement.Alloc) (Task, error) {
	ref, err := artifact.ParseRef(al.Artifact)
	if err != nil {
		return Task{}, err
	}
	if err := a.cfg.Fetch(ctx, ref); err != nil {
		return Task{}, fmt.Errorf("fetch %s: %w", ref, err)
	}
	iso := al.Isolation
	spec := TaskSpec{Artifact: al.Artifact, Args: al.Args, MemoryBytes: al.Resources.Memory,
		CPUMillis: al.Resources.CPU, Pids: al.Resources.PIDs, Restart: RestartPolicy(al.Restart),
		Hostname: al.Name(), Labels: map[string]string{allocLabel: al.ID, "ballena.job": al.Job},
		// The job's isolation, and its pinned digest: Start refuses any other.
		Seccomp: iso.Seccomp, Network: iso.Network, User: iso.User, NoFile: iso.NoFile, CoreBytes: iso.CoreBytes,
		Digest: al.Digest, AllowRollback: al.AllowRollback,
		// The node judges the task's health (and restarts it when it turns
		// unhealthy); the server reads the verdict for rollouts.
		Health: &HealthSpec{Check: al.Check, MinHealthyTime: al.MinHealthyTime, HealthyDeadline: al.HealthyDeadline}}
	// Like NOMAD_ALLOC_INDEX: lets copies of a task on one machine pick distinct ports.
	spec.Env = append(spec.Env, fmt.Sprintf("BALLENA_TASK_INDEX=%d", al.TaskIndex), "BALLENA_JOB="+al.Job, "BALLENA_ALLOC_ID="+al.ID)
	for k, v := range al.Env {
		spec.Env = append(spec.Env, k+"="+v)
	}
	sort.Strings(spec.Env)
	return a.l.Start(ctx, spec)
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func (a *Agent) stopAllocs(ctx context.Context, ids []string, why string) {
	if len(ids) == 0 {
		return
	}
	stop := map[string]bool{}
	for _, id := range ids {
		stop[id] = true
	}
	for _, t := range a.l.List() {
		if stop[t.Spec.Labels[allocLabel]] && !t.State.Final() {
			a.stop(ctx, t, why)
		}
	}
}

func (a *Agent) stop(ctx context.Context, t Task, why string) {
	a.log.Info("stopping task", "id", t.ID, "alloc", t.Spec.Labels[allocLabel], "why", why)
	go func() {
		if _, err := a.l.Stop(ctx, t.ID, syscall.SIGTERM, a.cfg.StopGrace); err != nil && !errors.Is(err, context.Canceled) {
			a.log.Warn("stop task", "id", t.ID, "err", err)
		}
	}()
}

// releases is what the heartbeat says of the node's releases (nil: nothing).
func (a *Agent) releases() []placement.ReleaseReport {
	if a.cfg.Releases == nil {
		return nil
	}
	return a.cfg.Releases()
}
