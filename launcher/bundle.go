package launcher

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// bundle is a prepared OCI bundle.
type bundle struct {
	dir        string
	uid, gid   int
	rootSource string // the root the shim mounts at rootTarget; "" when runc uses the shared root directly
	rootTarget string
	idmapped   bool
}

// rootsDir is where an image task's shim, in a mount namespace of its own,
// shows the task its root: a path the task's user namespace can walk.
const rootsDir = "/run/ballena-roots"

// prepareBundle writes the task's OCI bundle: config.json pointing at the
// image's rootfs, unpacked once per digest, checked against the tree digest
// recorded at unpack before every start, and shared read-only (idmapped into
// the task's user namespace, or a chowned copy where idmapped mounts are missing).
func (l *Launcher) prepareBundle(ctx context.Context, t Task, art Artifact, idmap *IDMap, hostname string) (bundle, error) {
	var b bundle
	imgDir := filepath.Join(l.dir, "images", art.Digest)
	rootfs := filepath.Join(imgDir, "rootfs")
	if !fileExists(filepath.Join(imgDir, treeFile)) {
		if err := l.unpackImage(ctx, art); err != nil {
			return b, err
		}
	}
	cf, err := checkUnpacked(imgDir)
	if err != nil {
		// Never run it; the next start unpacks the image again from its verified blob.
		l.log.Error("unpacked image root changed on disk: removed", "digest", art.Digest, "err", err)
		_ = os.RemoveAll(imgDir)
		return b, fmt.Errorf("%w: %v", ErrRefused, err)
	}

	entrypoint, cmd := cf.Config.Entrypoint, cf.Config.Cmd
	if art.Entrypoint != nil || art.Cmd != nil { // the signed release may set them
		entrypoint, cmd = art.Entrypoint, art.Cmd
	}
	if t.Spec.Entrypoint != nil {
		entrypoint, cmd = t.Spec.Entrypoint, nil // as docker: a new entrypoint drops the image's cmd
	}
	if t.Spec.Args != nil {
		cmd = t.Spec.Args
	}
	args := append(append([]string{}, entrypoint...), cmd...)
	if len(args) == 0 {
		return b, fmt.Errorf("%w: the image has no entrypoint or cmd: give one", ErrInvalid)
	}
	user := cmp.Or(t.Spec.User, cf.Config.User, l.cfg.DefaultUser)
	b.uid, b.gid, err = resolveUser(rootfs, user)
	if err != nil {
		return b, err
	}
	if err := fitsIDMap(b.uid, b.gid, idmap); err != nil {
		return b, err
	}
	env := mergeEnv([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"},
		cf.Config.Env, art.Env, []string{"HOSTNAME=" + hostname}, t.Spec.Env)
	cwd := cmp.Or(t.Spec.WorkingDir, art.WorkingDir, cf.Config.WorkingDir)
	if cwd == "" {
		cwd = "/"
	}
	b.dir = filepath.Join(l.taskDir(t.ID), "bundle")
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return b, err
	}
	root := rootfs
	if idmap != nil {
		b.rootTarget = filepath.Join(rootsDir, containerID(t.ID))
		root = b.rootTarget
		if l.iso.IDMappedMounts {
			b.rootSource, b.idmapped = rootfs, true
		} else {
			// No idmapped mounts: a copy of the root owned by the task's ids.
			b.rootSource = filepath.Join(l.taskDir(t.ID), "rootfs")
			_ = os.RemoveAll(b.rootSource)
			if err := l.unpackBlob(ctx, art, b.rootSource, idmap.HostID); err != nil {
				return b, fmt.Errorf("unpack image for the task's user namespace: %w", err)
			}
		}
	}
	etc, err := writeBundleEtc(b.dir, hostname, t.Spec.Network == "none")
	if err != nil {
		return b, err
	}
	spec := ociSpec(t, root, args, env, cwd, b.uid, b.gid, hostname, idmap, etc)
	out, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return b, err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "config.json"), out, 0o600); err != nil {
		return b, err
	}
	_ = os.Remove(filepath.Join(b.dir, "pid"))
	return b, nil
}

