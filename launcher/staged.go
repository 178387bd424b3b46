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
	"slices"
	"time"

	"ballena.dev/internal/ctxio"
	"golang.org/x/sys/unix"
)

// executable returns the whale, verified, as an open file that its init
// executes (execveat): a sealed memfd holding the blob's bytes, made once
// per digest while the launcher runs and hashed as it is filled from the
// very descriptor it read the blob through. Seals (write, grow, shrink,
// seal) keep anyone, root included, from changing a byte afterwards, so a
// start costs no re-hash. Where the kernel refuses executable memfds
// (vm.memfd_noexec=2), the fallback is a read-only copy on disk (fsynced),
// re-hashed through the descriptor that is executed before every start.
// The caller calls done once the shim holds the file.
func (l *Launcher) executable(ctx context.Context, art Artifact) (f *os.File, done func(), err error) {
	l.exeMu.Lock()
	defer l.exeMu.Unlock()
	if f := l.exes[art.Digest]; f != nil {
		return f, func() {}, nil
	}
	if !l.noMemfd {
		f, err := sealedCopy(ctx, art)
		if err == nil {
			l.exes[art.Digest] = f
			return f, func() {}, nil
		}
		switch {
		case errors.Is(err, errSealBusy):
			// Pages the kernel kept pinned past every retry: this start
			// runs from the disk copy, and the next tries a memfd again.
			l.log.Warn("could not seal the whale's memfd: this start runs from a copy on disk, re-hashed", "release", art.Digest[:12], "err", err)
		case errors.Is(err, errNoExecMemfd):
			l.log.Warn("executable memfds refused by the kernel: whales run from a copy on disk, re-hashed before every start", "err", err)
			l.noMemfd = true
		default:
			return nil, nil, err
		}
	}
	path, err := l.diskCopy(ctx, art)
	if err != nil {
		return nil, nil, err
	}
	f, err = openVerified(path, art.Digest)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

var errNoExecMemfd = errors.New("no executable memfd")

// sealedCopy fills a sealed memfd with the blob, checking its sha256.
func sealedCopy(ctx context.Context, art Artifact) (*os.File, error) {
	name := "ballena-whale-" + art.Digest[:16]
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // before 6.3, which added MFD_EXEC: executable by default
		fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		return nil, fmt.Errorf("%w: %v", errNoExecMemfd, err)
	}
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	src, err := os.Open(art.BlobPath)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open blob: %w", err)
	}
	defer src.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), ctxio.Reader(ctx, src)); err != nil {
		f.Close()
		return nil, fmt.Errorf("copy blob: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != art.Digest {
		f.Close()
		return nil, fmt.Errorf("%w: blob changed after verification (sha256 %s, want %s)", ErrRefused, got, art.Digest)
	}
	if err := unix.Fchmod(fd, 0o555); err != nil {
		f.Close()
		return nil, err
	}
	if err := sealAll(ctx, fd, sealPatience, nil); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal: %w", err)
	}
	return f, nil
}

// errSealBusy is F_SEAL_WRITE still refused after sealPatience.
var errSealBusy = errors.New("pages still referenced")

// sealPatience bounds how long sealAll retries: long enough to outlast
// reclaim or migration on a loaded host, short next to a task's start.
const sealPatience = 2 * time.Second

// sealAll seals a memfd against every change. The kernel refuses
// F_SEAL_WRITE with EBUSY while a page holds a reference beyond the page
// cache's own, and waits only about 150 ms for such references to go; on a
// loaded host, transient ones (migration, reclaim, another CPU's LRU batch)
// can outlast that on a file nobody maps, so EBUSY is retried, with backoff,
// for up to patience. onBusy, if set, is called after each refusal (tests).
func sealAll(ctx context.Context, fd int, patience time.Duration, onBusy func()) error {
	const seals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	deadline := time.Now().Add(patience)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals)
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		if onBusy != nil {
			onBusy()
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%w: %v after %v", errSealBusy, err, patience)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// diskCopy is the fallback: a read-only copy per digest under bin/, made
// once, hashed as it is copied and fsynced.
func (l *Launcher) diskCopy(ctx context.Context, art Artifact) (string, error) {
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

// openVerified opens the cached copy of a whale and re-hashes it through
// the descriptor that will be executed; a copy whose bytes changed on disk is refused.
func openVerified(path, digest string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open whale: %w", err)
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		f.Close()
		return nil, fmt.Errorf("hash whale: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest {
		f.Close()
		return nil, fmt.Errorf("%w: %s: the cached copy of the whale changed on disk (sha256 %s, verified %s): refusing to run it", ErrRefused, path, got, digest)
	}
	return f, nil
}

// Prune drops the sealed copies and staged executables of whales, and
// unpacked images, that no task the launcher knows refers to; the node calls it after the store's GC. It
// returns the digests it dropped.
func (l *Launcher) Prune() ([]string, error) {
	l.mu.Lock()
	used := map[string]bool{}
	for _, e := range l.tasks {
		used[e.t.Digest] = true
	}
	l.mu.Unlock()
	var dropped []string
	l.exeMu.Lock()
	for d, f := range l.exes {
		if !used[d] {
			f.Close()
			delete(l.exes, d)
			dropped = append(dropped, d)
		}
	}
	l.exeMu.Unlock()
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
			if !slices.Contains(dropped, n) {
				dropped = append(dropped, n)
			}
		}
	}
	return dropped, errors.Join(errs...)
}
