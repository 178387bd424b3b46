package launcher

import (
	"bytes"
	"cmp"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// An exec check runs its command where the task's own processes run.
//
// An image task's: `runc exec`, which joins the container's namespaces and
// cgroup and applies its process settings (user, capabilities,
// no_new_privs, seccomp), as for any process the container starts.
//
// A whale task's, in three steps, because a Go program cannot enter a user
// or mount namespace itself (setns refuses a multi-threaded process):
//
//	launcher ──exec /proc/self/exe (check-enter)──▶ joins the task's cgroup,
//	    then execs nsenter(1) --target <task PID> --user --mount --pid --net --uts --ipc --root --wd
//	nsenter ──fork in the task's PID namespace, exec /proc/self/fd/3 (check-exec)──▶
//	    the launcher's binary again (passed as fd 3: the task's root has no copy),
//	    now inside the task's namespaces as uid 0 of its user namespace:
//	    sets the task's nofile limit, drops privileges as init does (no_new_privs,
//	    no capabilities, the task's uid:gid, no supplementary groups), loads the
//	    task's seccomp filter and execs the command with the task's environment.
//
// The command is looked up in the task's root along the task's PATH. A
// whale's root holds no programs, but /proc/1/exe is the whale itself:
// `exec: [/proc/1/exe, health]` runs the task's own binary as its check.
//
// The check's timeout kills its whole process group.

const checkEnv = "_BALLENA_CHECK"

// checkExecConfig is what the launcher tells the two re-executed steps.
type checkExecConfig struct {
	PID         int      `json:"pid"`
	UserNS      bool     `json:"userns"`
	CgroupProcs []string `json:"cgroupProcs"`
	Nsenter     string   `json:"nsenter"`
	Argv        []string `json:"argv"`
	UID         int      `json:"uid"`
	GID         int      `json:"gid"`
	Unconfined  bool     `json:"unconfined,omitempty"`
	NoFile      uint64   `json:"nofile,omitempty"`
}

func (l *Launcher) execCheck(ctx context.Context, t Task) error {
	c := t.Spec.Health.Check
	name := "exec " + strings.Join(c.Exec, " ")
	if !alive(t.PID, t.PIDStart) {
		return fmt.Errorf("%s: the task's process is gone", name)
	}
	var cmd *exec.Cmd
	switch t.Kind {
	case "oci":
		args := append([]string{"--root", filepath.Join(l.dir, "runc"), "exec", containerID(t.ID)}, c.Exec...)
		cmd = exec.Command(l.cfg.Runc, args...)
	default:
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			return fmt.Errorf("%s: exec checks of whales need nsenter (util-linux): %w", name, err)
		}
		uid, gid, err := ParseUser(t.User)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		env, err := readEnviron(t.PID)
		if err != nil {
			return fmt.Errorf("%s: the task's environment: %w", name, err)
		}
		cfg := checkExecConfig{PID: t.PID, UserNS: t.UserNS != nil, Nsenter: nsenter, Argv: c.Exec, UID: uid, GID: gid,
			CgroupProcs: (&taskCgroup{path: t.Cgroup, v2: cgroupV2()}).procsFiles(),
			Unconfined:  t.Seccomp == SeccompUnconfined, NoFile: uint64(t.Spec.NoFile)}
		b, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		if err := l.checkHelper(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		self, err := os.Open(l.cfg.CheckHelper)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer self.Close()
		cmd = &exec.Cmd{Path: l.cfg.CheckHelper, Args: []string{"ballena-check", t.ID},
			Env:        append(env, modeEnv+"=check-enter", checkEnv+"="+string(b)),
			ExtraFiles: []*os.File{self}}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, which the timeout kills whole. No Pdeathsig: it
	// fires when the thread that forked exits, and threads that entered a
	// task's network namespace (dialInNetns) do exit.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := l.startChild(cmd); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("%s: timed out after %s", name, c.Timeout)
	}
	if err != nil {
		if msg := lastLine(out.Bytes()); msg != "" {
			return fmt.Errorf("%s: %v: %s", name, err, msg)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// checkHelper says whether Config.CheckHelper can run in a whale's root,
// which has no dynamic loader or libraries.
func (l *Launcher) checkHelper() error {
	l.helperOnce.Do(func() {
		f, err := elf.Open(l.cfg.CheckHelper)
		if err != nil {
			l.helperErr = fmt.Errorf("check helper: %w", err)
			return
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				l.helperErr = fmt.Errorf("exec checks of whales need a static ballena binary; %s is dynamically linked", l.cfg.CheckHelper)
			}
		}
	})
	return l.helperErr
}

// runCheckEnter is the first step of a whale's exec check, on the host:
// it joins the task's cgroup and execs nsenter into the task's namespaces.
func runCheckEnter() int {
	cfg, err := loadCheckConfig()
	if err != nil {
		return checkFail(err)
	}
	me := []byte(strconv.Itoa(os.Getpid()))
	for _, p := range cfg.CgroupProcs {
		if err := os.WriteFile(p, me, 0); err != nil {
			return checkFail(fmt.Errorf("join the task's cgroup: %w", err))
		}
	}
	args := []string{"nsenter", "--target", strconv.Itoa(cfg.PID), "--mount", "--pid", "--net", "--uts", "--ipc", "--root", "--wd"}
	if cfg.UserNS {
		args = append(args, "--user")
	}
	args = append(args, "--", "/proc/self/fd/3")
	env := append(withoutEnv(os.Environ(), modeEnv), modeEnv+"=check-exec")
	return checkFail(fmt.Errorf("exec nsenter: %w", syscall.Exec(cfg.Nsenter, args, env)))
}

// runCheckExec is the last step, inside the task's namespaces: it drops to
// the task's user and filter and execs the check's command.
func runCheckExec() int {
	runtime.LockOSThread() // capability sets are per thread: do it all on the one that execs
	cfg, err := loadCheckConfig()
	if err != nil {
		return checkFail(err)
	}
	env := withoutEnv(withoutEnv(os.Environ(), modeEnv), checkEnv)
	if cfg.NoFile > 0 {
		if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: cfg.NoFile, Max: cfg.NoFile}, nil); err != nil {
			return checkFail(fmt.Errorf("setrlimit nofile: %w", err))
		}
	}
	path, err := lookPathIn(cfg.Argv[0], env)
	if err != nil {
		return checkFail(err)
	}
	if err := dropPrivileges(cfg.UID, cfg.GID); err != nil {
		return checkFail(err)
	}
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return checkFail(fmt.Errorf("close_range: %w", err))
	}
	if !cfg.Unconfined {
		if err := loadWhaleSeccomp(); err != nil {
			return checkFail(err)
		}
	}
	return checkFail(fmt.Errorf("exec %s: %w", cfg.Argv[0], syscall.Exec(path, cfg.Argv, env)))
}

func loadCheckConfig() (*checkExecConfig, error) {
	var cfg checkExecConfig
	if err := json.Unmarshal([]byte(os.Getenv(checkEnv)), &cfg); err != nil {
		return nil, fmt.Errorf("check config: %w", err)
	}
	if len(cfg.Argv) == 0 {
		return nil, errors.New("check config: no command")
	}
	return &cfg, nil
}

func checkFail(err error) int {
	fmt.Fprintln(os.Stderr, "check:", err)
	return 126
}

func withoutEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// lookPathIn finds name along PATH of env (a name with a slash is taken as is).
func lookPathIn(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path, _ := envValue(env, "PATH")
	for dir := range strings.SplitSeq(path, ":") {
		p := filepath.Join(cmp.Or(dir, "."), name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in the task's PATH (%s)", name, path)
}
