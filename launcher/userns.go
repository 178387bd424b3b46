package launcher

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// User namespaces. Every run of a task gets its own user namespace whose ids
// 0..65535 map to a block of 65536 host ids that no other live task holds:
// uid 0 in a task is an unprivileged, unnamed uid on the host, and two tasks
// never share a host uid, so one cannot signal, ptrace or own the files of
// another even if it got out of its other namespaces.
//
// The block is per task (per run), not per job: replicas of one job on one
// machine are as foreign to each other as to any other task; Ballena has no
// volumes that replicas would need to share with matching owners, and with
// idmapped mounts a block costs nothing to change, so nothing is gained by
// sharing one.

// IDMap is a task's user namespace: ids 0..Size-1 inside are HostID.. on the host.
type IDMap struct {
	HostID uint32 `json:"hostId"`
	Size   uint32 `json:"size"`
}

func (m *IDMap) String() string {
	if m == nil {
		return "host"
	}
	return fmt.Sprintf("0-%d→%d-%d", m.Size-1, m.HostID, uint64(m.HostID)+uint64(m.Size)-1)
}

// idsPerTask is the size of a task's block: a full 16-bit id space, as
// images expect (nobody is 65534).
const idsPerTask = 65536

// Default subordinate range: 2^30.. for 1024 tasks. Far above the ids that
// distributions hand to users (/etc/subuid usually starts at 100000 and
// gives 65536 per user), and below 2^31 for programs that read uids as signed.
const (
	defaultIDRangeStart = 1 << 30
	defaultIDRangeCount = 1024 * idsPerTask
)

// idAllocator hands out blocks of a subordinate range. A block is claimed
// machine-wide with an flock on idLockDir/<first id>, so that two nodes on
// one machine (one per network namespace, as in tests) never hand out the
// same block either. The launcher passes the locked file to the run's shim,
// which keeps it for as long as the task lives: a launcher that dies does
// not free the blocks of the tasks that run on.
type idAllocator struct {
	mu      sync.Mutex
	start   uint32
	n       int              // blocks
	used    map[int]*os.File // the claim, or nil when a shim holds it (adopted)
	lockDir string
}

// idLockDir holds the machine-wide claims on id blocks.
const idLockDir = "/run/ballena-ids"

func newIDAllocator(start, count uint32) *idAllocator {
	a := &idAllocator{start: start, n: int(count / idsPerTask), used: map[int]*os.File{}, lockDir: idLockDir}
	if err := os.MkdirAll(a.lockDir, 0o700); err != nil {
		a.lockDir = "" // claims within this launcher only
	}
	return a
}

// claim flocks block i machine-wide; nil, false when another holds it.
func (a *idAllocator) claim(i int) (*os.File, bool) {
	if a.lockDir == "" {
		return nil, true
	}
	f, err := os.OpenFile(filepath.Join(a.lockDir, strconv.FormatUint(uint64(a.start)+uint64(i)*idsPerTask, 10)), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, true
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, false
	}
	return f, true
}

func (a *idAllocator) get() (*IDMap, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.n {
		if _, inUse := a.used[i]; inUse {
			continue
		}
		f, ok := a.claim(i)
		if !ok {
			continue // another launcher on this machine has it
		}
		a.used[i] = f
		return &IDMap{HostID: a.start + uint32(i)*idsPerTask, Size: idsPerTask}, nil
	}
	return nil, fmt.Errorf("all %d user namespace id blocks of the subordinate range are in use: widen Config.IDRangeCount", a.n)
}

// take marks m as used (a task found running after a restart of the
// launcher; its shim holds the claim).
func (a *idAllocator) take(m *IDMap) {
	if i, ok := a.index(m); ok {
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, inUse := a.used[i]; !inUse {
			f, _ := a.claim(i) // nil when the shim holds it, as it should
			a.used[i] = f
		}
	}
}

