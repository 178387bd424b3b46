package launcher

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"ballena.dev/placement"
)

// RestartPolicy says what the launcher does when a task's process ends.
type RestartPolicy string

// Restart policies.
const (
	RestartNever     RestartPolicy = "never"
	RestartOnFailure RestartPolicy = "on-failure" // nonzero exit, signal or OOM kill
	RestartAlways    RestartPolicy = "always"
)

// State is where a task is in its life.
type State string

// Task states. Exited, OOM, Stopped and Failed are final.
const (
	StateStarting   State = "starting"
	StateRunning    State = "running"
	StateRestarting State = "restarting" // waiting out its backoff
	StateExited     State = "exited"     // the process ended on its own; see Exit
	StateOOM        State = "oom"        // killed by the kernel for exceeding its memory limit
	StateStopped    State = "stopped"    // ended by Stop
	StateFailed     State = "failed"     // could not be (re)started; see Exit.Message
)

// Final reports whether a task in state s will not run again.
func (s State) Final() bool {
	switch s {
	case StateExited, StateOOM, StateStopped, StateFailed:
		return true
	}
	return false
}

// Errors the launcher returns, wrapped with context.
var (
	ErrNotFound = errors.New("not found")
	// ErrRefused means verification refused the artifact: nothing was started.
	ErrRefused = errors.New("refused")
	ErrInvalid = errors.New("invalid task spec")
)

// TaskSpec is what to run and within which limits.
type TaskSpec struct {
	Artifact   string   `json:"artifact"`             // name@version
	Entrypoint []string `json:"entrypoint,omitempty"` // overrides the artifact's entrypoint (images)
	Args       []string `json:"args,omitempty"`       // overrides the artifact's cmd
	Env        []string `json:"env,omitempty"`        // KEY=VALUE, added to the artifact's env
	WorkingDir string   `json:"workingDir,omitempty"`

	MemoryBytes int64         `json:"memoryBytes,omitempty"` // hard limit; 0 means Config.DefaultMemory
	CPUMillis   int64         `json:"cpuMillis,omitempty"`   // CFS quota in thousandths of a CPU; 0 means unlimited
	Pids        int64         `json:"pids,omitempty"`        // max processes and threads; 0 means Config.DefaultPids
	Restart     RestartPolicy `json:"restart,omitempty"`     // default never

	// User is "uid" or "uid:gid"; images also take names from their
	// /etc/passwd and /etc/group ("www", "www:www"). Empty means the image's
	// own User, else Config.DefaultUser (65534:65534).
	User string `json:"user,omitempty"`
	// Network is "host" (default: share the machine's network) or "none"
	// (a new network namespace with only loopback).
	Network  string            `json:"network,omitempty"`
	Hostname string            `json:"hostname,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"` // free-form, e.g. the allocation ID

	// Seccomp is "" or "default" (the default filter, see seccomp.go) or
	// "unconfined" (no filter; logged, and shown by ps and inspect).
	Seccomp string `json:"seccomp,omitempty"`
	// Digest, when set, pins the artifact: a start whose verified blob has
	// another sha256 is refused (a job's digest: field).
	Digest string `json:"digest,omitempty"`
	// NoFile is RLIMIT_NOFILE (soft and hard); 0 means Config.DefaultNoFile (4096).
	NoFile int64 `json:"nofile,omitempty"`
	// CoreBytes is RLIMIT_CORE; 0 means no core dumps.
	CoreBytes int64 `json:"coreBytes,omitempty"`
	// Health, when set, has the launcher track the task's health (see
	// health.go): run its check, restart it by policy when it turns
	// unhealthy, and give the deployment verdict Task.Healthy.
	Health *HealthSpec `json:"health,omitempty"`
	// AllowRollback accepts an older version than one verified here before:
	// the placement service sets it on a revert (see RollbackVerifier).
	AllowRollback bool `json:"allowRollback,omitempty"`
}

// HealthSpec is how a task's health is judged: its check (nil: healthy
// while it runs) and the placement service's update settings, which decide
// the one-time verdict Task.Healthy (Nomad's client-side allocation health).
type HealthSpec struct {
	Check *placement.Check `json:"check,omitempty"`
	// MinHealthyTime is how long the task must stay healthy for the verdict
	// to be true; HealthyDeadline (0: none), counted from the task's first
	// start, is when a verdict not yet given turns false.
	MinHealthyTime  time.Duration `json:"minHealthyTime,omitempty"`
	HealthyDeadline time.Duration `json:"healthyDeadline,omitempty"`
}

