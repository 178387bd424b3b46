package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"golang.org/x/sys/unix"
)

const echoProto = "/ballena/test/echo"

func echoHost(t *testing.T, h host.Host) host.Host {
	t.Helper()
	t.Cleanup(func() { h.Close() })
	h.SetStreamHandler(echoProto, func(s network.Stream) {
		defer s.Close()
		io.Copy(s, s)
	})
	return h
}

func batchedHost(t *testing.T) host.Host {
	t.Helper()
	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(HostConfig{Key: sk, Listen: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	return echoHost(t, h)
}

// stockHost is a libp2p host as libp2p ships it, TLS only.
func stockHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(),
		libp2p.Security(libp2ptls.ID, libp2ptls.New))
	if err != nil {
		t.Fatal(err)
	}
	return echoHost(t, h)
}

// TestBatchedTLS checks the batched TLS transport against itself and against
// stock libp2p TLS, in both directions: a single byte comes back at once (a
// Write's records must not wait in the batch for a later Write), and a few
// MiB of odd length come back whole.
func TestBatchedTLS(t *testing.T) {
	cases := []struct {
		name     string
		from, to func(*testing.T) host.Host
	}{
		{"batched to batched", batchedHost, batchedHost},
		{"batched to stock", batchedHost, stockHost},
		{"stock to batched", stockHost, batchedHost},
	}
	payload := make([]byte, 5<<20+3)
	rand.Read(payload)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tc.from(t), tc.to(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
				t.Fatal(err)
			}
			s, err := a.NewStream(ctx, b.ID(), echoProto)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Reset()
			if got := s.Conn().ConnState().Security; got != libp2ptls.ID {
				t.Fatalf("connection secured by %s, want %s", got, libp2ptls.ID)
			}
			s.SetDeadline(time.Now().Add(20 * time.Second))
			one := []byte{42}
			if _, err := s.Write(one); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, one); err != nil || one[0] != 42 {
				t.Fatalf("one byte: got %v, %v", one, err)
			}
			echoBack(t, s, payload)
		})
	}
}

// TestBatchConnReadBuffer: a connection carrying small messages keeps a small
// read buffer; one with bytes queueing grows it to batchSize. Either way every
// byte comes through, in order, whatever the sizes of the reads above it.
func TestBatchConnReadBuffer(t *testing.T) {
	t.Run("small messages", func(t *testing.T) {
		w, r := tcpPair(t)
		bc := newBatchConn(r)
		for i := range 50 {
			msg := []byte(fmt.Sprintf("message %d", i))
			if _, err := w.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(bc, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("read %q, want %q", got, msg)
			}
		}
		if len(bc.rbuf) != readStart {
			t.Errorf("read buffer %d bytes after small messages, want %d", len(bc.rbuf), readStart)
		}
	})
	for _, readSize := range []int{1, 5, 16*1024 + 5, 100 << 10, batchSize, batchSize + 3} {
		t.Run(fmt.Sprintf("bulk, reads of %d", readSize), func(t *testing.T) {
			w, r := tcpPair(t)
			data := make([]byte, 1<<20+7)
			rand.Read(data)
			// All of it queued before the first read: that read fills the buffer.
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			w.Close()
			bc := newBatchConn(r)
			var got bytes.Buffer
			b := make([]byte, readSize)
			for {
				n, err := bc.Read(b)
				got.Write(b[:n])
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("read %d bytes, not the %d written", got.Len(), len(data))
			}
			if readSize < batchSize && len(bc.rbuf) != batchSize {
				t.Errorf("read buffer %d bytes after queued bulk data, want %d", len(bc.rbuf), batchSize)
			}
			if readSize >= batchSize && bc.rbuf != nil {
				t.Errorf("reads of %d went through a %d-byte buffer; want them straight from the connection", readSize, len(bc.rbuf))
			}
		})
	}
}

