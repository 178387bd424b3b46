package placement

import "time"

// Wire types of the /v1/ API, shared by the server and the client.

// NodeRegistration is what a launcher says about its machine when it joins.
type NodeRegistration struct {
	// PublicKey is the raw 32-byte ed25519 node key; the node ID is derived from it.
	PublicKey []byte            `json:"public_key"`
	Addrs     []string          `json:"addrs,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Capacity  Resources         `json:"capacity"`
	Artifacts []string          `json:"artifacts,omitempty"` // refs (api@1.4.0) and digests (sha256:<hex>)
	Tasks     []TaskState       `json:"tasks,omitempty"`     // what it already runs (after a restart)
}

// RegisterResponse tells a node its ID and how often to heartbeat.
type RegisterResponse struct {
	NodeID            string        `json:"node_id"`
	HeartbeatInterval time.Duration `json:"heartbeat_interval"`
	TTL               time.Duration `json:"ttl"`
}

// TaskState is a launcher's report on one allocation.
type TaskState struct {
	AllocID   string `json:"alloc_id"`
	State     string `json:"state"` // pending, running, complete, failed
	ExitCode  *int   `json:"exit_code,omitempty"`
	OOMKilled bool   `json:"oom_killed,omitempty"`
	Message   string `json:"message,omitempty"`
	Restarts  int    `json:"restarts,omitempty"`
	// Health and Healthy: see Alloc. Healthy, once reported, never changes
	// for an allocation; the node keeps reporting it.
	Health  string `json:"health,omitempty"`
	Healthy *bool  `json:"healthy,omitempty"`
}

// Heartbeat is a launcher's periodic report: what it runs and what it holds.
type Heartbeat struct {
	Tasks []TaskState `json:"tasks"`
	// Artifacts replaces the node's list of held refs and digests; nil leaves it as is.
	Artifacts []string `json:"artifacts,omitempty"`
	// Releases describes what the node holds or is fetching, with provenance,
	// for the web UI (fleet.go); kept in the leader's memory, never replicated.
	// An empty list says the node has none; nil (older nodes) says nothing.
	Releases []ReleaseReport `json:"releases"`
}

// HeartbeatResponse lists allocations the node runs that it must kill: unknown
// to the server, or duplicates of tasks rescheduled while it was away.
type HeartbeatResponse struct {
	Stop []string      `json:"stop,omitempty"`
	TTL  time.Duration `json:"ttl"`
}

// AllocationList is a node's allocations at an index. An allocation missing from
// the list, or with desired_status "stop", must not run.
type AllocationList struct {
	Index       uint64   `json:"index"`
	Allocations []*Alloc `json:"allocations"`
}

// JobStatus is a job with its tasks and the last evaluation.
type JobStatus struct {
	Job      *Job           `json:"job"`
	Rollout  *Rollout       `json:"rollout,omitempty"`
	Tasks    []TaskStatus   `json:"tasks"`
	Summary  map[string]int `json:"summary"` // running, starting (placed, not yet running), waiting (no room), complete, failed, done
	LastEval *Evaluation    `json:"last_evaluation,omitempty"`
}

// TaskStatus is one task as `job status` shows it.
type TaskStatus struct {
	Index        int    `json:"index"`
	State        string `json:"state"`
	AllocID      string `json:"alloc_id,omitempty"`
	NodeID       string `json:"node_id,omitempty"`
	Version      uint64 `json:"version,omitempty"`
	Desired      string `json:"desired,omitempty"`
	ClientStatus string `json:"client_status,omitempty"`
	ExitCode     *int   `json:"exit_code,omitempty"`
	OOMKilled    bool   `json:"oom_killed,omitempty"`
	Reason       string `json:"reason,omitempty"`
	Message      string `json:"message,omitempty"` // the launcher's last word, e.g. why verification refused
	Health       string `json:"health,omitempty"`
	Healthy      *bool  `json:"healthy,omitempty"`
}

// RevertRequest asks for a job to go back to an earlier version.
type RevertRequest struct {
	Version uint64 `json:"version"`
}

// NodeInfo is one machine as `ballena nodes` shows it.
type NodeInfo struct {
	Node
	Allocated Resources `json:"allocated"`
	Tasks     int       `json:"tasks"`
}

// DrainRequest turns draining on or off.
type DrainRequest struct {
	Enable bool `json:"enable"`
}

// SubmitResponse is the outcome of submitting or stopping a job.
type SubmitResponse struct {
	Job         *Job          `json:"job"`
	Evaluations []*Evaluation `json:"evaluations"`
}

type apiError struct {
	Error string `json:"error"`
}