// Task is a task's record as the launcher keeps it.
type Task struct {
	ID       string   `json:"id"`
	Spec     TaskSpec `json:"spec"`
	Kind     string   `json:"kind"`   // "whale" or "oci"
	Digest   string   `json:"digest"` // sha256 of the artifact blob that was verified and started
	State    State    `json:"state"`
	PID      int      `json:"pid,omitempty"` // the task's first process, as seen from the host
	Restarts int      `json:"restarts"`
	// Cgroup is the task's cgroup path below the hierarchy root, e.g. /ballena/<id>.
	Cgroup    string    `json:"cgroup"`
	CreatedAt time.Time `json:"createdAt"`
	StartedAt time.Time `json:"startedAt,omitzero"` // of the current or last run
	Exit      *ExitInfo `json:"exit,omitempty"`     // of the last run
	Usage     *Usage    `json:"usage,omitempty"`    // filled by Get and List while running
	// Revoked, filled by MarkRevoked for a live task, says that the key that
	// signed its artifact has been revoked since: it runs on but will not restart.
	Revoked string `json:"revoked,omitempty"`

	// Seccomp is the filter the current run has: "default" or "unconfined".
	Seccomp string `json:"seccomp,omitempty"`
	// UserNS is the current run's user namespace; nil means none (the node
	// runs without user namespaces: see Launcher.Isolation).
	UserNS *IDMap `json:"userns,omitempty"`
	// User is the uid:gid the current run's process started as, inside its user namespace.
	User string `json:"user,omitempty"`

	// PIDStart and ShimPID/ShimStart let a restarted launcher find its processes
	// again and tell them from unrelated processes that reused their PIDs.
	PIDStart  uint64 `json:"pidStart,omitempty"`
	ShimPID   int    `json:"shimPid,omitempty"`
	ShimStart uint64 `json:"shimStart,omitempty"`
	Stopping  bool   `json:"stopping,omitempty"`

	// Health is the current run's health (placement.Health*), "" when the
	// task is not running or its spec asks for no health tracking.
	Health string `json:"health,omitempty"`
	// HealthySince is when the current run last turned healthy.
	HealthySince time.Time `json:"healthySince,omitzero"`
	// HealthKill is why the launcher is killing the current run for failing
	// its check; the run's end is then a failure whatever its exit status.
	HealthKill string `json:"healthKill,omitempty"`
	// Healthy is the deployment verdict, given once (see HealthSpec) and
	// never changed after: true when the task stayed healthy for
	// MinHealthyTime, false when it turned unhealthy, ended or restarted
	// first, or HealthyDeadline passed.
	Healthy *bool `json:"healthy,omitempty"`
}

// ExitInfo says how a run ended.
type ExitInfo struct {
	Code    int       `json:"code"`             // exit status, or 128+signal; -1 if unknown
	Signal  string    `json:"signal,omitempty"` // the signal that killed it, if any
	OOM     bool      `json:"oom,omitempty"`
	At      time.Time `json:"at,omitzero"`
	Message string    `json:"message,omitempty"`
	// Unhealthy says the launcher killed the run for failing its health
	// check (Message says how): a failure, whatever the exit status.
	Unhealthy bool `json:"unhealthy,omitempty"`
}

func (e *ExitInfo) String() string {
	switch {
	case e == nil:
		return ""
	case e.OOM:
		return "killed: out of memory"
	case e.Unhealthy:
		return e.Message
	case e.Message != "" && e.Code == -1:
		return e.Message
	case e.Signal != "":
		return fmt.Sprintf("killed by %s (%d)", e.Signal, e.Code)
	}
	return fmt.Sprintf("exit %d", e.Code)
}

// Usage is what a running task's cgroup has consumed.
type Usage struct {
	CPUSeconds  float64 `json:"cpuSeconds"`
	MemoryBytes int64   `json:"memoryBytes"`
	Pids        int64   `json:"pids"`
}

// Artifact is what a Verifier vouches for: a blob on disk whose digest and
// signed release record were checked against the trust policy.
type Artifact struct {
	Name       string
	Version    string
	Kind       string // "whale" or "oci"
	Digest     string // hex sha256
	BlobPath   string
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
}

// Verifier checks an artifact before every start. It must re-hash the blob and
// verify its envelope against the trust policy (scope, revocation, expiry,
// threshold, rollback); an error means nothing may run.
type Verifier interface {
	Verify(ctx context.Context, ref string) (Artifact, error)
}

// ParseUser parses "uid" or "uid:gid" (numeric only: the task's root has no /etc/passwd).
func ParseUser(s string) (uid, gid int, err error) {
	u, g, hasG := strings.Cut(s, ":")
	uid, err = strconv.Atoi(u)
	if err != nil || uid < 0 {
		return 0, 0, fmt.Errorf("%w: user %q: want a numeric uid or uid:gid", ErrInvalid, s)
	}
	gid = uid
	if hasG {
		gid, err = strconv.Atoi(g)
		if err != nil || gid < 0 {
			return 0, 0, fmt.Errorf("%w: user %q: want a numeric uid or uid:gid", ErrInvalid, s)
		}
	}
	return uid, gid, nil
}
