package launcher

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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

	// whale
	CgroupProcs []string `json:"cgroupProcs,omitempty"`
	Root        string   `json:"root,omitempty"`   // an empty dir: mount point of the task's root
	Binary      string   `json:"binary,omitempty"` // host path of the verified executable
	Args        []string `json:"args,omitempty"`   // argv, argv[0] included
	Env         []string `json:"env,omitempty"`
	Cwd         string   `json:"cwd,omitempty"`
	UID         int      `json:"uid"`
	GID         int      `json:"gid"`
	Hostname    string   `json:"hostname,omitempty"`
	NewNet      bool     `json:"newNet,omitempty"`
	TmpBytes    int64    `json:"tmpBytes,omitempty"`

	// oci
	Runc        string `json:"runc,omitempty"`
	RuncRoot    string `json:"runcRoot,omitempty"`
	Bundle      string `json:"bundle,omitempty"`
	ContainerID string `json:"containerId,omitempty"`
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
	var c runConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("parse run config: %w", err)
	}
	return &c, nil
}

// runShim is the task's parent. fd 3 is the status pipe to the launcher. A
// cold shim finds its run config in configEnv. A warm shim (no configEnv)
// forks its init at once, into fresh namespaces, and then waits for the path
// of a run config on fd 4: the launcher keeps one warm so that a start costs
// no process start-up. EOF on fd 4 (the launcher went away) ends it.
func runShim() int {
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	status := os.NewFile(3, "status")
	report := func(s shimStatus) {
		if status != nil {
			b, _ := json.Marshal(s)
			_, _ = status.Write(append(b, '\n'))
			status.Close()
			status = nil
		}
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		report(shimStatus{Error: "shim: " + err.Error()})
		return 1
	}
	var pre *pendingInit
	cfgPath := os.Getenv(configEnv)
	if cfgPath == "" {
		if pre, err = forkInit(pw, false); err != nil {
			report(shimStatus{Error: "shim: " + err.Error()})
			return 1
		}
		line, err := bufio.NewReader(os.NewFile(4, "control")).ReadString('\n')
		if err != nil {
			pre.abort()
			return 0
		}
		cfgPath = strings.TrimSuffix(line, "\n")
	}
	cfg, err := loadRunConfig(cfgPath)
	if err != nil {
		pre.abort()
		report(shimStatus{Error: "shim: " + err.Error()})
		return 1
	}
	logf, err := openRotating(cfg.LogPath, cfg.LogMaxBytes, cfg.LogKeep)
	if err != nil {
		pre.abort()
		report(shimStatus{Error: "shim: open log: " + err.Error()})
		return 1
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(logf, pr)
	}()

	var pid int
	var cleanup func()
	switch cfg.Kind {
	case "whale":
		if pre != nil && cfg.NewNet { // made for the host network
			pre.abort()
			pre = nil
		}
		if pre == nil {
			pre, err = forkInit(pw, cfg.NewNet)
		}
		if err == nil {
			pid, err = pre.release(cfg, cfgPath)
		}
	case "oci":
		pre.abort()
		pid, cleanup, err = shimStartOCI(cfg, pw)
	default:
		pre.abort()
		err = fmt.Errorf("unknown kind %q", cfg.Kind)
	}
	pw.Close()
	if err != nil {
		report(shimStatus{Error: err.Error()})
		return 1
	}
	start, _ := procStartTime(pid)
	report(shimStatus{PID: pid, Start: start})

	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err != unix.EINTR {
			break
		}
	}
	rec := exitRecord{Status: int(ws), At: time.Now().UTC()}
	if n, err := readOOMKills(cfg.OOMFile); err == nil && n > 0 {
		rec.OOMKill = true
	}
	// The pipe closes when the last process holding it is gone; with a PID
	// namespace that is as soon as the task's first process dies.
	select {
	case <-copied:
	case <-time.After(2 * time.Second):
	}
	logf.Close()
	b, _ := json.Marshal(rec)
	tmp := cfg.ExitPath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		_ = os.Rename(tmp, cfg.ExitPath)
	}
	if cleanup != nil {
		cleanup()
	}
	return 0
}

// pendingInit is an init started in new namespaces, blocked on its sync pipe
// until release tells it which run config to set up.
type pendingInit struct {
	cmd   *exec.Cmd
	syncW *os.File
	execR *os.File
}

