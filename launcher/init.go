package launcher

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

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
	cfg, bin, err := recvRunConfig(os.NewFile(3, "sync"))
	if err != nil {
		if errors.Is(err, io.EOF) {
			os.Exit(127) // the shim gave up on us
		}
		fail(err)
	}
	if err := setupRoot(cfg); err != nil {
		fail(err)
	}
	for _, rl := range []struct {
		res int
		v   uint64
	}{{unix.RLIMIT_NOFILE, cfg.NoFile}, {unix.RLIMIT_CORE, cfg.CoreBytes}} {
		if rl.res == unix.RLIMIT_NOFILE && rl.v == 0 {
			continue
		}
		if err := unix.Prlimit(0, rl.res, &unix.Rlimit{Cur: rl.v, Max: rl.v}, nil); err != nil {
			fail(fmt.Errorf("setrlimit %d: %w", rl.res, err))
		}
	}
	if err := dropPrivileges(cfg.UID, cfg.GID); err != nil {
		fail(err)
	}
	// Whatever the launcher inherited without close-on-exec stays out of the
	// task: it gets stdin, stdout and stderr only.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fail(fmt.Errorf("close_range: %w", err))
	}
	if !cfg.Unconfined {
		if err := loadWhaleSeccomp(); err != nil {
			fail(err)
		}
	}
	err = execFD(bin, cfg.Args, cfg.Env)
	fail(fmt.Errorf("exec %s: %w", cfg.Args[0], err))
}

// recvRunConfig reads the run config and the whale's descriptor that the
// shim sends on the sync socket.
func recvRunConfig(sock *os.File) (*runConfig, int, error) {
	defer sock.Close()
	var hdr [4]byte
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), hdr[:], oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, -1, fmt.Errorf("read run config: %w", err)
	}
	if n == 0 {
		return nil, -1, io.EOF
	}
	if n < len(hdr) {
		if _, err := io.ReadFull(sock, hdr[n:]); err != nil {
			return nil, -1, fmt.Errorf("read run config: %w", err)
		}
	}
	fd := -1
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
		if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
			fd = fds[0]
		}
	}
	if fd < 0 {
		return nil, -1, errors.New("the shim sent no whale to execute")
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > 16<<20 {
		return nil, -1, fmt.Errorf("run config of %d bytes", size)
	}
	raw := make([]byte, size)
	if _, err := io.ReadFull(sock, raw); err != nil {
		return nil, -1, fmt.Errorf("read run config: %w", err)
	}
	cfg, err := parseRunConfig(raw)
	return cfg, fd, err
}

// execFD executes the file open at fd (execveat with AT_EMPTY_PATH): the
// bytes the shim hashed are the bytes that run, wherever the path points now.
func execFD(fd int, argv, envv []string) error {
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return err
	}
	envvp, err := syscall.SlicePtrFromStrings(envv)
	if err != nil {
		return err
	}
	empty, _ := syscall.BytePtrFromString("")
	_, _, errno := syscall.RawSyscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argvp[0])), uintptr(unsafe.Pointer(&envvp[0])), unix.AT_EMPTY_PATH, 0)
	return errno
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
