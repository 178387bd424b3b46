package swarm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"ballena.dev/artifact"
	"ballena.dev/swarm/internal/dirstore"
)

func newDirStore(t testing.TB, dir string) *dirstore.Store {
	s, err := dirstore.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// publish writes size random bytes into the store and returns their release.
func publish(t testing.TB, s BlobStore, size int64) artifact.Release {
	t.Helper()
	tmp := filepath.Join(s.TempDir(), "new")
	f, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	digest := hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(tmp, s.BlobPath(digest)); err != nil {
		t.Fatal(err)
	}
	return releaseOf(t, s.BlobPath(digest), digest)
}

func releaseOf(t testing.TB, path, digest string) artifact.Release {
	t.Helper()
	info, err := artifact.TorrentInfo(path, digest)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bencode.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	return artifact.Release{
		Name: "api", Version: "1.0.0", Kind: artifact.KindWhale,
		Digest: digest, Size: info.Length, PieceLength: info.PieceLength,
		InfoHash: metainfo.HashBytes(b).HexString(),
	}
}

// copyBlob puts a copy of another store's blob into s.
func copyBlob(t testing.TB, from, to BlobStore, digest string) {
	t.Helper()
	b, err := os.ReadFile(from.BlobPath(digest))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to.BlobPath(digest), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// newTestHost is a libp2p host on loopback TCP with its key in dir (so a
// restarted node keeps its peer ID).
func newTestHost(dir string) (host.Host, error) {
	kp := filepath.Join(dir, "host.key")
	var sk crypto.PrivKey
	if b, err := os.ReadFile(kp); err == nil {
		if sk, err = crypto.UnmarshalPrivateKey(b); err != nil {
			return nil, err
		}
	} else {
		if sk, _, err = crypto.GenerateEd25519Key(rand.Reader); err != nil {
			return nil, err
		}
		b, _ := crypto.MarshalPrivateKey(sk)
		if err := os.WriteFile(kp, b, 0o600); err != nil {
			return nil, err
		}
	}
	return libp2p.New(
		libp2p.Identity(sk),
		libp2p.NoTransports,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.DisableRelay(),
		wireOptions(), // the data path of a real node
	)
}

type testEngine struct {
	*Engine
	h     host.Host
	store *dirstore.Store
}

func newTestEngine(t testing.TB, cfg EngineConfig) *testEngine {
	t.Helper()
	dir := t.TempDir()
	var h host.Host
	if cfg.Host == nil && cfg.PlainListen == "" {
		var err error
		if h, err = newTestHost(dir); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		cfg.Host = h
	}
	st := newDirStore(t, filepath.Join(dir, "store"))
	cfg.DataDir = dir
	cfg.Store = st
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	e, err := NewEngine(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return &testEngine{Engine: e, h: h, store: st}
}

// introduce lets a dial b: libp2p needs b's addresses in a's peerstore.
func introduce(a host.Host, b peer.AddrInfo) {
	a.Peerstore().AddAddrs(b.ID, b.Addrs, time.Hour)
}

func addrInfo(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

func checkBlob(t testing.TB, s BlobStore, digest string) {
	t.Helper()
	got, err := dirstore.SHA256File(s.BlobPath(digest))
	if err != nil {
		t.Fatalf("blob not in store: %v", err)
	}
	if got != digest {
		t.Fatalf("blob sha256 %s, want %s", got, digest)
	}
}

func (e *Engine) transferTorrent(digest string) *torrent.Torrent {
	e.mu.Lock()
	defer e.mu.Unlock()
	if tr, ok := e.transfers[digest]; ok {
		return tr.t
	}
	return nil
}
