package launcher

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// The launcher re-executes its own binary (/proc/self/exe) twice per start:
// once as the task's shim (the task's parent, which outlives the launcher,
// writes its log with rotation and records its exit status), and once as the
// task's init, inside the new namespaces, which builds the task's root and
// drops privileges before it execs the whale. The mode travels in modeEnv.
const (
	modeEnv   = "_BALLENA_LAUNCHER_MODE"
	configEnv = "_BALLENA_LAUNCHER_CONFIG"
)

// MaybeRunInit runs the launcher's shim or init and exits when this process
// was started as one; otherwise it returns at once. Call it first in main
// (and in TestMain of packages that start tasks).
func MaybeRunInit() {
	switch os.Getenv(modeEnv) {
	case "shim":
		os.Exit(runShim())
	case "init":
		runInit()
		os.Exit(127)
	case "hold":
		os.Exit(runHold())
	case "check-enter":
		os.Exit(runCheckEnter())
	case "check-exec":
		os.Exit(runCheckExec())
	}
}

// runConfig is what the launcher tells a shim and its init about one run,
// written as run.json in the task's directory.
type runConfig struct {
	ID          string `json:"id"`
	Kind        string `json:"kind"`
	LogPath     string `json:"logPath"`
	LogMaxBytes int64  `json:"logMaxBytes"`
	LogKeep     int    `json:"logKeep"`
	ExitPath    string `json:"exitPath"`
	OOMFile     string `json:"oomFile"` // the memory cgroup's oom_kill counter
	StderrPath  string `json:"stderrPath,omitempty"`

	// IDMap is the run's user namespace; nil: none.
	IDMap *IDMap `json:"idMap,omitempty"`

	// whale
	CgroupProcs []string `json:"cgroupProcs,omitempty"`
	Root        string   `json:"root,omitempty"`   // an empty dir: mount point of the task's root
	Binary      string   `json:"binary,omitempty"` // name of the verified executable the launcher passes as a descriptor
	Args        []string `json:"args,omitempty"`   // argv, argv[0] included
	Env         []string `json:"env,omitempty"`
	Cwd         string   `json:"cwd,omitempty"`
	UID         int      `json:"uid"`
	GID         int      `json:"gid"`
	Hostname    string   `json:"hostname,omitempty"`
	NewNet      bool     `json:"newNet,omitempty"`
	TmpBytes    int64    `json:"tmpBytes,omitempty"`
	Unconfined  bool     `json:"unconfined,omitempty"`
	NoFile      uint64   `json:"nofile,omitempty"`
	CoreBytes   uint64   `json:"coreBytes,omitempty"`

	// oci
	Runc        string `json:"runc,omitempty"`
	RuncRoot    string `json:"runcRoot,omitempty"`
	Bundle      string `json:"bundle,omitempty"`
	ContainerID string `json:"containerId,omitempty"`
	// RootSource is the image root that the shim shows at RootTarget, in its
	// own mount namespace, idmapped into IDMap (or bound, when the launcher
	// made a chowned copy).
	RootSource string `json:"rootSource,omitempty"`
	RootTarget string `json:"rootTarget,omitempty"`
	RootIDMap  bool   `json:"rootIdmap,omitempty"`
}

// shimStatus is the one line a shim writes on its status pipe once the task
// runs (or failed to).
type shimStatus struct {
	PID   int    `json:"pid,omitempty"`
	Start uint64 `json:"start,omitempty"`
	Error string `json:"error,omitempty"`
}

// exitRecord is what a shim writes to ExitPath when the task ends.
type exitRecord struct {
	Status  int       `json:"status"` // raw wait status
	OOMKill bool      `json:"oomKill"`
	At      time.Time `json:"at"`
}

func loadRunConfig(path string) (*runConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseRunConfig(b)
}

func parseRunConfig(b []byte) (*runConfig, error) {
	var c runConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("parse run config: %w", err)
	}
	return &c, nil
}
