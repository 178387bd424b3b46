package swarm

import (
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	g "github.com/anacrolix/generics"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"go.etcd.io/bbolt"
)

// boltCompletion records piece completion in the same bbolt file and layout
// as anacrolix's storage.NewBoltPieceCompletion (a data dir keeps what it
// recorded before), but gathers the writes: a Set lands in memory at once and
// reaches the file with the others of the next completionFlushDelay in one
// transaction. anacrolix's version runs a read and a write transaction per
// piece, six or so pwrite(2)s each: about a twentieth of a downloader's CPU
// on a fast link, more than the TLS that decrypts the piece.
//
// What a crash loses is at most the last delay's records; those pieces are
// fetched again, so the loss only ever costs bytes, never trust. (anacrolix
// opens the db NoSync as well: a record was never durable before the next
// write-back anyway.)
type boltCompletion struct {
	db *bbolt.DB

	flushMu sync.Mutex // one flush at a time, in order

	mu      sync.Mutex
	pending map[metainfo.PieceKey]g.Option[bool] // set, not yet committed; None forgets the record
	armed   bool                                 // a flush is scheduled
	err     error                                // the last failed flush, reported by the next Set
	closed  bool
}

// completionFlushDelay bounds how long a Set waits for the file. Short enough
// that a killed download re-fetches well under a piece at the rates tests
// use, long enough to gather dozens of pieces at wire speed.
const completionFlushDelay = 50 * time.Millisecond

var (
	boltCompletionBucket = []byte("completion") // anacrolix's names and values
	boltComplete         = []byte("c")
	boltIncomplete       = []byte("i")
)

func openBoltCompletion(dir string) (*boltCompletion, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	db, err := bbolt.Open(filepath.Join(dir, ".torrent.bolt.db"), 0o660, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	db.NoSync = true
	return &boltCompletion{db: db, pending: make(map[metainfo.PieceKey]g.Option[bool])}, nil
}

var _ storage.PieceCompletion = (*boltCompletion)(nil)

func (c *boltCompletion) Get(pk metainfo.PieceKey) (storage.Completion, error) {
	c.mu.Lock()
	v, ok := c.pending[pk]
	c.mu.Unlock()
	if ok {
		return storage.Completion{Ok: v.Ok, Complete: v.Value}, nil
	}
	var cn storage.Completion
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(boltCompletionBucket)
		if b == nil {
			return nil
		}
		if b = b.Bucket(pk.InfoHash[:]); b == nil {
			return nil
		}
		switch string(b.Get(pieceKey(pk.Index))) {
		case string(boltComplete):
			cn = storage.Completion{Ok: true, Complete: true}
		case string(boltIncomplete):
			cn = storage.Completion{Ok: true, Complete: false}
		}
		return nil
	})
	return cn, err
}

// Set records a piece complete or not, or with None forgets what was recorded
// (Get then answers not Ok).
func (c *boltCompletion) Set(pk metainfo.PieceKey, complete g.Option[bool]) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("piece completion: set piece %d of %s after close", pk.Index, pk.InfoHash.HexString())
	}
	c.pending[pk] = complete
	if !c.armed {
		c.armed = true
		time.AfterFunc(completionFlushDelay, func() { c.flush() })
	}
	err := c.err
	c.err = nil
	return err
}

// flush commits what is pending in one transaction. Entries stay in pending
// (Get answers from them) until the file has them, unless a newer Set
// changed them meanwhile.
func (c *boltCompletion) flush() error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	c.mu.Lock()
	c.armed = false
	batch := maps.Clone(c.pending)
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	err := c.db.Update(func(tx *bbolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(boltCompletionBucket)
		if err != nil {
			return err
		}
		for pk, v := range batch {
			b, err := root.CreateBucketIfNotExists(pk.InfoHash[:])
			if err != nil {
				return err
			}
			if !v.Ok {
				if err := b.Delete(pieceKey(pk.Index)); err != nil {
					return err
				}
				continue
			}
			val := boltIncomplete
			if v.Value {
				val = boltComplete
			}
			if err := b.Put(pieceKey(pk.Index), val); err != nil {
				return err
			}
		}
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		// Dropped, not retried: a missing record only means a re-fetch, and
		// a failing db would fail the retry too.
		err = fmt.Errorf("piece completion: write %d records: %w", len(batch), err)
		c.err = err
	}
	for pk, v := range batch {
		if cur, ok := c.pending[pk]; ok && cur == v {
			delete(c.pending, pk)
		}
	}
	return err
}

// Close writes what is pending and closes the file.
func (c *boltCompletion) Close() error {
	ferr := c.flush()
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	// A timer that fires after this finds nothing pending, or the db closed.
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	if err := c.db.Close(); err != nil {
		return err
	}
	return ferr
}

func pieceKey(i int) []byte {
	var k [4]byte
	binary.BigEndian.PutUint32(k[:], uint32(i))
	return k[:]
}
