package launcher

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
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
	// What the launcher passed beyond the status pipe (whale, control
	// socket, the claim on the run's id block, which stays open here for as
	// long as the task lives) goes to no child.
	for fd := 4; fd <= 5; fd++ {
		syscall.CloseOnExec(fd)
	}
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
	er, ew, err := os.Pipe()
	if err != nil {
		report(shimStatus{Error: "shim: " + err.Error()})
		return 1
	}
	var pre *pendingInit
	var bin *os.File // the verified whale
	cfgPath := os.Getenv(configEnv)
	if cfgPath == "" {
		idmap, err := parseIDMapEnv(os.Getenv(idmapEnv))
		if err == nil {
			pre, err = forkInit(pw, ew, false, idmap)
		}
		if err != nil {
			report(shimStatus{Error: "shim: " + err.Error()})
			return 1
		}
		cfgPath, bin, err = readControl(os.NewFile(4, "control"))
		if err != nil {
			pre.abort()
			return 0
		}
	} else if f := os.NewFile(4, "whale"); f != nil {
		if _, err := f.Stat(); err == nil {
			bin = f // a cold whale's shim: the launcher passed it as fd 4
		}
	}
	raw, err := os.ReadFile(cfgPath)
	var cfg *runConfig
	if err == nil {
		cfg, err = parseRunConfig(raw)
	}
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
	var logMu sync.Mutex
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		var wg sync.WaitGroup
		for _, s := range []struct {
			r   *os.File
			tag byte
		}{{pr, streamStdout}, {er, streamStderr}} {
			wg.Go(func() {
				w := &streamWriter{mu: &logMu, f: logf, tag: s.tag}
				_, _ = io.Copy(w, s.r)
				w.flush()
			})
		}
		wg.Wait()
	}()

	var pid int
	var cleanup func()
	switch cfg.Kind {
	case "whale":
		if pre != nil && (cfg.NewNet || !sameIDMap(pre.idmap, cfg.IDMap)) { // made for another run
			pre.abort()
			pre = nil
		}
		if pre == nil {
			pre, err = forkInit(pw, ew, cfg.NewNet, cfg.IDMap)
		}
		if err == nil {
			pid, err = pre.release(cfg, raw, bin)
		}
	case "oci":
		pre.abort()
		pid, cleanup, err = shimStartOCI(cfg, pw, ew)
	default:
		pre.abort()
		err = fmt.Errorf("unknown kind %q", cfg.Kind)
	}
	pw.Close()
	ew.Close()
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
	logMu.Lock()
	logf.Close()
	logMu.Unlock()
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

// pendingInit is an init started in new namespaces, blocked on its sync
// socket until release tells it which run config to set up.
type pendingInit struct {
	cmd   *exec.Cmd
	sync  *os.File // our end of a unix socket: run config and the whale's fd
	execR *os.File
	idmap *IDMap
}

// forkInit starts the task's init in new PID, mount, UTS and IPC namespaces,
// a new network namespace for newNet, and a new user namespace mapped by
// idmap when it is set (init is uid 0 there: root of its namespaces only).
func forkInit(out, errOut *os.File, newNet bool, idmap *IDMap) (*pendingInit, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	syncW, syncR := os.NewFile(uintptr(fds[0]), "sync"), os.NewFile(uintptr(fds[1]), "sync-init")
	execR, execW, err := os.Pipe()
	if err != nil {
		syncW.Close()
		syncR.Close()
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
	attr := &syscall.SysProcAttr{Cloneflags: flags}
	if idmap != nil {
		maps := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(idmap.HostID), Size: int(idmap.Size)}}
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings, attr.GidMappings, attr.GidMappingsEnableSetgroups = maps, maps, true
		attr.Credential = &syscall.Credential{Uid: 0, Gid: 0} // root of the new namespace, to build the root
	}
	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{"ballena-init"},
		Env:         []string{modeEnv + "=init"},
		Stdin:       devnull,
		Stdout:      out,
		Stderr:      errOut,
		ExtraFiles:  []*os.File{syncR, execW},
		SysProcAttr: attr,
	}
	err = cmd.Start()
	syncR.Close()
	execW.Close()
	if err != nil {
		syncW.Close()
		execR.Close()
		return nil, fmt.Errorf("start init: %w", err)
	}
	return &pendingInit{cmd: cmd, sync: syncW, execR: execR, idmap: idmap}, nil
}

// abort kills an init that was never released; nil is fine.
func (p *pendingInit) abort() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_, _ = p.cmd.Process.Wait()
	p.sync.Close()
	p.execR.Close()
}

// release puts the init in the task's cgroup, hands it the run config and
// the verified whale's descriptor that the launcher sent (init executes it:
// no path is looked up again), and waits until init has exec'd (the exec
// pipe closes) or reported an error on that pipe. No task code runs before
// the cgroup holds the process.
func (p *pendingInit) release(cfg *runConfig, raw []byte, bin *os.File) (int, error) {
	pid := p.cmd.Process.Pid
	for _, f := range cfg.CgroupProcs {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
			p.abort()
			return 0, fmt.Errorf("join cgroup: %w", err)
		}
	}
	if bin == nil {
		p.abort()
		return 0, errors.New("release init: the launcher sent no whale")
	}
	if err := sendRunConfig(p.sync, raw, int(bin.Fd())); err != nil {
		p.abort()
		return 0, fmt.Errorf("release init: %w", err)
	}
	p.sync.Close()
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

// sendRunConfig writes a length-prefixed run config to init's socket, with
// fd attached (SCM_RIGHTS).
func sendRunConfig(sock *os.File, raw []byte, fd int) error {
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(raw)))
	msg = append(msg, raw...)
	conn, err := sock.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = conn.Write(func(s uintptr) bool {
		n, err := unix.SendmsgN(int(s), msg, unix.UnixRights(fd), nil, 0)
		if err == unix.EAGAIN {
			return false
		}
		serr = err
		if err == nil && n < len(msg) {
			_, serr = sock.Write(msg[n:])
		}
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

// readControl reads what the launcher tells a warm shim: the run config's
// path, and for a whale its descriptor (SCM_RIGHTS). EOF means go away.
func readControl(sock *os.File) (string, *os.File, error) {
	defer sock.Close()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	var line []byte
	var bin *os.File
	for {
		n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", nil, err
		}
		if oobn > 0 && bin == nil {
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
				if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
					bin = os.NewFile(uintptr(fds[0]), "whale")
				}
			}
		}
		if n == 0 {
			return "", nil, io.EOF
		}
		line = append(line, buf[:n]...)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			return string(line[:i]), bin, nil
		}
	}
}

func sameIDMap(a, b *IDMap) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// idmapEnv tells a warm shim the user namespace to make its init in.
const idmapEnv = "_BALLENA_LAUNCHER_IDMAP"

func idmapEnvValue(m *IDMap) string {
	if m == nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", m.HostID, m.Size)
}

func parseIDMapEnv(s string) (*IDMap, error) {
	if s == "" {
		return nil, nil
	}
	var m IDMap
	if _, err := fmt.Sscanf(s, "%d:%d", &m.HostID, &m.Size); err != nil || m.Size == 0 {
		return nil, fmt.Errorf("bad %s %q", idmapEnv, s)
	}
	return &m, nil
}
