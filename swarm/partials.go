package swarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultPartialTimeout is how long a partial download may sit with no fetch
// wanting it before the engine removes it. Within it, a new fetch of the same
// blob resumes from the pieces already verified (after a kill -9 too).
const DefaultPartialTimeout = time.Hour

// stagingPrefix starts the name of every download's staging dir in the store's TempDir.
const stagingPrefix = "bt-"

// RemovePartials removes the staging dirs (partial downloads) under tempDir
// whose digest keep does not claim and whose files were last written at least
// olderThan ago, and returns their digests. `ballena gc` without a running node
// calls it with a keep that claims nothing: no download runs then.
func RemovePartials(tempDir string, olderThan time.Duration, now time.Time, keep func(digest string) bool) ([]string, error) {
	ents, err := os.ReadDir(tempDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("partial downloads: %w", err)
	}
	var removed []string
	var errs []error
	for _, ent := range ents {
		digest, ok := strings.CutPrefix(ent.Name(), stagingPrefix)
		if !ok || !ent.IsDir() || (keep != nil && keep(digest)) {
			continue
		}
		dir := filepath.Join(tempDir, ent.Name())
		if olderThan > 0 && now.Sub(lastWrite(dir)) < olderThan {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("partial download %s: %w", short(digest), err))
			continue
		}
		removed = append(removed, digest)
	}
	return removed, errors.Join(errs...)
}

// lastWrite is the newest modification time in a staging dir.
func lastWrite(dir string) time.Time {
	var t time.Time
	if fi, err := os.Stat(dir); err == nil {
		t = fi.ModTime()
	}
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		if fi, err := ent.Info(); err == nil && fi.ModTime().After(t) {
			t = fi.ModTime()
		}
	}
	return t
}

// RemovePartials removes every partial download that no running transfer
// wants, whatever its age (olderThan 0), or those left alone for olderThan.
// Transfers cannot start while it runs, so it never removes one being written.
func (e *Engine) RemovePartials(olderThan time.Duration) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	removed, err := RemovePartials(e.cfg.Store.TempDir(), olderThan, time.Now(), func(digest string) bool {
		_, running := e.transfers[digest]
		return running
	})
	for _, d := range removed {
		e.log.Info("removed an abandoned partial download", "digest", short(d))
	}
	return removed, err
}

// sweepPartials removes abandoned partial downloads once they are older than
// the engine's PartialTimeout, checking a few times per timeout.
func (e *Engine) sweepPartials(ctx context.Context) {
	every := min(max(e.cfg.PartialTimeout/4, 100*time.Millisecond), 5*time.Minute)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if _, err := e.RemovePartials(e.cfg.PartialTimeout); err != nil {
				e.log.Warn("removing abandoned partial downloads", "err", err)
			}
		}
	}
}
