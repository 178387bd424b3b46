package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/transport"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-libp2p/p2p/transport/tcpreuse"
	goyamux "github.com/libp2p/go-yamux/v5"
	ma "github.com/multiformats/go-multiaddr"

	"ballena.dev/internal/atomicfile"
)

// KeyFile is the node identity's file name inside the data dir: the libp2p
// marshalled ed25519 private key (crypto.MarshalPrivateKey), mode 0600. Its peer ID
// is the machine's name in the mesh.
const KeyFile = "node.key"

// LoadIdentity reads the node key at path, creating a fresh ed25519 key (0600) if
// the file does not exist.
func LoadIdentity(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		sk, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("node key %s: %w (remove it to make a new identity)", path, err)
		}
		if sk.Type() != crypto.Ed25519 {
			return nil, fmt.Errorf("node key %s: want an ed25519 key, got %s", path, sk.Type())
		}
		return sk, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("node key: %w", err)
	}
	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("node key: generate: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(sk)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	if err := writeFileExcl(path, b); err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	return sk, nil
}

// writeFileExcl writes a secret 0600 through a temporary file so a crash never
// leaves half a key behind, and refuses to replace an existing file.
func writeFileExcl(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteNew(path, b, 0o600)
}

// GeneratePSK writes a new fleet pre-shared key in the libp2p private network
// format (/key/swarm/psk/1.0.0/, base16) to path, mode 0600, refusing to overwrite.
func GeneratePSK(path string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	b := []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(k) + "\n")
	if err := writeFileExcl(path, b); err != nil {
		return fmt.Errorf("write psk: %w", err)
	}
	return nil
}

// LoadPSK reads a fleet pre-shared key in the libp2p private network format.
func LoadPSK(path string) (pnet.PSK, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("psk: %w", err)
	}
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("psk %s: %w (make one with: ballena node psk generate %s)", path, err, path)
	}
	return psk, nil
}

// ParseAddrInfos parses /.../p2p/<id> multiaddrs, merging addresses of the same peer.
func ParseAddrInfos(addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, s := range addrs {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("multiaddr %q: %w", s, err)
		}
		mas = append(mas, m)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, fmt.Errorf("bootstrap address: %w (want /ip4/ADDR/tcp/PORT/p2p/PEERID)", err)
	}
	return infos, nil
}

// HostConfig configures a node's libp2p host.
type HostConfig struct {
	Key    crypto.PrivKey
	Listen []string // multiaddrs; default /ip4/0.0.0.0/tcp/0
	PSK    pnet.PSK // fleet private network key; nil for an open network
	Gate   *Gate    // connection gater (allowlist); nil lets every peer connect
	Logger *slog.Logger
}

// defaultListen is where a host listens when told nothing.
const defaultListen = "/ip4/0.0.0.0/tcp/0"

// NewHost starts a libp2p host. With a PSK it runs TCP only, because libp2p
// private networks do not cover QUIC; without, QUIC listen addresses work too.
func NewHost(cfg HostConfig) (host.Host, error) {
	listen := cfg.Listen
	if len(listen) == 0 {
		listen = []string{defaultListen}
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Key),
		libp2p.ListenAddrStrings(listen...),
		wireOptions(),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.UserAgent("ballena"),
	}
	if cfg.Gate != nil {
		if id, err := peer.IDFromPrivateKey(cfg.Key); err == nil {
			cfg.Gate.setSelf(id)
		}
		opts = append(opts, libp2p.ConnectionGater(cfg.Gate))
	}
	if cfg.PSK != nil {
		for _, s := range listen {
			if m, err := ma.NewMultiaddr(s); err == nil {
				if _, err := m.ValueForProtocol(ma.P_QUIC_V1); err == nil {
					return nil, fmt.Errorf("listen %s: a fleet PSK works over TCP only; drop the QUIC address or the PSK", s)
				}
			}
		}
		// The private network is this package's pskConn under the TCP
		// transport, in place of libp2p.PrivateNetwork (see fastpath_psk.go).
		psk := cfg.PSK
		opts = append(opts, libp2p.Transport(func(u transport.Upgrader, rcmgr network.ResourceManager, shared *tcpreuse.ConnMgr) (*tcp.TcpTransport, error) {
			pu, err := newPSKUpgrader(u, psk)
			if err != nil {
				return nil, err
			}
			return tcp.NewTCPTransport(pu, rcmgr, shared)
		}))
	} else {
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport), libp2p.Transport(libp2pquic.NewTransport))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("libp2p host: %w", err)
	}
	return h, nil
}

// wireOptions are the muxer and security transports of a node's connections:
// TLS 1.3 (AES-GCM where the CPU has AES-NI) before Noise (ChaCha20), as libp2p
// orders them, with batched system calls under TLS, and yamux with large frames.
func wireOptions() libp2p.Option {
	return libp2p.ChainOptions(
		libp2p.Muxer(yamux.ID, bulkYamux()),
		libp2p.Security(libp2ptls.ID, newBatchedTLS),
		libp2p.Security(noise.ID, noise.New),
	)
}

// bulkYamux is libp2p's yamux with frames of up to 1 MiB instead of 64 KiB.
// The peer wire sends pieces of up to 1 MiB; each frame costs a copy into a
// pooled buffer, a hand-over to the session's send goroutine and a write to
// the security transport, so sixteen times fewer frames are that much less
// work. Receivers accept any frame their window allows: older nodes
// interoperate.
func bulkYamux() *yamux.Transport {
	cfg := *(*goyamux.Config)(yamux.DefaultTransport)
	cfg.MaxMessageSize = 1 << 20
	t := yamux.Transport(cfg)
	return &t
}

// FullAddrs returns the host's listen addresses with its /p2p/ID, ready for
// another node's --bootstrap.
func FullAddrs(h host.Host) []string {
	addrs, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
	if err != nil {
		return nil
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}

// ConnectAll dials every peer in parallel and returns how many answered, with
// the joined errors of the others.
func ConnectAll(ctx context.Context, h host.Host, peers []peer.AddrInfo) (int, error) {
	var (
		mu   sync.Mutex
		ok   int
		errs []error
		wg   sync.WaitGroup
	)
	for _, pi := range peers {
		if pi.ID == h.ID() {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			err := h.Connect(cctx, pi)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("connect %s: %w", pi.ID, err))
				return
			}
			ok++
		})
	}
	wg.Wait()
	return ok, errors.Join(errs...)
}
