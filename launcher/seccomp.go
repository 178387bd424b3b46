package launcher

import (
	"fmt"
	"runtime"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Seccomp settings of a task.
const (
	SeccompDefault    = "default"    // the deny list below, refused with EPERM
	SeccompUnconfined = "unconfined" // no filter: the task asked for it, and it is logged
)

// deniedSyscalls is what the default filter refuses with EPERM: the system
// calls that Docker's default profile (moby/profiles/seccomp) lets through
// only to a container holding capabilities a Ballena task never has (it runs
// with none), plus the ones that profile refuses to everyone. A program that
// tries one gets EPERM and can fall back; nothing is killed.
var deniedSyscalls = []string{
	// namespaces and mounts (CAP_SYS_ADMIN); clone with CLONE_NEW* flags is below
	"unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot",
	"open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
	// the kernel keyring
	"add_key", "keyctl", "request_key",
	// kernel-side programs and tracing
	"bpf", "perf_event_open", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
	"lookup_dcookie", "fanotify_init", "userfaultfd",
	// io_uring: a second system call interface that seccomp cannot see into
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	// modules, kexec, reboot, swap, accounting, quotas
	"init_module", "finit_module", "delete_module", "create_module", "get_kernel_syms", "query_module",
	"kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
	"nfsservctl",
	// file handles reach files outside the task's root
	"open_by_handle_at", "name_to_handle_at",
	// clocks, host names (the UTS namespace is the task's, but it has no
	// capability to use them either), and the kernel log
	"settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "syslog",
	// old or raw hardware interfaces
	"uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old", "ioperm", "iopl", "vhangup",
}

// cloneNamespaceFlags are the clone flags that make new namespaces; Docker's
// profile allows clone only without them.
const cloneNamespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// errnoENOSYS answers clone3, whose flags live in memory a filter cannot
// read: C libraries then fall back to clone, whose flags it can (as Docker does).
const errnoENOSYS = 38

// whaleSeccompPolicy is the default filter as BPF for a whale: the deny list
// for this machine's architecture (names it does not have are skipped).
func whaleSeccompPolicy() (seccomp.Policy, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return seccomp.Policy{}, fmt.Errorf("seccomp: %w", err)
	}
	var names []string
	for _, n := range deniedSyscalls {
		if _, ok := info.SyscallNames[n]; ok {
			names = append(names, n)
		}
	}
	groups := []seccomp.SyscallGroup{
		{Names: names, Action: seccomp.ActionErrno}, // ActionErrno alone is EPERM
		{NamesWithCondtions: []seccomp.NameWithConditions{{Name: "clone", Conditions: seccomp.ArgumentConditions{
			{Argument: cloneFlagsArg(), Operation: seccomp.BitsSet, Value: cloneNamespaceFlags},
		}}}, Action: seccomp.ActionErrno},
	}
	if _, ok := info.SyscallNames["clone3"]; ok {
		groups = append(groups, seccomp.SyscallGroup{Names: []string{"clone3"}, Action: seccomp.ActionErrno | errnoENOSYS})
	}
	return seccomp.Policy{DefaultAction: seccomp.ActionAllow, Syscalls: groups}, nil
}

// cloneFlagsArg is the position of clone's flags: first everywhere but s390x.
func cloneFlagsArg() uint32 {
	if runtime.GOARCH == "s390x" {
		return 1
	}
	return 0
}

// loadWhaleSeccomp installs the default filter on every thread of the
// calling process (no_new_privs must be set); the exec that follows keeps it.
func loadWhaleSeccomp() error {
	pol, err := whaleSeccompPolicy()
	if err != nil {
		return err
	}
	if err := seccomp.LoadFilter(seccomp.Filter{Flag: seccomp.FilterFlagTSync, Policy: pol}); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}

// ociSeccomp is the same filter for runc's config.json.
func ociSeccomp() *specs.LinuxSeccomp {
	eperm, enosys := uint(unix.EPERM), uint(errnoENOSYS)
	s := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: ociArches(),
		Syscalls: []specs.LinuxSyscall{
			{Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
	// libseccomp has no "any of these bits" test: one rule per flag.
	for bit := uint64(1); bit != 0; bit <<= 1 {
		if cloneNamespaceFlags&bit == 0 {
			continue
		}
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &eperm,
			Args: []specs.LinuxSeccompArg{{Index: uint(cloneFlagsArg()), Value: bit, ValueTwo: bit, Op: specs.OpMaskedEqual}}})
	}
	return s
}

func ociArches() []specs.Arch {
	switch runtime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return nil
}
