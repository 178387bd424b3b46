package swarm

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
)

// blobDigest is a download's whole-blob sha256, computed from disk while the
// download runs: it reads each piece once the piece has passed its hash
// check, in order, on its own goroutine. Adopting the finished blob then
// reads nothing again, and the sha256 runs on the core the transfer leaves
// idle instead of after it.
//
// A write to a piece it has already read starts it over, so the sum always
// describes the bytes on disk after their last write, as re-reading the
// whole file at the end would.
type blobDigest struct {
	mu      sync.Mutex
	next    int  // the first piece not yet in h
	reading bool // piece next is being read
	restart bool // a write touched a piece already in h
	sum     string
	err     error
	snap    []byte         // h before a claimed piece, to undo it
	changed chan struct{}  // closed and replaced whenever the above change
	wake    chan struct{}  // a piece completed, or a restart is due
	ready   map[int][]byte // pieces past next that passed their check, in memory

	h hash.Hash
	// release takes back a buffer from ready; window is how far past next a
	// piece may be and still be kept in ready. Both are set before run.
	release func([]byte)
	window  int
}

var errDigestStopped = errors.New("the download's storage closed")

func newBlobDigest() *blobDigest {
	return &blobDigest{changed: make(chan struct{}), wake: make(chan struct{}, 1), ready: make(map[int][]byte), h: sha256.New()}
}

// pieceSource is what the digest reads: the blob's pieces and whether each
// has passed its hash check.
type pieceSource interface {
	numPieces() int
	complete(i int) bool
	// pieceReader reads piece i whole.
	pieceReader(i int) io.Reader
}

// run digests src's pieces in order until stop is closed.
func (d *blobDigest) run(src pieceSource, stop <-chan struct{}) {
	buf := alignedBuf(maxChunk) // direct reads, without a bounce
	n := src.numPieces()
	for {
		d.mu.Lock()
		if d.restart && !d.reading {
			d.h.Reset()
			d.next, d.restart, d.sum, d.err = 0, false, "", nil
			d.dropReadyLocked()
			d.broadcastLocked()
		}
		i := d.next
		if i == n && d.sum == "" && d.err == nil {
			d.sum = hex.EncodeToString(d.h.Sum(nil))
			d.broadcastLocked()
		}
		if i == n || d.err != nil || d.reading || d.restart || !src.complete(i) {
			d.mu.Unlock()
			select {
			case <-d.wake:
				continue
			case <-stop:
				d.mu.Lock()
				d.dropReadyLocked()
				d.err = errDigestStopped
				d.broadcastLocked()
				d.mu.Unlock()
				return
			}
		}
		d.reading = true
		mem, held := d.ready[i]
		delete(d.ready, i)
		d.mu.Unlock()

		// Unlocked: only this goroutine touches h, and a write to piece i
		// meanwhile sets restart, which throws this read away.
		var err error
		if held {
			d.h.Write(mem)
			d.release(mem)
		} else {
			_, err = io.CopyBuffer(d.h, src.pieceReader(i), buf)
		}

		d.mu.Lock()
		d.reading = false
		switch {
		case d.restart:
		case err != nil:
			d.err = fmt.Errorf("read piece %d: %w", i, err)
			d.broadcastLocked()
		default:
			d.next++
			d.broadcastLocked()
		}
		d.mu.Unlock()
	}
}

// claim lets the caller feed piece i to the digest in a read it makes anyway,
// the piece's sha1 check, so that the piece is read once: when i is the next
// piece and nobody is reading it, it returns the hash to write the piece to,
// and the caller must then call settle.
func (d *blobDigest) claim(i int) (hash.Hash, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.reading || d.restart || d.err != nil || d.sum != "" || i != d.next {
		return nil, false
	}
	snap, err := d.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return nil, false
	}
	d.reading, d.snap = true, snap
	return d.h, true
}

// settle ends a claim: the piece counts if its bytes passed their check, and
// is undone otherwise.
func (d *blobDigest) settle(passed bool) {
	d.mu.Lock()
	d.reading = false
	switch {
	case d.restart: // run starts over
	case passed:
		d.next++
		d.broadcastLocked()
	default:
		if err := d.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(d.snap); err != nil {
			d.restart = true
		}
	}
	d.mu.Unlock()
	d.poke()
}

// offer hands the digest piece i, which passed its check, in memory: it keeps
// the bytes until their turn if that is near, and releases them otherwise.
// current reports that no write to the piece came after these bytes; a write
// counts before it calls written, so one that comes later finds them there.
func (d *blobDigest) offer(i int, b []byte, current func() bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, dup := d.ready[i]; dup || d.restart || i < d.next || i >= d.next+d.window || !current() {
		d.release(b)
		return
	}
	d.ready[i] = b
}

// written records a write to piece i: if the digest has read it, or is
// reading it, the digest starts over; bytes it held for it are stale.
func (d *blobDigest) written(i int) {
	d.mu.Lock()
	if i < d.next || (i == d.next && d.reading) {
		d.restart = true
	}
	if b, ok := d.ready[i]; ok {
		delete(d.ready, i)
		d.release(b)
	}
	d.mu.Unlock()
	d.poke()
}

func (d *blobDigest) dropReadyLocked() {
	for i, b := range d.ready {
		delete(d.ready, i)
		d.release(b)
	}
}

// poke tells the digest a piece completed.
func (d *blobDigest) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// result waits for the sha256 of every piece, in hex.
func (d *blobDigest) result(ctx context.Context) (string, error) {
	for {
		d.mu.Lock()
		sum, err, ch := d.sum, d.err, d.changed
		if d.restart {
			sum = ""
		}
		d.mu.Unlock()
		if err != nil {
			return "", err
		}
		if sum != "" {
			return sum, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func (d *blobDigest) broadcastLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}
