package swarm

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
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

// plainDialer dials plain TCP BitTorrent peers and refuses the synthetic
// addresses of libp2p peers, which only the libp2p dialer can reach.
type plainDialer struct{}

func (plainDialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && ap.Addr().As16()[0] == 0xfd && ap.Port() == p2pPort {
		return nil, fmt.Errorf("dial %s: a libp2p peer, not a TCP one", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (plainDialer) DialerNetwork() string { return "tcp" }

// noFlushStorage drops anacrolix's flush of every verified piece to disk (an
// msync or fsync per piece, a fifth of a leecher's CPU and a disk write storm).
// A process crash loses nothing that the page cache holds; a power loss can lose
// pieces marked complete, and then the whole-blob sha256 check before adoption
// fails, every piece is re-verified and the bad ones fetched again.
type noFlushStorage struct{ storage.ClientImpl }

func (s noFlushStorage) OpenTorrent(ctx context.Context, info *metainfo.Info, ih metainfo.Hash) (storage.TorrentImpl, error) {
	t, err := s.ClientImpl.OpenTorrent(ctx, info, ih)
	if err != nil || t.Piece == nil {
		return t, err
	}
	piece := t.Piece
	t.Piece = func(p metainfo.Piece) storage.PieceImpl { return noFlushPiece{piece(p)} }
	return t, nil
}

// noFlushPiece hides the Flusher of a piece but keeps its efficient WriteTo.
type noFlushPiece struct{ storage.PieceImpl }

func (p noFlushPiece) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := p.PieceImpl.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return io.Copy(w, io.NewSectionReader(p.PieceImpl, 0, 1<<62))
}
