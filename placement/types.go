package placement

import (
	"fmt"
	"time"
)

// Resources is an amount of cpu (millicores), memory (bytes) and process ids.
type Resources struct {
	CPU    int64 `json:"cpu"`    // millicores
	Memory int64 `json:"memory"` // bytes
	PIDs   int64 `json:"pids,omitempty"`
}

// Add returns r + o.
func (r Resources) Add(o Resources) Resources {
	return Resources{r.CPU + o.CPU, r.Memory + o.Memory, r.PIDs + o.PIDs}
}

// Sub returns r - o.
func (r Resources) Sub(o Resources) Resources {
	return Resources{r.CPU - o.CPU, r.Memory - o.Memory, r.PIDs - o.PIDs}
}

// Fits reports whether r fits into free. A zero pids request or capacity means
// pids are not accounted.
func (r Resources) Fits(free Resources) bool {
	return r.CPU <= free.CPU && r.Memory <= free.Memory && (r.PIDs == 0 || r.PIDs <= free.PIDs)
}

func (r Resources) String() string {
	s := fmt.Sprintf("cpu %dm, memory %s", r.CPU, FormatSize(r.Memory))
	if r.PIDs > 0 {
		s += fmt.Sprintf(", pids %d", r.PIDs)
	}
	return s
}

// Band is a priority band.
type Band string

// Priority bands: prod may preempt batch, never the other way, never prod.
const (
	BandProd  Band = "prod"
	BandBatch Band = "batch"
)

