package swarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

var errAdopt = errors.New("store refused the download")

// finish hands the staged blob to the store, which re-hashes it against the
// signed digest. The store gets a hard link, so the torrent goes on seeding from
// the staging path without a pause; the link is the same inode and no piece is
// written after completion.
func (e *Engine) finish(tr *transfer) error {
	rel := tr.rel
	staged := filepath.Join(tr.staging, rel.Digest)
	link := staged + ".adopt"
	os.Remove(link)
	if err := os.Link(staged, link); err != nil {
		return fmt.Errorf("download %s: link for adoption: %w", short(rel.Digest), err)
	}
	if err := e.cfg.Store.AdoptFile(context.Background(), link, rel.Digest); err != nil {
		os.Remove(link)
		// Most likely the sha256 did not match although every piece passed.
		return fmt.Errorf("download %s: %w: %w", short(rel.Digest), errAdopt, err)
	}
	e.completion.trust(tr.ih)
	e.log.Debug("downloaded", "digest", short(rel.Digest), "bytes", rel.Size)
	return nil
}
