package swarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

var errAdopt = errors.New("store refused the download")

// adoptBlob hands the staged blob to the store, which re-hashes it against the
// signed digest as it takes it in: the last check of stage 4 and the blob's
// half of stage 5 are one step. The store gets a hard link, so the torrent goes on seeding from
// the staging path without a pause; the link is the same inode and no piece is
// written after completion.
func (e *Engine) adoptBlob(tr *transfer) error {
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
	e.log.Debug("downloaded", "digest", rel.Digest, "bytes", rel.Size)
	return nil
}

// adoptRelease stores the signed release beside its adopted blob and
// advertises the blob on the DHT.
func (n *Node) adoptRelease(rel artifact.Release, env *signing.Envelope) error {
	if err := n.st.PutRelease(rel, env); err != nil {
		return err
	}
	n.advertise(rel.Digest)
	return nil
}
