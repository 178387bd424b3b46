package launcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"ballena.dev/internal/ctxio"
)

// executable returns a path to the whale that its unprivileged user may
// execute: store blobs are not executable, so a read-only copy is made once
// per digest, hashed as it is copied and fsynced. The shim hashes the copy
// again before every start, through the descriptor init executes (openVerified).
func (l *Launcher) executable(ctx context.Context, art Artifact) (string, error) {
	dst := filepath.Join(l.dir, "bin", art.Digest)
	if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == 0o555 {
		return dst, nil
	}
	src, err := os.Open(art.BlobPath)
	if err != nil {
		return "", fmt.Errorf("open blob: %w", err)
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Join(l.dir, "bin"), ".tmp-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), ctxio.Reader(ctx, src)); err != nil {
		tmp.Close()
		return "", fmt.Errorf("copy blob: %w", err)
	}
	if err := tmp.Sync(); err != nil { // durable before it is renamed into place
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != art.Digest {
		return "", fmt.Errorf("%w: blob changed after verification (sha256 %s, want %s)", ErrRefused, got, art.Digest)
	}
	if err := os.Chmod(tmp.Name(), 0o555); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return "", err
	}
	return dst, nil
}

// Prune removes staged executables and unpacked images that no task the
// launcher knows refers to; the node calls it after the store's GC. It
// returns the digests it dropped.
func (l *Launcher) Prune() ([]string, error) {
	l.mu.Lock()
	used := map[string]bool{}
	for _, e := range l.tasks {
		used[e.t.Digest] = true
	}
	l.mu.Unlock()
	var dropped []string
	var errs []error
	for _, sub := range []string{"bin", "images"} {
		ents, err := os.ReadDir(filepath.Join(l.dir, sub))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, d := range ents {
			n := d.Name()
			if len(n) != 64 || used[n] { // also skips in-flight ".tmp-" and ".unpack-" entries
				continue
			}
			if err := os.RemoveAll(filepath.Join(l.dir, sub, n)); err != nil {
				errs = append(errs, err)
				continue
			}
			dropped = append(dropped, n)
		}
	}
	return dropped, errors.Join(errs...)
}