// Restart policies, applied by the launcher on the machine.
const (
	RestartNever     = "never"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// Constraint operators on machine labels.
const (
	OpEquals    = "equals"
	OpNotEquals = "not_equals"
	OpIn        = "in"
	OpNotIn     = "not_in"
)

// Constraint restricts a job to machines whose label satisfies Op against Values.
type Constraint struct {
	Label  string   `json:"label"`
	Op     string   `json:"op"`
	Values []string `json:"values"`
}

func (c Constraint) String() string {
	switch c.Op {
	case OpEquals:
		return fmt.Sprintf("%s = %s", c.Label, c.Values[0])
	case OpNotEquals:
		return fmt.Sprintf("%s != %s", c.Label, c.Values[0])
	case OpNotIn:
		return fmt.Sprintf("%s not in %v", c.Label, c.Values)
	}
	return fmt.Sprintf("%s in %v", c.Label, c.Values)
}

// Update says how a job moves to a new version: at most MaxParallel tasks are
// replaced (or migrated off a draining machine) at a time, and the next ones
// only once the replacements have been healthy for MinHealthyTime.
type Update struct {
	MaxParallel int `json:"max_parallel"`
	// Canary is how many tasks move to a new version first; the rollout then
	// waits for `ballena job promote`.
	Canary int `json:"canary,omitempty"`
	// MinHealthyTime is how long a new task must stay healthy (its check
	// passing, or running when it has none) to count as a healthy replacement.
	MinHealthyTime time.Duration `json:"min_healthy_time,omitempty"`
	// HealthyDeadline is how long a new task has to become healthy before the
	// rollout fails.
	HealthyDeadline time.Duration `json:"healthy_deadline,omitempty"`
	// AutoRevert moves a failed rollout back to the last version whose
	// rollout succeeded.
	AutoRevert bool `json:"auto_revert,omitempty"`
	// AutoPromote goes on by itself once the canaries are healthy: they
	// prove the version on a few tasks, and a failure among them reverts.
	AutoPromote bool `json:"auto_promote,omitempty"`
}

// Deployment is the rollout of one job version: new tasks replace old ones
// update.max_parallel at a time, each batch once the last proved healthy.
type Deployment struct {
	ID          string `json:"id"`
	JobVersion  uint64 `json:"job_version"`
	Status      string `json:"status"`
	Description string `json:"description,omitempty"`
	// Canary is how many tasks move first; the rest wait for Promoted.
	Canary   int  `json:"canary,omitempty"`
	Promoted bool `json:"promoted,omitempty"`
	// A revert (auto_revert or `job revert`) goes from version RevertedFrom
	// back to the spec of version RevertedTo.
	RevertedFrom uint64 `json:"reverted_from,omitempty"`
	RevertedTo   uint64 `json:"reverted_to,omitempty"`
	// AutoRevert: auto_revert made this version because RevertedFrom failed.
	AutoRevert  bool      `json:"auto_revert,omitempty"`
	CreateIndex uint64    `json:"create_index"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	EndedAt     time.Time `json:"ended_at,omitzero"`
}

// Deployment statuses.
const (
	DeployRunning    = "running"
	DeployPaused     = "awaiting-promotion" // canaries healthy; `ballena job promote` goes on
	DeploySuccessful = "successful"
	DeployFailed     = "failed"
	DeployCancelled  = "cancelled" // superseded by a newer version, or the job stopped
)

// MaxHistory is how many earlier versions a job keeps.
const MaxHistory = 10

// Defaults of Update's health settings, as in Nomad.
const (
	DefaultMinHealthyTime  = 10 * time.Second
	DefaultHealthyDeadline = 5 * time.Minute
)

// Check is a task's health check, run by the node inside the task's network
// namespace where it has one. Exactly one of HTTP, TCP and Exec is set.
type Check struct {
	// HTTP is a path: GET http://127.0.0.1:PORT/PATH is healthy on a 2xx or 3xx.
	HTTP string `json:"http,omitempty"`
	// TCP checks that 127.0.0.1:PORT accepts a connection.
	TCP bool `json:"tcp,omitempty"`
	// Exec runs a command in the task's namespaces, as the task's user;
	// exit status 0 is healthy.
	Exec []string `json:"exec,omitempty"`
	// Port is the port HTTP and TCP checks use. PortEnv instead names an
	// environment variable that holds it: if the job's env does not set it,
	// the node picks a free port and sets it in the task's environment.
	Port    int    `json:"port,omitempty"`
	PortEnv string `json:"port_env,omitempty"`
	// Interval between checks (default 10s), Timeout of one check (default
	// 2s), and Failures: consecutive failed checks before the task is
	// unhealthy (default 3).
	Interval time.Duration `json:"interval,omitempty"`
	Timeout  time.Duration `json:"timeout,omitempty"`
	Failures int           `json:"failures,omitempty"`
}

// Defaults of Check's timing.
const (
	DefaultCheckInterval = 10 * time.Second
	DefaultCheckTimeout  = 2 * time.Second
	DefaultCheckFailures = 3
)

// Task health, as the node reports it (TaskState.Health, Alloc.Health).
const (
	HealthStarting  = "starting"  // running; its check has not passed yet
	HealthHealthy   = "healthy"   // the check passes (or, with no check, the task runs)
	HealthUnhealthy = "unhealthy" // Failures checks in a row failed
)

// Job is what an admin asks to run: Count copies (tasks) of one artifact.
type Job struct {
	Name          string            `json:"name"`
	Artifact      string            `json:"artifact"` // name@version
	Digest        string            `json:"digest,omitempty"`
	Count         int               `json:"count"`
	Resources     Resources         `json:"resources"`
	Priority      Band              `json:"priority"`
	Constraints   []Constraint      `json:"constraints,omitempty"`
	Spread        string            `json:"spread,omitempty"`
	DistinctHosts bool              `json:"distinct_hosts,omitempty"`
	Args          []string          `json:"args,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Restart       string            `json:"restart"`
	Update        Update            `json:"update"`
	Isolation     Isolation         `json:"isolation,omitzero"`
	Check         *Check            `json:"check,omitempty"`

	// Set by the server.
	Version uint64 `json:"version,omitempty"` // bumps when the task spec changes
	Stopped bool   `json:"stopped,omitempty"`
	// Stable: this version's rollout succeeded; auto_revert goes back to the
	// newest stable version.
	Stable bool `json:"stable,omitempty"`
	// Deployment is the rollout of this version.
	Deployment *Deployment `json:"deployment,omitempty"`
	// History holds earlier versions, newest first (at most MaxHistory), each
	// with its rollout's outcome, for `job history` and `job revert`.
	History     []*Job    `json:"history,omitempty"`
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	CreateIndex uint64    `json:"create_index,omitempty"`
	ModifyIndex uint64    `json:"modify_index,omitempty"`
}

// Isolation is how a machine confines a job's tasks, beyond their resources: the
// scheduler copies it into every allocation and the launcher applies it. The
// zero value is the default: the seccomp filter, the host network, the
// image's user (else 65534:65534), 4096 open files, no core dumps.
type Isolation struct {
	// Seccomp is "" (the default filter) or "unconfined" (job field
	// `seccomp: unconfined`: no filter; nodes log it, ps and inspect show it).
	Seccomp string `json:"seccomp,omitempty"`
	// Network is "" or "host" (share the machine's network) or "none" (a
	// network namespace of the task's own with loopback only).
	Network string `json:"network,omitempty"`
	// User overrides the image's user: uid, uid:gid, or names from the
	// image's /etc/passwd and /etc/group.
	User string `json:"user,omitempty"`
	// NoFile is RLIMIT_NOFILE (0: the node's default, 4096); CoreBytes is
	// RLIMIT_CORE (0: no core dumps).
	NoFile    int64 `json:"nofile,omitempty"`
	CoreBytes int64 `json:"core_bytes,omitempty"`
}

// Node states.
const (
	NodeReady = "ready"
	NodeDown  = "down"
)

// Node is a machine as the placement service knows it.
type Node struct {
	ID        string            `json:"id"` // libp2p peer ID of the node key
	PublicKey []byte            `json:"public_key"`
	Addrs     []string          `json:"addrs,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Capacity  Resources         `json:"capacity"`
	Artifacts []string          `json:"artifacts,omitempty"` // held refs (name@version) and digests
	Status    string            `json:"status"`
	Drain     bool              `json:"drain,omitempty"`
	// Revoked nodes may no longer heartbeat, register or receive allocations.
	Revoked bool `json:"revoked,omitempty"`

	RegisteredAt time.Time `json:"registered_at,omitzero"`
	LastSeen     time.Time `json:"last_seen,omitzero"`
	CreateIndex  uint64    `json:"create_index,omitempty"`
	ModifyIndex  uint64    `json:"modify_index,omitempty"`
}

// Desired statuses of an allocation, set by the server.
const (
	DesiredRun  = "run"
	DesiredStop = "stop"
)

// Client statuses of an allocation, reported by the launcher.
const (
	ClientPending  = "pending"
	ClientRunning  = "running"
	ClientComplete = "complete" // exited 0, or killed on request
	ClientFailed   = "failed"
)

func clientTerminal(s string) bool { return s == ClientComplete || s == ClientFailed }

// Alloc (allocation) binds one task of a job to one machine.
type Alloc struct {
	ID         string            `json:"id"`
	Job        string            `json:"job"`
	TaskIndex  int               `json:"task_index"`
	JobVersion uint64            `json:"job_version"`
	NodeID     string            `json:"node_id"`
	Band       Band              `json:"band"`
	Artifact   string            `json:"artifact"`
	Digest     string            `json:"digest,omitempty"`
	Resources  Resources         `json:"resources"`
	Args       []string          `json:"args,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Restart    string            `json:"restart"`
	Isolation  Isolation         `json:"isolation,omitzero"`
	// Check is the job's health check; the node runs it and restarts the
	// task by its restart policy when it turns unhealthy.
	Check *Check `json:"check,omitempty"`
	// MinHealthyTime and HealthyDeadline are the job's update settings, which
	// the node applies to decide Healthy (Nomad's client-side health).
	MinHealthyTime  time.Duration `json:"min_healthy_time,omitempty"`
	HealthyDeadline time.Duration `json:"healthy_deadline,omitempty"`
	// AllowRollback: the task runs a revert (`job revert`, auto_revert), an
	// admin's consent to run a version older than one its node verified.
	AllowRollback bool `json:"allow_rollback,omitempty"`

	DesiredStatus      string `json:"desired_status"`
	DesiredDescription string `json:"desired_description,omitempty"`
	ClientStatus       string `json:"client_status"`
	ExitCode           *int   `json:"exit_code,omitempty"`
	OOMKilled          bool   `json:"oom_killed,omitempty"`
	Message            string `json:"message,omitempty"`
	Restarts           int    `json:"restarts,omitempty"`
	// Health is the check's latest verdict (Health* constants; "" before the
	// task runs). Healthy is the node's verdict for rollouts, set once: true
	// when the task stayed healthy for MinHealthyTime, false when it turned
	// unhealthy, ended or restarted first, or missed HealthyDeadline.
	Health  string `json:"health,omitempty"`
	Healthy *bool  `json:"healthy,omitempty"`
	// Replaces is the allocation this one took over from (update, drain, node loss).
	Replaces string `json:"replaces,omitempty"`

	CreatedAt   time.Time `json:"created_at,omitzero"`
	CreateIndex uint64    `json:"create_index,omitempty"`
	ModifyIndex uint64    `json:"modify_index,omitempty"`
}

// Name is the task's human name, e.g. "api[3]".
func (a *Alloc) Name() string { return fmt.Sprintf("%s[%d]", a.Job, a.TaskIndex) }

// live reports whether the allocation holds resources: it should run and has not ended.
func (a *Alloc) live() bool { return a.DesiredStatus == DesiredRun && !clientTerminal(a.ClientStatus) }

// Task states.
const (
	TaskPending = "pending" // waiting for room
	TaskPlaced  = "placed"
	TaskDone    = "done" // ended and its restart policy says not to run it again
)

// Task is one of a job's Count copies; it lives across allocations.
type Task struct {
	Job     string `json:"job"`
	Index   int    `json:"index"`
	State   string `json:"state"`
	AllocID string `json:"alloc_id,omitempty"`
	Reason  string `json:"reason,omitempty"` // why it is pending, or why it ended
	// Failures counts allocations of this task that failed for good on their
	// machine (the launcher's restarts exhausted) in this job version.
	Failures int `json:"failures,omitempty"`
}

// Evaluation records one scheduling pass over a job and what came of it.
type Evaluation struct {
	ID        string        `json:"id"`
	Job       string        `json:"job,omitempty"`
	Trigger   string        `json:"trigger"`
	Placed    int           `json:"placed"`
	Stopped   int           `json:"stopped"`
	Preempted int           `json:"preempted"`
	Pending   []PendingTask `json:"pending,omitempty"`
	Notes     []string      `json:"notes,omitempty"`
	Index     uint64        `json:"index"`
	Time      time.Time     `json:"time"`
	// Status is pending from the operation that asked for the evaluation until
	// its plan commits; a new leader runs the pending ones again.
	Status string `json:"status,omitempty"`
}

// Evaluation statuses.
const (
	EvalPending  = "pending"
	EvalComplete = "complete"
)

// PendingTask is a task that could not be placed, and why.
type PendingTask struct {
	Index  int    `json:"index"`
	Reason string `json:"reason"`
}
