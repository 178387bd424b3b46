package swarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	pp "github.com/anacrolix/torrent/peer_protocol"

	"ballena.dev/artifact"
)

// ErrUnavailable means no peer served an artifact's bytes within the stall timeout.
var ErrUnavailable = errors.New("unavailable")

// DefaultStallTimeout is how long a download may go without a piece that
// passed its hash check before it fails.
const DefaultStallTimeout = 30 * time.Second

// Progress is a snapshot of one download.
type Progress struct {
	Digest       string
	Have, Total  int64
	Peers        int
	DownloadRate float64 // bytes per second
}

// Download fetches a blob from peers into a staging dir, checks every piece and
// then the whole blob against rel.Digest, moves it into the store, and keeps
// seeding it. A download that was interrupted, even by kill -9, resumes from the
// pieces it had verified. It fails with ErrUnavailable when no piece verifies
// for the stall timeout; if nothing had arrived at all it leaves nothing behind.
func (e *Engine) Download(ctx context.Context, rel artifact.Release, progress func(Progress)) error {
	if err := checkRelease(rel); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if e.cfg.Store.HasBlob(rel.Digest) {
		return e.Seed(ctx, rel)
	}
	ih := metainfo.NewHashFromHex(rel.InfoHash)
	e.mu.Lock()
	tr, ok := e.transfers[rel.Digest]
	if !ok {
		tr = &transfer{rel: rel, ih: ih, staging: e.stagingDir(rel.Digest), done: make(chan struct{})}
		e.transfers[rel.Digest] = tr
		e.mu.Unlock()
		go e.run(tr)
	} else {
		e.mu.Unlock()
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tr.done:
			if progress != nil {
				progress(e.progress(tr))
			}
			return tr.err
		case <-ctx.Done():
			// The transfer goes on for other callers and for the swarm; Drop ends it.
			return fmt.Errorf("download %s: %w", short(rel.Digest), ctx.Err())
		case <-tick.C:
			if progress != nil {
				progress(e.progress(tr))
			}
		}
	}
}

// run drives one download to its end and records why it ended in tr.err.
func (e *Engine) run(tr *transfer) {
	err := e.fetch(tr)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		tr.err = err
		if e.transfers[tr.rel.Digest] == tr {
			delete(e.transfers, tr.rel.Digest)
		}
		if tr.t != nil {
			tr.t.Drop()
		}
	} else {
		tr.seeding = true
	}
	close(tr.done)
}

// fetch is stage 3 of a fetch (see fetch.go) for one transfer, and it ends
// in stages 4 and 5 for the blob: the torrent's info and pieces are checked
// as they arrive, the whole blob when the store adopts it.
func (e *Engine) fetch(tr *transfer) error {
	t, err := e.addDownload(tr)
	if err != nil {
		return err
	}
	stall := time.NewTimer(e.cfg.StallTimeout)
	defer stall.Stop()
	if err := e.awaitInfo(tr, t, stall); err != nil {
		return err
	}
	return e.downloadPieces(tr, t, stall)
}

// addDownload reserves the blob's room in the staging dir and adds the torrent.
func (e *Engine) addDownload(tr *transfer) (*torrent.Torrent, error) {
	rel := tr.rel
	if err := os.MkdirAll(tr.staging, 0o700); err != nil {
		return nil, fmt.Errorf("download %s: %w", short(rel.Digest), err)
	}
	// Reserve the blob's room now, from the signed size: anacrolix opens the
	// storage only once the info arrives and swallows an error there, so a full
	// disk would look like a swarm with nothing to give.
	staged := filepath.Join(tr.staging, rel.Digest)
	fresh, err := reserve(staged, rel.Size)
	if err != nil {
		os.Remove(tr.staging) // only if empty: a partial download stays for a resume
		return nil, fmt.Errorf("download %s: %w", short(rel.Digest), err)
	}
	tr.digest = newBlobDigest()
	opts := torrent.AddTorrentOpts{
		InfoHash:  tr.ih,
		Storage:   blobStorage{path: staged, fresh: fresh, completion: e.completion, digest: tr.digest},
		ChunkSize: fetchChunkSize(rel.PieceLength),
	}
	if b, err := e.cachedInfo(tr.ih); err == nil {
		opts.InfoBytes = b
	}
	t, _ := e.cl.AddTorrentOpt(opts)
	e.mu.Lock()
	tr.t = t
	dropped := e.transfers[rel.Digest] != tr
	e.addKnownLocked(tr)
	e.mu.Unlock()
	if dropped { // Drop ran before the torrent existed
		t.Drop()
		os.RemoveAll(tr.staging)
		return nil, fmt.Errorf("download %s: dropped", short(rel.Digest))
	}
	return t, nil
}

