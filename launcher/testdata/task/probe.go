package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Linux amd64/arm64 numbers the syscall package lacks.
const (
	sysBPF           = 321
	sysUserfaultfd   = 323
	sysIOUringSetup  = 425
	sysOpenTree      = 428
	sysClone3        = 435
	sysKeyctl        = 250
	sysAddKey        = 248
	sysPerfEventOpen = 298
	cloneNewUser     = 0x10000000
)

// probe reports the task's confinement as JSON: its seccomp mode, user
// namespace, ids, what the refused system calls answer, its limits, /etc,
// and whether the address in args[0] (if any) can be reached.
func probe(args []string) {
	field := procStatus()
	errStr := func(e syscall.Errno) string {
		if e == 0 {
			return "ok"
		}
		return e.Error()
	}
	sys := map[string]string{}
	_, _, e := syscall.RawSyscall(syscall.SYS_UNSHARE, cloneNewUser, 0, 0)
	sys["unshare(CLONE_NEWUSER)"] = errStr(e)
	// clone with CLONE_NEWUSER: if the filter let it through, the child exits at once.
	r, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, cloneNewUser|uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e == 0 && r == 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	sys["clone(CLONE_NEWUSER)"] = errStr(e)
	_, _, e = syscall.RawSyscall(sysClone3, 0, 0, 0)
	sys["clone3"] = errStr(e)
	_, _, e = syscall.RawSyscall(sysKeyctl, 0 /* KEYCTL_GET_KEYRING_ID */, ^uintptr(3) /* session keyring: -3 */, 0)
	sys["keyctl"] = errStr(e)
	typ, _ := syscall.BytePtrFromString("user")
	desc, _ := syscall.BytePtrFromString("probe")
	_, _, e = syscall.RawSyscall6(sysAddKey, uintptr(unsafe.Pointer(typ)), uintptr(unsafe.Pointer(desc)), 0, 0, ^uintptr(3), 0)
	sys["add_key"] = errStr(e)
	_, _, e = syscall.RawSyscall(sysBPF, 5 /* BPF_PROG_LOAD */, 0, 0)
	sys["bpf"] = errStr(e)
	_, _, e = syscall.RawSyscall6(sysPerfEventOpen, 0, 0, ^uintptr(0), ^uintptr(0), 0, 0)
	sys["perf_event_open"] = errStr(e)
	_, _, e = syscall.RawSyscall(sysIOUringSetup, 1, 0, 0)
	sys["io_uring_setup"] = errStr(e)
	_, _, e = syscall.RawSyscall(sysUserfaultfd, 0, 0, 0)
	sys["userfaultfd"] = errStr(e)
	_, _, e = syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_PEEKDATA, 1, 0)
	sys["ptrace"] = errStr(e)
	// A target that does not exist: if mount got past the filter it would
	// fail with ENOENT, never mount anything (this program may be run by hand).
	src, _ := syscall.BytePtrFromString("none")
	dst, _ := syscall.BytePtrFromString("/nonexistent-ballena-probe-target")
	fstype, _ := syscall.BytePtrFromString("tmpfs")
	_, _, e = syscall.RawSyscall6(syscall.SYS_MOUNT, uintptr(unsafe.Pointer(src)), uintptr(unsafe.Pointer(dst)), uintptr(unsafe.Pointer(fstype)), 0, 0, 0)
	sys["mount"] = errStr(e)
	_, _, e = syscall.RawSyscall(sysOpenTree, ^uintptr(99) /* AT_FDCWD */, uintptr(unsafe.Pointer(dst)), 1 /* OPEN_TREE_CLONE */)
	sys["open_tree"] = errStr(e)

	uidMap, _ := os.ReadFile("/proc/self/uid_map")
	limits, _ := os.ReadFile("/proc/self/limits")
	limit := func(name string) string {
		for _, l := range strings.Split(string(limits), "\n") {
			if strings.HasPrefix(l, name) {
				f := strings.Fields(strings.TrimPrefix(l, name))
				if len(f) >= 2 {
					return f[0] + "/" + f[1]
				}
			}
		}
		return ""
	}
	read := func(p string) string { b, _ := os.ReadFile(p); return string(b) }
	var exeOwner = -1
	var st syscall.Stat_t
	if syscall.Stat("/proc/self/exe", &st) == nil {
		exeOwner = int(st.Uid)
	}
	exeSum := ""
	if f, err := os.Open("/proc/self/exe"); err == nil {
		h := sha256.New()
		if _, err := io.Copy(h, f); err == nil {
			exeSum = hex.EncodeToString(h.Sum(nil))
		}
		f.Close()
	}
	dial := ""
	if len(args) > 0 {
		c, err := net.DialTimeout("tcp", args[0], 2*time.Second)
		if err != nil {
			dial = err.Error()
		} else {
			dial = "connected"
			c.Close()
		}
	}
	out, _ := json.Marshal(map[string]any{
		"seccomp": field("Seccomp"), "noNewPrivs": field("NoNewPrivs"), "capEff": field("CapEff"),
		"uid": os.Getuid(), "gid": os.Getgid(), "uidMap": strings.Join(strings.Fields(string(uidMap)), " "),
		"syscalls": sys, "nofile": limit("Max open files"), "core": limit("Max core file size"),
		"hosts": read("/etc/hosts"), "resolv": read("/etc/resolv.conf"), "hostname": read("/etc/hostname"),
		"exeOwner": exeOwner, "dial": dial, "exeSha256": exeSum,
	})
	fmt.Println(string(out))
}
