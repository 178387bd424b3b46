package swarm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/artifact"
)

type transfer struct {
	rel      artifact.Release
	ih       metainfo.Hash
	t        *torrent.Torrent
	staging  string        // staging dir for downloads; "" when seeding from the store
	digest   *blobDigest   // a download's whole-blob sha256
	done     chan struct{} // closed when the download ended
	err      error         // why it ended, nil if the blob is in the store
	seeding  bool
	lastAt   time.Time
	lastUp   int64
	lastDown int64
	upRate   float64
	downRate float64

	sampleAt             time.Time
	sampleUp, sampleDown int64
	idleUp, idleDown     time.Duration
}

// Seed serves a blob that is already in the store until Drop.
func (e *Engine) Seed(ctx context.Context, rel artifact.Release) error {
	if err := checkRelease(rel); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if !e.cfg.Store.HasBlob(rel.Digest) {
		return fmt.Errorf("seed %s: %w", short(rel.Digest), artifact.ErrNotFound)
	}
	e.mu.Lock()
	_, running := e.transfers[rel.Digest]
	e.mu.Unlock()
	if running {
		// Seeding already, or downloading: a download seeds once done.
		return nil
	}
	infoBytes, err := e.infoBytes(ctx, rel)
	if err != nil {
		return fmt.Errorf("seed %s: %w", short(rel.Digest), err)
	}
	ih := metainfo.HashBytes(infoBytes)
	// The store verified the blob's sha256 when it took it in, and the infohash we
	// just checked binds these piece hashes to it: skip re-hashing every piece.
	e.completion.trust(ih)
	if e.ss != nil {
		var info metainfo.Info
		if err := bencode.Unmarshal(infoBytes, &info); err != nil {
			return fmt.Errorf("seed %s: %w", short(rel.Digest), err)
		}
		e.ss.add(ih, &info)
	}
	blob := e.cfg.Store.BlobPath(rel.Digest)
	t, _ := e.cl.AddTorrentOpt(torrent.AddTorrentOpts{
		InfoHash:  ih,
		InfoBytes: infoBytes,
		Storage:   blobStorage{path: blob, readOnly: true, completion: e.completion},
		// The chunk size fleet peers request (see fetchChunkSize): anacrolix
		// serves a request from its pool of reused buffers only when the request
		// is exactly the torrent's chunk size, and makes a fresh one otherwise,
		// which on these VMs costs its first touch of every page.
		ChunkSize: fetchChunkSize(rel.PieceLength),
	})
	done := make(chan struct{})
	close(done)
	tr := &transfer{rel: rel, ih: ih, t: t, done: done, seeding: true}
	e.mu.Lock()
	e.transfers[rel.Digest] = tr
	e.addKnownLocked(tr)
	e.mu.Unlock()
	// A finished download may have left its staging link behind in a crash.
	os.RemoveAll(e.stagingDir(rel.Digest))
	e.log.Debug("seeding", "digest", rel.Digest, "infohash", ih.HexString())
	return nil
}

// Drop stops seeding or fetching a blob and removes its staging files.
func (e *Engine) Drop(digest string) error {
	e.mu.Lock()
	tr, ok := e.transfers[digest]
	delete(e.transfers, digest)
	var t *torrent.Torrent
	if ok {
		t = tr.t // nil until the download added it; it drops itself then
		delete(e.known, tr.ih)
		e.completion.distrust(tr.ih)
		if e.ss != nil {
			e.ss.remove(tr.ih)
		}
	}
	e.mu.Unlock()
	if !ok {
		return nil
	}
	if t != nil {
		t.Drop()
	}
	<-tr.done
	if err := os.RemoveAll(e.stagingDir(digest)); err != nil {
		return fmt.Errorf("drop %s: %w", short(digest), err)
	}
	return nil
}

func (e *Engine) stagingDir(digest string) string {
	return filepath.Join(e.cfg.Store.TempDir(), stagingPrefix+digest)
}