// TestFlushConnReadsBufferedRecords: a Read returns every whole TLS record
// already read from the socket, not one record per Read, and never waits on
// the socket for a record that has only partly arrived; once the rest
// arrives, the connection carries on.
func TestFlushConnReadsBufferedRecords(t *testing.T) {
	client, server, sock := tlsPairCaptured(t)
	const recordSize = 16 << 10 // TLS's largest plaintext record
	msgs := make([][]byte, 6)
	for i := range msgs {
		msgs[i] = make([]byte, recordSize)
		rand.Read(msgs[i])
	}
	records := make([][]byte, len(msgs))
	for i, m := range msgs {
		records[i] = client.seal(t, m)
	}
	server.Conn.(*tls.Conn).SetReadDeadline(time.Now().Add(time.Minute)) // a hang fails, not stalls

	// Four whole records queued before the first Read.
	sock.queue(t, bytes.Join(records[:4], nil))
	b := make([]byte, 128<<10)
	var got []byte
	reads := 0
	for len(got) < 4*recordSize {
		n, err := server.Read(b)
		if err != nil {
			t.Fatalf("read %d: %v", reads+1, err)
		}
		got = append(got, b[:n]...)
		reads++
	}
	if !bytes.Equal(got, bytes.Join(msgs[:4], nil)) {
		t.Fatal("four queued records read back wrong")
	}
	if reads >= 4 {
		t.Errorf("four queued records took %d Reads; want fewer than one a record", reads)
	}

	// A whole record, then the first 100 bytes of the next: Read returns the
	// whole one without waiting for the rest of the other, and the part it
	// has is not lost.
	sock.queue(t, append(bytes.Clone(records[4]), records[5][:100]...))
	n, err := server.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:n], msgs[4]) {
		t.Fatalf("read %d bytes with a record and a part queued, want the record's %d", n, recordSize)
	}
	if _, err := sock.w.Write(records[5][100:]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, b[:recordSize]); err != nil {
		t.Fatalf("read after a partial record: %v", err)
	}
	if !bytes.Equal(b[:recordSize], msgs[5]) {
		t.Fatal("the record that arrived in two parts read back wrong")
	}
}

// sealer is a TLS client whose records are captured instead of sent, so a
// test can put them on the socket in pieces of its choosing.
type sealer struct {
	tc  *tls.Conn
	out *capturingConn
}

func (s sealer) seal(t *testing.T, msg []byte) []byte {
	t.Helper()
	s.out.buf.Reset()
	if _, err := s.tc.Write(msg); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(s.out.buf.Bytes())
}

// capturingConn sends what is written to it until capture is set, then keeps it.
type capturingConn struct {
	net.Conn
	capture bool
	buf     bytes.Buffer
}

func (c *capturingConn) Write(b []byte) (int, error) {
	if c.capture {
		return c.buf.Write(b)
	}
	return c.Conn.Write(b)
}

// rawSocket is the client's socket, written to by the test.
type rawSocket struct {
	w net.Conn     // the client's end
	r *net.TCPConn // the server's end
}

// queue writes b and waits until the server's kernel holds all of it, so what
// the next Read finds is known. The server must have read everything before.
func (s *rawSocket) queue(t *testing.T, b []byte) {
	t.Helper()
	if _, err := s.w.Write(b); err != nil {
		t.Fatal(err)
	}
	raw, err := s.r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		var inq int
		raw.Control(func(fd uintptr) { inq, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if err != nil {
			t.Fatal(err)
		}
		if inq >= len(b) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes queued at the server, want %d", inq, len(b))
		}
		time.Sleep(time.Millisecond)
	}
}

// tlsPairCaptured makes a TLS 1.3 connection over loopback TCP, as the bulk
// connections have it: the server reads through flushConn and batchConn.
// After the handshake the client's records are captured (sealer), and the
// test puts them on the socket itself (rawSocket).
func tlsPairCaptured(t *testing.T) (sealer, flushConn, *rawSocket) {
	t.Helper()
	w, r := loopbackTCP(t)

	ids := make([]*libp2ptls.Identity, 2)
	for i := range ids {
		sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if ids[i], err = libp2ptls.NewIdentity(sk); err != nil {
			t.Fatal(err)
		}
	}
	ccfg, _ := ids[0].ConfigForPeer("")
	ccfg.DynamicRecordSizingDisabled = true // a 16 KiB Write is one record
	scfg, _ := ids[1].ConfigForPeer("")
	out := &capturingConn{Conn: w}
	tc := tls.Client(out, ccfg)
	bc := newBatchConn(r)
	ts := tls.Server(bc, scfg)
	errc := make(chan error, 1)
	go func() { errc <- tc.Handshake() }()
	if err := ts.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	bc.startBatching()
	out.capture = true
	return sealer{tc: tc, out: out}, flushConn{Conn: ts, bc: bc}, &rawSocket{w: w, r: r}
}