// awaitInfo waits for a peer to send the torrent's info and checks it against
// the signed release (stage 4's first check).
func (e *Engine) awaitInfo(tr *transfer, t *torrent.Torrent, stall *time.Timer) error {
	rel := tr.rel
	if e.cfg.Host != nil {
		// BitTorrent's metadata exchange can miss peers that got the info
		// after connecting (see InfoProtocol): ask them directly too.
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		go e.fillInfo(ctx, tr, t)
	}
	select {
	case <-t.GotInfo():
	case <-stall.C:
		return e.abandon(tr, t, fmt.Errorf("download %s: no peer holds it (none sent its torrent info within %s): %w",
			short(rel.Digest), e.cfg.StallTimeout, ErrUnavailable))
	case <-e.cl.Closed():
		return e.abandon(tr, t, fmt.Errorf("download %s: engine closed", short(rel.Digest)))
	}
	if err := checkInfo(t.Info(), rel); err != nil {
		return e.abandon(tr, t, fmt.Errorf("download %s: %w", short(rel.Digest), err))
	}
	e.saveInfo(tr.ih, t.Metainfo().InfoBytes)
	return nil
}

// downloadPieces fetches every piece, failing when no data arrives for the
// stall timeout, and hands the complete blob to adoptBlob (stages 4 and 5).
func (e *Engine) downloadPieces(tr *transfer, t *torrent.Torrent, stall *time.Timer) error {
	rel := tr.rel
	t.DownloadAll()
	lastHave := verifiedBytes(t, t.Stats())
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	retried := false
	for {
		complete := t.Complete().On()
		select {
		case <-complete:
			err := e.adoptBlob(tr)
			if err == nil {
				return nil
			}
			if retried || !errors.Is(err, errAdopt) {
				return e.abandon(tr, t, err)
			}
			// Pieces passed their hashes but the whole did not: re-check every piece
			// from disk and fetch again what fails.
			retried = true
			e.log.Warn("blob failed its sha256 after all pieces passed; re-verifying", "digest", short(rel.Digest))
			if err := t.VerifyData(); err != nil {
				return e.abandon(tr, t, fmt.Errorf("download %s: re-verify: %w", short(rel.Digest), err))
			}
		case <-tick.C:
			// Only pieces that passed their hash count as progress: junk from a
			// lying peer, or bytes that never make a whole piece, do not keep a
			// dead download alive.
			if have := verifiedBytes(t, t.Stats()); have > lastHave {
				lastHave = have
				stall.Reset(e.cfg.StallTimeout)
			}
		case <-stall.C:
			return e.abandon(tr, t, fmt.Errorf("download %s: no data from any peer for %s (have %d of %d bytes): %w",
				short(rel.Digest), e.cfg.StallTimeout, verifiedBytes(t, t.Stats()), rel.Size, ErrUnavailable))
		case <-t.Closed():
			return e.abandon(tr, t, fmt.Errorf("download %s: dropped", short(rel.Digest)))
		case <-e.cl.Closed():
			return fmt.Errorf("download %s: engine closed", short(rel.Digest))
		}
	}
}

// abandon ends a failed download with err. Verified pieces stay for a later
// resume; if there are none, nothing is left behind.
func (e *Engine) abandon(tr *transfer, t *torrent.Torrent, err error) error {
	if verifiedBytes(t, t.Stats()) == 0 {
		t.Drop()
		os.RemoveAll(tr.staging)
	}
	return err
}

// fetchChunkSize is the request size of a download: half a piece, at least
// 256 KiB (or the whole piece if smaller) and at most 1 MiB. Fleet peers are
// anacrolix engines that serve any length; requesting 16 KiB chunks (the
// BitTorrent default) multiplies the per-request work (request planning,
// messages, writes, syscalls) by the pieces' sixteen chunks, and on a loaded
// node that work, not the link, bounds the rate. Half a piece rather than a
// whole one lets two peers fill a piece at once, and keeps a request on a
// capped link short against stealRequestGrace: whole 512 KiB pieces, taken
// over twice as often, came twice (at 16 leechers, 270-360 MiB of duplicates
// against 70-120).
func fetchChunkSize(pieceLength int64) pp.Integer {
	if pieceLength <= 0 {
		return 0 // the default
	}
	return pp.Integer(min(pieceLength, max(minChunk, min(pieceLength/2, maxChunk))))
}

// minChunk and maxChunk bound the requests a fleet download makes, and
// maxPipelinedRequests is how many of them a seeder buffers per connection.
const (
	minChunk             = 256 << 10
	maxChunk             = 1 << 20
	maxPipelinedRequests = 4
)

func (e *Engine) progress(tr *transfer) Progress {
	p := Progress{Digest: tr.rel.Digest, Total: tr.rel.Size}
	e.mu.Lock()
	t := tr.t
	p.DownloadRate = tr.downRate
	e.mu.Unlock()
	if t != nil {
		st := t.Stats()
		p.Have = verifiedBytes(t, st)
		p.Peers = st.ActivePeers
	}
	return p
}
