package launcher

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// shimStartOCI creates the container with runc (its init then waits for
// start, already in its cgroup), becomes its parent as a subreaper, and starts it.
func shimStartOCI(cfg *runConfig, out, errOut *os.File) (int, func(), error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 0, nil, fmt.Errorf("subreaper: %w", err)
	}
	runc := func(args ...string) *exec.Cmd {
		return exec.Command(cfg.Runc, append([]string{"--root", cfg.RuncRoot, "--log-format", "json"}, args...)...)
	}
	unmount, err := mountTaskRoot(cfg)
	if err != nil {
		return 0, nil, err
	}
	cleanup := func() {
		_ = runc("delete", "--force", cfg.ContainerID).Run()
		unmount()
	}
	pidFile := filepath.Join(cfg.Bundle, "pid")
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, nil, err
	}
	defer devnull.Close()
	// runc hands its stdio to the container, so it gets the log pipe itself
	// (a Go writer would make Run wait for the container); its own messages
	// go to a file we can quote.
	runcLog := filepath.Join(cfg.Bundle, "runc.log")
	_ = os.Remove(runcLog)
	runcErr := func() string {
		b, _ := os.ReadFile(runcLog)
		return lastRuncError(b)
	}
	create := runc("--log", runcLog, "create", "--bundle", cfg.Bundle, "--pid-file", pidFile, cfg.ContainerID)
	create.Stdin, create.Stdout, create.Stderr = devnull, out, errOut
	if err := create.Run(); err != nil {
		cleanup()
		return 0, nil, fmt.Errorf("runc create: %v: %s", err, runcErr())
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		cleanup()
		return 0, nil, fmt.Errorf("runc create: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		cleanup()
		return 0, nil, fmt.Errorf("runc create: pid file: %w", err)
	}
	if err := runc("--log", runcLog, "start", cfg.ContainerID).Run(); err != nil {
		cleanup()
		return 0, nil, fmt.Errorf("runc start: %v: %s", err, runcErr())
	}
	return pid, cleanup, nil
}

// lastRuncError picks the last error message out of runc's log (JSON lines
// with a "msg" field, or plain text).
func lastRuncError(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var m struct{ Level, Msg string }
		if json.Unmarshal([]byte(lines[i]), &m) == nil {
			if m.Level == "error" || m.Level == "fatal" {
				return m.Msg
			}
			continue
		}
		if lines[i] != "" {
			return lines[i]
		}
	}
	return "see " + "runc.log"
}

// mountTaskRoot shows the image root at RootTarget for a task with a user
// namespace: idmapped into it, or bound (a copy chowned into its ids). The
// shim runs in a mount namespace of its own (the launcher started it so),
// made a slave first, so that the mount is seen by runc and the task only,
// and goes when they do. It returns the undo.
func mountTaskRoot(cfg *runConfig) (func(), error) {
	if cfg.RootSource == "" {
		return func() {}, nil
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return nil, fmt.Errorf("own mount namespace: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.RootTarget), 0o711); err != nil {
		return nil, err
	}
	if err := os.Mkdir(cfg.RootTarget, 0o755); err != nil && !os.IsExist(err) {
		return nil, err
	}
	undo := func() {
		_ = unix.Unmount(cfg.RootTarget, unix.MNT_DETACH)
		_ = os.Remove(cfg.RootTarget)
	}
	if cfg.RootIDMap {
		if cfg.IDMap == nil {
			return nil, fmt.Errorf("idmapped root without a user namespace")
		}
		if err := mountIDMapped(cfg.RootSource, cfg.RootTarget, cfg.IDMap); err != nil {
			undo()
			return nil, err
		}
		return undo, nil
	}
	if err := unix.Mount(cfg.RootSource, cfg.RootTarget, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		undo()
		return nil, fmt.Errorf("bind task root: %w", err)
	}
	if err := unix.Mount("", cfg.RootTarget, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|lockedFlags(cfg.RootTarget), ""); err != nil {
		undo()
		return nil, fmt.Errorf("bind task root read-only: %w", err)
	}
	return undo, nil
}
