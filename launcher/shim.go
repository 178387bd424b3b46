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
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

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
