package swarm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"golang.org/x/time/rate"
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
type plainDialer struct{ up *rate.Limiter }

func (pd plainDialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && ap.Addr().As16()[0] == 0xfd && ap.Port() == p2pPort {
		return nil, fmt.Errorf("dial %s: a libp2p peer, not a TCP one", addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || pd.up == nil {
		return c, err
	}
	return uploadLimitedConn{c, pd.up}, nil
}

func (plainDialer) DialerNetwork() string { return "tcp" }

// uploadLimitedConn caps what a node sends, for all its connections together.
// The cap sits on the connection instead of in anacrolix's UploadRateLimiter:
// that one re-arms a timer to wake the peer's writer, and a wake-up that lands
// before the writer waits is lost, stalling an upload for a keep-alive period.
// Here the writer simply blocks in Write until the bytes may go.
type uploadLimitedConn struct {
	net.Conn
	l *rate.Limiter
}

func (c uploadLimitedConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), c.l.Burst())
		if err := c.l.WaitN(context.Background(), k); err != nil {
			return n, err
		}
		m, err := c.Conn.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

// limitedListener caps the upload of accepted plain TCP connections.
type limitedListener struct {
	net.Listener
	l *rate.Limiter
}

func (ln limitedListener) Accept() (net.Conn, error) {
	c, err := ln.Listener.Accept()
	if err != nil || ln.l == nil {
		return c, err
	}
	return uploadLimitedConn{c, ln.l}, nil
}
