package swarm

import (
	"sync"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

// trustedCompletion is the bbolt piece completion, except that torrents whose
// blob the store has verified whole report every piece complete, so seeding a
// stored blob needs no re-hash of every piece.
type trustedCompletion struct {
	storage.PieceCompletion
	mu      sync.RWMutex
	trusted map[metainfo.Hash]bool
}

func newTrustedCompletion(pc storage.PieceCompletion) *trustedCompletion {
	return &trustedCompletion{PieceCompletion: pc, trusted: make(map[metainfo.Hash]bool)}
}

func (c *trustedCompletion) trust(ih metainfo.Hash) {
	c.mu.Lock()
	c.trusted[ih] = true
	c.mu.Unlock()
}

func (c *trustedCompletion) distrust(ih metainfo.Hash) {
	c.mu.Lock()
	delete(c.trusted, ih)
	c.mu.Unlock()
}

func (c *trustedCompletion) Get(pk metainfo.PieceKey) (storage.Completion, error) {
	c.mu.RLock()
	ok := c.trusted[pk.InfoHash]
	c.mu.RUnlock()
	if ok {
		return storage.Completion{Ok: true, Complete: true}, nil
	}
	return c.PieceCompletion.Get(pk)
}

// Close is a no-op: storage clients close their completion, but the engine owns it.
func (c *trustedCompletion) Close() error { return nil }
