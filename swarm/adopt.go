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

var errAdopt = errors.New("the blob does not match its signed sha256")

// adoptBlob checks the blob's sha256, which the download computed from disk as
// pieces passed their checks (see blobDigest), against the signed digest, and
// hands the blob to the store: the last check of stage 4 and the blob's half
// of stage 5. The store gets a hard link, so the torrent goes on seeding from
// the staging path without a pause; the link is the same inode and no piece is
// written after completion.
func (e *Engine) adoptBlob(tr *transfer) error {
	rel := tr.rel
	sum, err := tr.digest.result(context.Background())
	if err != nil {
		return fmt.Errorf("download %s: hash the blob: %w", short(rel.Digest), err)
	}
	if sum != rel.Digest {
		// Every piece passed its sha1, but the whole is not what was signed.
		return fmt.Errorf("download %s: %w: its sha256 is %s, the signed release says %s",
			short(rel.Digest), errAdopt, short(sum), short(rel.Digest))
	}
	staged := filepath.Join(tr.staging, rel.Digest)
	link := staged + ".adopt"
	os.Remove(link)
	if err := os.Link(staged, link); err != nil {
		return fmt.Errorf("download %s: link for adoption: %w", short(rel.Digest), err)
	}
	if err := e.cfg.Store.AdoptHashed(context.Background(), link, rel.Digest); err != nil {
		os.Remove(link)
		return fmt.Errorf("download %s: %w", short(rel.Digest), err)
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
