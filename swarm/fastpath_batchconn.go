package swarm

import (
	"context"
	"net"
	"sync"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/sec"
	tptu "github.com/libp2p/go-libp2p/p2p/net/upgrader"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
)

// batchSize is how much of a connection's TLS output is gathered into one
// write system call, and how much input one read system call may fetch: 16
// records. Both buffers are a connection's own; they reach this size only on
// connections that move bulk data, since a node keeps many that do not (the
// DHT's).
const batchSize = 256 << 10

// readStart is a connection's first read buffer: one TLS record and then
// some. A read that fills it means bytes are queueing, and the buffer grows to
// batchSize; connections that only carry small messages (the DHT's, most of a
// node's) never pay for the large one.
const readStart = 20 << 10

// batchedTLS is libp2p's TLS 1.3 security transport with fewer, larger system
// calls under it. TLS cuts what it sends into records of at most 16 KiB and
// writes each with a write(2) of its own: 64 system calls per MiB, which on
// this kind of VM cost more than the AES-GCM that seals the bytes. Here the
// records of one Write go out together, and reads take up to batchSize at a
// time. The bytes on the wire are the same: peers running plain libp2p TLS
// interoperate.
type batchedTLS struct{ inner *libp2ptls.Transport }

// newBatchedTLS has the signature libp2p.Security wants.
func newBatchedTLS(id protocol.ID, key crypto.PrivKey, muxers []tptu.StreamMuxer) (*batchedTLS, error) {
	t, err := libp2ptls.New(id, key, muxers)
	if err != nil {
		return nil, err
	}
	return &batchedTLS{inner: t}, nil
}

func (t *batchedTLS) ID() protocol.ID { return t.inner.ID() }

func (t *batchedTLS) SecureInbound(ctx context.Context, insecure net.Conn, p peer.ID) (sec.SecureConn, error) {
	return t.secureInbound(ctx, insecure, p)
}

func (t *batchedTLS) SecureOutbound(ctx context.Context, insecure net.Conn, p peer.ID) (sec.SecureConn, error) {
	return t.secureOutbound(ctx, insecure, p)
}

func (t *batchedTLS) secureInbound(ctx context.Context, insecure net.Conn, p peer.ID) (*batchedSecureConn, error) {
	bc := newBatchConn(insecure)
	sc, err := t.inner.SecureInbound(ctx, bc, p)
	if err != nil {
		return nil, err
	}
	bc.startBatching()
	return &batchedSecureConn{SecureConn: sc, f: flushConn{Conn: sc, bc: bc}}, nil
}

func (t *batchedTLS) secureOutbound(ctx context.Context, insecure net.Conn, p peer.ID) (*batchedSecureConn, error) {
	bc := newBatchConn(insecure)
	sc, err := t.inner.SecureOutbound(ctx, bc, p)
	if err != nil {
		return nil, err
	}
	bc.startBatching()
	return &batchedSecureConn{SecureConn: sc, f: flushConn{Conn: sc, bc: bc}}, nil
}

// batchedSecureConn is libp2p's secured connection, flushing as flushConn does.
type batchedSecureConn struct {
	sec.SecureConn
	f flushConn
}

func (c *batchedSecureConn) Write(b []byte) (int, error) { return c.f.Write(b) }
func (c *batchedSecureConn) Read(b []byte) (int, error)  { return c.f.Read(b) }

// flushConn is a TLS connection over a batchConn. It flushes what TLS
// gathered below it once each Write is whole, so nothing waits in the buffer
// for a later Write.
type flushConn struct {
	net.Conn // the TLS connection
	bc       *batchConn
}

func (c flushConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if ferr := c.bc.flush(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

// Read returns every whole record already read from the socket, not just
// the first: TLS hands out one 16 KiB record per Read, and the reader above
// pays for each Read it makes (a rate limiter's sleep, a buffer fill). It
// never waits on the socket for more than the first record.
//
// Read flushes too: TLS may answer from its read path (a key update), and
// that answer must not wait for the next Write.
func (c flushConn) Read(b []byte) (int, error) {
	c.bc.rmu.Lock()
	defer c.bc.rmu.Unlock()
	n, err := c.Conn.Read(b)
	for err == nil && n < len(b) {
		c.bc.drain = true
		m, derr := c.Conn.Read(b[n:])
		c.bc.drain = false
		n += m
		if derr != nil {
			// Nothing more buffered, or a failure TLS keeps and returns
			// on the next Read, after the bytes it already gave.
			break
		}
	}
	if c.bc.pending() {
		if ferr := c.bc.flush(); err == nil && ferr != nil {
			return n, ferr
		}
	}
	return n, err
}

// batchConn is the connection under TLS: reads through a buffer, and once
// the handshake is done (whose flights must go out as written), writes
// gathered until flush.
type batchConn struct {
	net.Conn
	rmu   sync.Mutex // held by flushConn.Read, so drain is one reader's
	drain bool       // Read serves only what rbuf holds
	rbuf  []byte     // read buffer: readStart, then batchSize
	r, w  int        // rbuf[r:w] is read but not yet returned

	mu       sync.Mutex
	batching bool
	buf      []byte // reused; grows to at most batchSize
	err      error  // a failed write: every later one fails too
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c}
}

// Read is only ever called by TLS, one goroutine at a time.
func (c *batchConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if c.r == c.w {
		if c.drain {
			return 0, errDrained{}
		}
		if len(b) >= batchSize {
			return c.Conn.Read(b) // as large as the buffer could make it
		}
		if c.rbuf == nil {
			c.rbuf = make([]byte, readStart)
		}
		n, err := c.Conn.Read(c.rbuf)
		if n == 0 {
			return 0, err
		}
		c.r, c.w = 0, n
		if n == len(c.rbuf) && n < batchSize {
			grown := make([]byte, batchSize)
			c.w = copy(grown, c.rbuf[:n])
			c.rbuf = grown
		}
		// An error with bytes comes back on the next call, when the buffer is
		// empty, from the connection again.
	}
	n := copy(b, c.rbuf[c.r:c.w])
	c.r += n
	return n, nil
}

// errDrained is what a draining batchConn returns once its buffer is empty.
// It is temporary, as a deadline is, so TLS keeps a partly read record and
// the connection stays usable.
type errDrained struct{}

func (errDrained) Error() string   { return "swarm: no more input buffered" }
func (errDrained) Timeout() bool   { return true }
func (errDrained) Temporary() bool { return true }

func (c *batchConn) startBatching() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

func (c *batchConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.batching {
		return c.Conn.Write(b)
	}
	if len(c.buf)+len(b) > batchSize {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(b) >= batchSize {
			n, err := c.Conn.Write(b)
			c.err = err
			return n, err
		}
	}
	// Grown by append, so a connection that only sends small messages keeps a
	// small buffer; a bulk one reaches batchSize after a few Writes and keeps it.
	c.buf = append(c.buf, b...)
	return len(b), nil
}

func (c *batchConn) pending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf) > 0
}

func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *batchConn) flushLocked() error {
	if c.err != nil {
		return c.err
	}
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	c.err = err
	return err
}

// Close sends what TLS wrote last (its close_notify) before closing.
func (c *batchConn) Close() error {
	c.flush()
	return c.Conn.Close()
}