func forkInit(out *os.File, newNet bool) (*pendingInit, error) {
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	execR, execW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	flags := uintptr(syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC)
	if newNet {
		flags |= syscall.CLONE_NEWNET
	}
	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{"ballena-init"},
		Env:         []string{modeEnv + "=init"},
		Stdin:       devnull,
		Stdout:      out,
		Stderr:      out,
		ExtraFiles:  []*os.File{syncR, execW},
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: flags},
	}
	err = cmd.Start()
	syncR.Close()
	execW.Close()
	if err != nil {
		syncW.Close()
		execR.Close()
		return nil, fmt.Errorf("start init: %w", err)
	}
	return &pendingInit{cmd: cmd, syncW: syncW, execR: execR}, nil
}

// abort kills an init that was never released; nil is fine.
func (p *pendingInit) abort() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_, _ = p.cmd.Process.Wait()
	p.syncW.Close()
	p.execR.Close()
}

// release puts the init in the task's cgroup, hands it the run config, and
// waits until it has exec'd the whale (the exec pipe closes) or reported an
// error on that pipe. No task code runs before the cgroup holds the process.
func (p *pendingInit) release(cfg *runConfig, cfgPath string) (int, error) {
	pid := p.cmd.Process.Pid
	for _, f := range cfg.CgroupProcs {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
			p.abort()
			return 0, fmt.Errorf("join cgroup: %w", err)
		}
	}
	if _, err := p.syncW.Write([]byte(cfgPath + "\n")); err != nil {
		p.abort()
		return 0, fmt.Errorf("release init: %w", err)
	}
	p.syncW.Close()
	msg, _ := io.ReadAll(io.LimitReader(p.execR, 4096))
	p.execR.Close()
	if len(msg) > 0 {
		_ = p.cmd.Process.Kill()
		_, _ = p.cmd.Process.Wait()
		return 0, errors.New(string(msg))
	}
	// Leave the process to unix.Wait4 in runShim; os/exec must not reap it.
	return pid, nil
}

// shimStartOCI creates the container with runc (its init then waits for
// start, already in its cgroup), becomes its parent as a subreaper, and starts it.
func shimStartOCI(cfg *runConfig, out *os.File) (int, func(), error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 0, nil, fmt.Errorf("subreaper: %w", err)
	}
	runc := func(args ...string) *exec.Cmd {
		return exec.Command(cfg.Runc, append([]string{"--root", cfg.RuncRoot, "--log-format", "json"}, args...)...)
	}
	cleanup := func() { _ = runc("delete", "--force", cfg.ContainerID).Run() }
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
	create.Stdin, create.Stdout, create.Stderr = devnull, out, out
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

// runInit runs inside the new namespaces, as PID 1 of the task. fd 3 is the
// sync pipe (the shim writes the run config's path once we are in the cgroup), fd 4 the exec
// pipe (closed by a successful exec, or carries the error).
func runInit() {
	runtime.LockOSThread() // capability sets are per thread: do it all on the one that execs
	execW := os.NewFile(4, "exec")
	fail := func(err error) {
		fmt.Fprintf(execW, "init: %v", err)
		os.Exit(127)
	}
	syscall.CloseOnExec(4)
	line, err := bufio.NewReader(os.NewFile(3, "sync")).ReadString('\n')
	if err != nil {
		os.Exit(127) // the shim gave up on us
	}
	syscall.Close(3)
	cfg, err := loadRunConfig(strings.TrimSuffix(line, "\n"))
	if err != nil {
		fail(err)
	}
	if err := setupRoot(cfg); err != nil {
		fail(err)
	}
	if err := dropPrivileges(cfg.UID, cfg.GID); err != nil {
		fail(err)
	}
	// Whatever the launcher inherited without close-on-exec stays out of the
	// task: it gets stdin, stdout and stderr only.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fail(fmt.Errorf("close_range: %w", err))
	}
	err = unix.Exec("/whale", cfg.Args, cfg.Env)
	fail(fmt.Errorf("exec %s: %w", cfg.Args[0], err))
}

