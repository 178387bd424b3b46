package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
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
