package launcher

import (
	"archive/tar"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"

	"ballena.dev/artifact"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// prepareBundle writes the task's OCI bundle: config.json pointing at the
// image's rootfs, unpacked once per digest and shared read-only.
func (l *Launcher) prepareBundle(ctx context.Context, t Task, art Artifact, uid, gid int, hostname string) (string, error) {
	img, err := artifact.OpenImage(art.BlobPath)
	if err != nil {
		return "", fmt.Errorf("open image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", fmt.Errorf("image config: %w", err)
	}
	rootfs := filepath.Join(l.dir, "images", art.Digest, "rootfs")
	if !fileExists(rootfs) {
		tmp, err := os.MkdirTemp(filepath.Join(l.dir, "images"), ".unpack-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmp)
		rc := mutate.Extract(img)
		err = unpack(ctx, rc, filepath.Join(tmp, "rootfs"))
		rc.Close()
		if err != nil {
			return "", fmt.Errorf("unpack image: %w", err)
		}
		if err := os.Rename(tmp, filepath.Join(l.dir, "images", art.Digest)); err != nil && !fileExists(rootfs) {
			return "", fmt.Errorf("unpack image: %w", err)
		}
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
		return "", fmt.Errorf("%w: the image has no entrypoint or cmd: give one", ErrInvalid)
	}
	env := mergeEnv([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"},
		cf.Config.Env, art.Env, []string{"HOSTNAME=" + hostname}, t.Spec.Env)
	cwd := cmp.Or(t.Spec.WorkingDir, art.WorkingDir, cf.Config.WorkingDir)
	if cwd == "" {
		cwd = "/"
	}
	spec := ociSpec(t, rootfs, args, env, cwd, uid, gid, hostname)
	bundle := filepath.Join(l.taskDir(t.ID), "bundle")
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		return "", err
	}
	_ = os.Remove(filepath.Join(bundle, "pid"))
	return bundle, nil
}

// ociSpec is the runtime config of an image task: the same limits, namespaces
// and privileges as a whale, with a read-only root.
func ociSpec(t Task, rootfs string, args, env []string, cwd string, uid, gid int, hostname string) *specs.Spec {
	res := linuxResources(t.Spec)
	res.Devices = []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}} // runc adds the standard devices back
	ns := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.UTSNamespace}, {Type: specs.IPCNamespace}}
	if t.Spec.Network == "none" {
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	return &specs.Spec{
		Version: "1.0.2",
		Process: &specs.Process{
			Args: args, Env: env, Cwd: cwd,
			User:            specs.User{UID: uint32(uid), GID: uint32(gid)},
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{}},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 4096, Soft: 4096}},
		},
		Root:     &specs.Root{Path: rootfs, Readonly: true},
		Hostname: hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=755", "size=16384k"}},
		},
		Linux: &specs.Linux{
			Namespaces:  ns,
			Resources:   res,
			CgroupsPath: t.Cgroup,
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// unpack writes a flattened image filesystem (whiteouts already applied by
// mutate.Extract) under dir. Every write goes through an os.Root, so an
// entry or symlink that points outside dir fails instead of escaping.
// Devices are skipped and setuid/setgid bits dropped.
func unpack(ctx context.Context, r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		name := path.Clean("/" + hdr.Name)[1:]
		if name == "" {
			continue
		}
		mode := os.FileMode(hdr.Mode).Perm() | os.FileMode(hdr.Mode)&os.ModeSticky
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := root.Chmod(name, mode|os.ModeDir); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeReg:
			_ = root.Remove(name)
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := root.Chmod(name, mode); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeSymlink:
			_ = root.Remove(name)
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeLink:
			_ = root.Remove(name)
			if err := root.Link(path.Clean("/" + hdr.Linkname)[1:], name); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		default:
			continue // devices and fifos: the runtime provides /dev
		}
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("%s: chown %s:%s: %w", name, strconv.Itoa(hdr.Uid), strconv.Itoa(hdr.Gid), err)
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeDir {
			// chown clears setuid bits on files; set the mode again for dirs' sticky bits.
			_ = root.Chmod(name, mode|modeDir(hdr.Typeflag))
		}
	}
	// Mount points runc needs in a read-only root.
	for _, d := range []string{"proc", "dev", "sys", "tmp", "run"} {
		if _, err := root.Lstat(d); errors.Is(err, os.ErrNotExist) {
			if err := root.Mkdir(d, 0o755); err != nil {
				return err
			}
		}
	}
	return nil
}

func modeDir(t byte) os.FileMode {
	if t == tar.TypeDir {
		return os.ModeDir
	}
	return 0
}
