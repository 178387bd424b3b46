package swarm

import (
	"context"
	"crypto/rand"
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
