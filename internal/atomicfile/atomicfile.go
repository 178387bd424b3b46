// Package atomicfile writes whole files or nothing: the data goes to a temporary
// file beside the target, is synced, and only then takes the target's name.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, readable with mode.
func Write(path string, data []byte, mode os.FileMode) error {
	tmp, err := temp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// WriteNew writes path only if nothing is there yet; otherwise it fails with an
// error matching fs.ErrExist and leaves the existing file alone.
func WriteNew(path string, data []byte, mode os.FileMode) error {
	tmp, err := temp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	// A hard link fails if path exists, unlike rename.
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

func temp(path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// SyncDir makes the names in dir durable, so that a rename or link survives a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