// setupRoot builds the task's root on a tmpfs (the binary read-only, /proc of
// the new PID namespace, null/zero/full/random/urandom, a private /tmp, the
// host's resolv.conf, hosts and CA bundle read-only),
// pivots into it and makes it read-only.
func setupRoot(cfg *runConfig) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	r := cfg.Root
	if err := unix.Mount("tmpfs", r, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m,mode=0755"); err != nil {
		return fmt.Errorf("mount root tmpfs: %w", err)
	}
	for _, d := range []string{"proc", "dev", "tmp", ".oldroot"} {
		if err := os.Mkdir(filepath.Join(r, d), 0o755); err != nil {
			return err
		}
	}
	bind := func(src, dst string, flags uintptr) error {
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", src, err)
		}
		if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
			return fmt.Errorf("remount %s: %w", dst, err)
		}
		return nil
	}
	if err := bind(cfg.Binary, filepath.Join(r, "whale"), unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV); err != nil {
		return err
	}
	for _, d := range []string{"null", "zero", "full", "random", "urandom"} {
		if err := bind("/dev/"+d, filepath.Join(r, "dev", d), unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	// Name resolution and TLS roots, read-only, when the host has them: most
	// services need them and they hold nothing secret.
	for _, f := range []string{"/etc/resolv.conf", "/etc/hosts", "/etc/ssl/certs/ca-certificates.crt"} {
		st, err := os.Stat(f)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		dst := filepath.Join(r, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := bind(f, dst, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(r, "dev", name)); err != nil {
			return err
		}
	}
	tmpOpts := "mode=1777"
	if cfg.TmpBytes > 0 {
		tmpOpts += ",size=" + strconv.FormatInt(cfg.TmpBytes, 10)
	}
	if err := unix.Mount("tmpfs", filepath.Join(r, "tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpOpts); err != nil {
		return fmt.Errorf("mount /tmp: %w", err)
	}
	if err := unix.Mount("proc", filepath.Join(r, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := guardProc(filepath.Join(r, "proc")); err != nil {
		return err
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("sethostname: %w", err)
		}
	}
	if cfg.NewNet {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	if err := unix.PivotRoot(r, filepath.Join(r, ".oldroot")); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount old root: %w", err)
	}
	_ = os.Remove("/.oldroot")
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("remount root read-only: %w", err)
	}
	cwd := cfg.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if err := unix.Chdir(cwd); err != nil {
		return fmt.Errorf("chdir %s: %w", cwd, err)
	}
	return nil
}

// guardProc makes the parts of /proc that reach beyond the task's namespaces
// read-only, and hides those that leak the host, as runc does: a task may
// run as uid 0, which file permissions alone would let write sysctls.
func guardProc(proc string) error {
	for _, p := range []string{"sys", "sysrq-trigger", "irq", "bus", "fs"} {
		path := filepath.Join(proc, p)
		if _, err := os.Lstat(path); err != nil {
			continue
		}
		if err := unix.Mount(path, path, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("protect /proc/%s: %w", p, err)
		}
		if err := unix.Mount("", path, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("protect /proc/%s: %w", p, err)
		}
	}
	for _, p := range []string{"kcore", "keys", "timer_list", "sched_debug", "latency_stats", "acpi", "scsi"} {
		path := filepath.Join(proc, p)
		st, err := os.Lstat(path)
		if err != nil {
			continue
		}
		if st.IsDir() {
			err = unix.Mount("tmpfs", path, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0")
		} else {
			err = unix.Mount("/dev/null", path, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("mask /proc/%s: %w", p, err)
		}
	}
	return nil
}

// loopbackUp brings lo up in a new network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// dropPrivileges sets no_new_privs, empties the bounding, ambient and
// inheritable capability sets, and switches to uid:gid with no supplementary
// groups; after the exec the task holds no capability, even as uid 0.
func dropPrivileges(uid, gid int) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	last, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return err
	}
	lastCap, err := strconv.Atoi(strings.TrimSpace(string(last)))
	if err != nil {
		return fmt.Errorf("cap_last_cap: %w", err)
	}
	for c := 0; c <= lastCap; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("drop capability %d from bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && err != unix.EINVAL {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// procStartTime returns a process's start time (field 22 of /proc/<pid>/stat,
// in clock ticks since boot): with the PID it names a process uniquely. It
// fails for processes that are gone or are zombies.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("process %d: %w", pid, os.ErrProcessDone)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22; f[0] is field 3
}

// alive reports whether pid is still the process that started at start.
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := procStartTime(pid)
	return err == nil && (start == 0 || st == start)
}