// lockFile is the claim on m's block, for the run's shim to inherit.
func (a *idAllocator) lockFile(m *IDMap) *os.File {
	i, ok := a.index(m)
	if !ok {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used[i]
}

func (a *idAllocator) put(m *IDMap) {
	if i, ok := a.index(m); ok {
		a.mu.Lock()
		if f := a.used[i]; f != nil {
			f.Close() // the lock goes when the shim's copy goes too
		}
		delete(a.used, i)
		a.mu.Unlock()
	}
}

func (a *idAllocator) index(m *IDMap) (int, bool) {
	if m == nil || m.HostID < a.start || (m.HostID-a.start)%idsPerTask != 0 {
		return 0, false
	}
	i := int((m.HostID - a.start) / idsPerTask)
	return i, i < a.n
}

// IsolationStatus is what this machine can do to confine tasks, as probed when
// the launcher started; `ballena status` shows it.
type IsolationStatus struct {
	// UserNS is true when tasks run in their own user namespaces.
	UserNS bool `json:"userns"`
	// UserNSError says why not, when UserNS is false.
	UserNSError string `json:"usernsError,omitempty"`
	// IDRange is the subordinate range task ids map into, "START-END".
	IDRange string `json:"idRange,omitempty"`
	// IDMappedMounts is true when image roots are shown to a task's user
	// namespace through idmapped mounts; false means a chowned copy per task.
	IDMappedMounts bool   `json:"idmappedMounts"`
	IDMappedError  string `json:"idmappedError,omitempty"`
	// Seccomp is true when the kernel filters system calls (every task gets
	// the default filter unless it opts out).
	Seccomp bool `json:"seccomp"`
}

// Isolation reports what the launcher found the kernel allows.
func (l *Launcher) Isolation() IsolationStatus { return l.iso }

// probeIsolation checks, once, whether user namespaces and idmapped mounts
// work here, with a real user namespace of the range's first id.
func probeIsolation(cfg Config, imagesDir string) IsolationStatus {
	st := IsolationStatus{IDRange: fmt.Sprintf("%d-%d", cfg.IDRangeStart, uint64(cfg.IDRangeStart)+uint64(cfg.IDRangeCount)-1)}
	_, err := unix.PrctlRetInt(unix.PR_GET_SECCOMP, 0, 0, 0, 0)
	st.Seccomp = err == nil
	if cfg.NoUserNS {
		st.UserNSError = "turned off in the node's configuration"
		return st
	}
	h, err := holdUserNS(&IDMap{HostID: cfg.IDRangeStart, Size: 1})
	if err != nil {
		st.UserNSError = err.Error()
		return st
	}
	defer h.close()
	st.UserNS = true
	if cfg.NoIDMappedMounts {
		st.IDMappedError = "turned off in the node's configuration"
		return st
	}
	tree, err := idmappedTree(imagesDir, h.fd)
	if err != nil {
		st.IDMappedError = err.Error()
		return st
	}
	unix.Close(tree)
	st.IDMappedMounts = true
	return st
}

// nsHolder is a process parked in a user namespace, so that its namespace
// can be opened (for mount_setattr's MOUNT_ATTR_IDMAP).
type nsHolder struct {
	cmd *exec.Cmd
	in  io.Closer
	fd  int // the user namespace
}

// holdUserNS starts this binary in "hold" mode in a new user namespace with
// m as its uid and gid map and opens that namespace.
func holdUserNS(m *IDMap) (*nsHolder, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	maps := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(m.HostID), Size: int(m.Size)}}
	cmd := &exec.Cmd{
		Path: "/proc/self/exe", Args: []string{"ballena-userns"}, Env: []string{modeEnv + "=hold"}, Stdin: r,
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, UidMappings: maps, GidMappings: maps, Pdeathsig: syscall.SIGKILL},
	}
	// cat waits for EOF just as well, and starts in a fraction of the time
	// this (large, Go) binary takes; the namespace is all that is used.
	if st, err := os.Stat(holdHelper); err == nil && st.Mode().IsRegular() {
		cmd.Path, cmd.Env = holdHelper, nil
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("user namespaces refused by the kernel: %w", err)
	}
	fd, err := unix.Open("/proc/"+strconv.Itoa(cmd.Process.Pid)+"/ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		w.Close()
		_ = cmd.Wait()
		return nil, fmt.Errorf("open user namespace: %w", err)
	}
	return &nsHolder{cmd: cmd, in: w, fd: fd}, nil
}

func (h *nsHolder) close() {
	unix.Close(h.fd)
	h.in.Close() // EOF: the holder exits
	_ = h.cmd.Wait()
}

// holdHelper is a small program that reads stdin until EOF.
const holdHelper = "/bin/cat"

// runHold is the "hold" mode: wait for EOF on stdin.
func runHold() int {
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// idmappedTree clones the mount tree at dir, read-only, with its ids shifted
// by the user namespace usernsFD, as a detached mount (move_mount attaches it).
func idmappedTree(dir string, usernsFD int) (int, error) {
	tree, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", dir, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
		Userns_fd: uint64(usernsFD)}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		unix.Close(tree)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
			return -1, fmt.Errorf("idmapped mounts not supported here (kernel 5.12+ and a filesystem that has them): %w", err)
		}
		return -1, fmt.Errorf("mount_setattr idmap %s: %w", dir, err)
	}
	return tree, nil
}

// mountIDMapped shows dir at target with ids shifted into m (host id n
// appears as n-m.HostID... inside: an image root's uid 0 files are uid 0 of the task).
func mountIDMapped(dir, target string, m *IDMap) error {
	h, err := holdUserNS(m)
	if err != nil {
		return err
	}
	defer h.close()
	tree, err := idmappedTree(dir, h.fd)
	if err != nil {
		return err
	}
	defer unix.Close(tree)
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount %s: %w", target, err)
	}
	return nil
}

// ParseSubIDs reads a subordinate id range "START:COUNT" (as /etc/subuid
// writes it, without the user); empty means the default.
func ParseSubIDs(s string) (start, count uint32, err error) {
	if s == "" {
		return defaultIDRangeStart, defaultIDRangeCount, nil
	}
	a, b, ok := strings.Cut(s, ":")
	st, err1 := strconv.ParseUint(a, 10, 32)
	n, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil || st == 0 || n < idsPerTask || st+n > 1<<32-1 {
		return 0, 0, fmt.Errorf("subordinate ids %q: want START:COUNT, START above 0, COUNT at least %d (one task), ending below 2^32-1, e.g. %d:%d",
			s, idsPerTask, defaultIDRangeStart, defaultIDRangeCount)
	}
	return uint32(st), uint32(n), nil
}
