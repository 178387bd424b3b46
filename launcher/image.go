package launcher

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
)

// unpack writes a flattened image filesystem (whiteouts already applied by
// mutate.Extract) under dir. Every write goes through an os.Root, so an
// entry or symlink that points outside dir fails instead of escaping.
// Devices are skipped and setuid/setgid bits dropped.
func unpack(ctx context.Context, r io.Reader, dir string, off uint32) error {
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
		if off != 0 && (hdr.Uid >= idsPerTask || hdr.Gid >= idsPerTask) {
			return fmt.Errorf("%s: owner %d:%d is beyond a task's user namespace (0..%d)", name, hdr.Uid, hdr.Gid, idsPerTask-1)
		}
		if err := root.Lchown(name, hdr.Uid+int(off), hdr.Gid+int(off)); err != nil {
			return fmt.Errorf("%s: chown %s:%s: %w", name, strconv.Itoa(hdr.Uid), strconv.Itoa(hdr.Gid), err)
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeDir {
			// chown clears setuid bits on files; set the mode again for dirs' sticky bits.
			_ = root.Chmod(name, mode|modeDir(hdr.Typeflag))
		}
	}
	// Mount points runc needs in a read-only root.
	for _, d := range []string{"proc", "dev", "sys", "tmp", "run", "etc"} {
		if _, err := root.Lstat(d); errors.Is(err, os.ErrNotExist) {
			if err := root.Mkdir(d, 0o755); err != nil {
				return err
			}
		}
	}
	for _, f := range []string{"etc/hosts", "etc/resolv.conf", "etc/hostname"} {
		if _, err := root.Lstat(f); errors.Is(err, os.ErrNotExist) {
			fh, err := root.OpenFile(f, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			fh.Close()
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