// writeBundleEtc returns the bind mounts of the task's /etc/hosts,
// resolv.conf and hostname: the host's for the host network, written into
// the bundle (loopback only) for none.
func writeBundleEtc(dir, hostname string, none bool) ([]specs.Mount, error) {
	ro := []string{"rbind", "ro", "nosuid", "nodev", "noexec"}
	files := map[string]string{"hostname": hostname + "\n"}
	var mounts []specs.Mount
	if none {
		files["hosts"] = "127.0.0.1\tlocalhost " + hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback " + hostname + "\n"
		files["resolv.conf"] = "# network: none: this task reaches loopback only; no name server\n"
	} else {
		for _, f := range []string{"hosts", "resolv.conf"} {
			if st, err := os.Stat("/etc/" + f); err == nil && st.Mode().IsRegular() {
				mounts = append(mounts, specs.Mount{Destination: "/etc/" + f, Type: "bind", Source: "/etc/" + f, Options: ro})
			}
		}
	}
	for name, body := range files {
		p := filepath.Join(dir, "etc-"+name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return nil, err
		}
		mounts = append(mounts, specs.Mount{Destination: "/etc/" + name, Type: "bind", Source: p, Options: ro})
	}
	slices.SortFunc(mounts, func(a, b specs.Mount) int { return strings.Compare(a.Destination, b.Destination) })
	return mounts, nil
}

// unpackImage unpacks the image once per digest into images/<digest>:
// rootfs, the image's config, and the tree digest of both, all fsynced
// before the directory is renamed into place.
func (l *Launcher) unpackImage(ctx context.Context, art Artifact) error {
	tmp, err := os.MkdirTemp(filepath.Join(l.dir, "images"), ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	img, closeImg, err := openHashedImage(art)
	if err != nil {
		return err
	}
	defer closeImg()
	cf, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "config.json"), cf, 0o600); err != nil {
		return err
	}
	rc := mutate.Extract(img)
	err = unpack(ctx, rc, filepath.Join(tmp, "rootfs"), 0)
	rc.Close()
	if err != nil {
		return fmt.Errorf("unpack image: %w", err)
	}
	sum, err := treeDigest(tmp)
	if err != nil {
		return fmt.Errorf("unpack image: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, treeFile), []byte(sum+"\n"), 0o600); err != nil {
		return err
	}
	if err := syncfs(tmp); err != nil {
		return fmt.Errorf("unpack image: %w", err)
	}
	dst := filepath.Join(l.dir, "images", art.Digest)
	_ = os.RemoveAll(dst) // a partial one from before this version
	if err := os.Rename(tmp, dst); err != nil && !fileExists(filepath.Join(dst, treeFile)) {
		return fmt.Errorf("unpack image: %w", err)
	}
	return syncDir(filepath.Dir(dst))
}

// unpackBlob unpacks the image into dir with every owner shifted by off
// (the chowned copy for a task's user namespace).
func (l *Launcher) unpackBlob(ctx context.Context, art Artifact, dir string, off uint32) error {
	img, closeImg, err := openHashedImage(art)
	if err != nil {
		return err
	}
	defer closeImg()
	rc := mutate.Extract(img)
	defer rc.Close()
	return unpack(ctx, rc, dir, off)
}

// openHashedImage opens the image blob once, checks its sha256 through that
// descriptor, and reads the image from the same descriptor: a blob swapped
// on disk after the check is never what gets unpacked.
func openHashedImage(art Artifact) (v1.Image, func(), error) {
	f, err := os.Open(art.BlobPath)
	if err != nil {
		return nil, nil, fmt.Errorf("open image: %w", err)
	}
	h := sha256.New()
	size, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("hash image: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != art.Digest {
		f.Close()
		return nil, nil, fmt.Errorf("%w: image blob changed after verification (sha256 %s, want %s)", ErrRefused, got, art.Digest)
	}
	img, err := tarball.Image(func() (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(f, 0, size)), nil
	}, nil)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("open image: %w", err)
	}
	return img, func() { f.Close() }, nil
}

