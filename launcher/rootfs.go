package launcher

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// rootMount is where init builds the task's root, in its own mount
// namespace, before pivot_root: a directory every user may reach (inside a
// user namespace, init cannot walk the launcher's 0700 directories).
const rootMount = "/tmp"

// setupRoot builds the task's root on a tmpfs (null/zero/full/random/urandom,
// /proc of the new PID namespace, a private /tmp, /etc with hosts,
// resolv.conf and hostname, the host's CA bundle read-only), pivots into it
// and makes it read-only. The whale itself is not in it: init executes it
// from the descriptor the shim verified.
func setupRoot(cfg *runConfig) error {
	// init is cloned into new PID and mount namespaces together: PID 1 proves
	// that the mounts below land in a namespace of the task's own, never on the host.
	if os.Getpid() != 1 {
		return fmt.Errorf("init runs as PID %d, not 1 of a new PID namespace: refusing to mount anything", os.Getpid())
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	r := rootMount
	if err := unix.Mount("tmpfs", r, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m,mode=0755"); err != nil {
		return fmt.Errorf("mount root tmpfs: %w", err)
	}
	for _, d := range []string{"proc", "dev", "tmp", "etc", ".oldroot"} {
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
		// In a user namespace the flags of the mount bound from are locked:
		// keep them, and add ours.
		if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|flags|lockedFlags(dst), ""); err != nil {
			return fmt.Errorf("remount %s: %w", dst, err)
		}
		return nil
	}
	for _, d := range []string{"null", "zero", "full", "random", "urandom"} {
		if err := bind("/dev/"+d, filepath.Join(r, "dev", d), unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	if err := writeEtc(cfg, filepath.Join(r, "etc"), bind); err != nil {
		return err
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

// writeEtc fills the task's /etc: for the host network the host's hosts and
// resolv.conf (read-only), for none loopback-only ones; hostname; and the
// host's CA bundle when it has one.
func writeEtc(cfg *runConfig, etc string, bind func(src, dst string, flags uintptr) error) error {
	ro := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	hostname := cfg.Hostname
	if hostname == "" {
		hostname = "localhost"
	}
	files := map[string]string{"hostname": hostname + "\n"}
	if cfg.NewNet {
		files["hosts"] = "127.0.0.1\tlocalhost " + hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback " + hostname + "\n"
		files["resolv.conf"] = "# network: none: this task reaches loopback only; no name server\n"
	} else {
		for _, f := range []string{"hosts", "resolv.conf"} {
			src := filepath.Join("/etc", f)
			if st, err := os.Stat(src); err != nil || !st.Mode().IsRegular() {
				continue
			}
			if err := bind(src, filepath.Join(etc, f), ro); err != nil {
				return err
			}
		}
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	const ca = "/etc/ssl/certs/ca-certificates.crt"
	if st, err := os.Stat(ca); err == nil && st.Mode().IsRegular() {
		dst := filepath.Join(etc, "ssl", "certs", "ca-certificates.crt")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := bind(ca, dst, ro); err != nil {
			return err
		}
	}
	return nil
}

// lockedFlags are the mount flags of the mount holding path that a bind
// remount must keep (in a user namespace the kernel refuses to drop them).
func lockedFlags(path string) uintptr {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0
	}
	var f uintptr
	for _, m := range []struct{ st, ms int64 }{
		{unix.ST_RDONLY, unix.MS_RDONLY}, {unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if st.Flags&m.st != 0 {
			f |= uintptr(m.ms)
		}
	}
	return f
}