// checkUnpacked re-hashes an unpacked image (root and config) against the
// tree digest recorded at unpack, and returns its config.
func checkUnpacked(imgDir string) (*v1.ConfigFile, error) {
	want, err := os.ReadFile(filepath.Join(imgDir, treeFile))
	if err != nil {
		return nil, err
	}
	got, err := treeDigest(imgDir)
	if err != nil {
		return nil, fmt.Errorf("hash unpacked image %s: %w", imgDir, err)
	}
	if got != strings.TrimSpace(string(want)) {
		return nil, fmt.Errorf("unpacked image %s does not match the tree digest recorded at unpack (%s, want %s)", imgDir, got, strings.TrimSpace(string(want)))
	}
	b, err := os.ReadFile(filepath.Join(imgDir, "config.json"))
	if err != nil {
		return nil, err
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return cf, nil
}

// treeFile holds the tree digest of an unpacked image.
const treeFile = "tree.sha256"

// treeDigest hashes a directory tree: every entry's path, type, mode and
// owner, symlink targets and file contents, in lexical order. The tree file
// itself is left out.
func treeDigest(dir string) (string, error) {
	h := sha256.New()
	fh := sha256.New()
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == treeFile {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		fmt.Fprintf(h, "%q %o %d %d", rel, uint32(info.Mode()), st.Uid, st.Gid)
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, " -> %q", target)
		case info.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			fh.Reset()
			_, err = io.CopyBuffer(fh, f, buf)
			f.Close()
			if err != nil {
				return err
			}
			fmt.Fprintf(h, " %d %x", info.Size(), fh.Sum(nil))
		}
		h.Write([]byte{'\n'})
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// syncfs flushes the filesystem holding dir (one call for a whole unpacked tree).
func syncfs(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// syncDir fsyncs a directory, so that a rename into it is durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ociSpec is the runtime config of an image task: the same limits, namespaces,
// seccomp filter and privileges as a whale, with a read-only root.
func ociSpec(t Task, rootfs string, args, env []string, cwd string, uid, gid int, hostname string, idmap *IDMap, etc []specs.Mount) *specs.Spec {
	res := linuxResources(t.Spec)
	res.Devices = []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}} // runc adds the standard devices back
	ns := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.UTSNamespace}, {Type: specs.IPCNamespace}}
	if t.Spec.Network == "none" {
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=755", "size=16384k"}},
	}
	linux := &specs.Linux{
		Resources:   res,
		CgroupsPath: t.Cgroup,
		MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
			"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"},
		ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
	}
	if idmap != nil {
		ns = append(ns, specs.LinuxNamespace{Type: specs.UserNamespace})
		m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: idmap.HostID, Size: idmap.Size}}
		linux.UIDMappings, linux.GIDMappings = m, m
	}
	if idmap == nil || t.Spec.Network == "none" {
		// sysfs needs a network namespace owned by the task's user namespace.
		mounts = append(mounts, specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}})
	}
	linux.Namespaces = ns
	if t.Spec.Seccomp != SeccompUnconfined {
		linux.Seccomp = ociSeccomp()
	}
	nofile := uint64(t.Spec.NoFile)
	core := uint64(t.Spec.CoreBytes)
	return &specs.Spec{
		Version: "1.0.2",
		Process: &specs.Process{
			Args: args, Env: env, Cwd: cwd,
			User:            specs.User{UID: uint32(uid), GID: uint32(gid)},
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{}},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile},
				{Type: "RLIMIT_CORE", Hard: core, Soft: core}},
		},
		Root:     &specs.Root{Path: rootfs, Readonly: true},
		Hostname: hostname,
		Mounts:   append(mounts, etc...),
		Linux:    linux,
	}
}
