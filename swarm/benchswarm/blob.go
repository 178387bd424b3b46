package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/artifact"
	"ballena.dev/swarm/internal/dirstore"
)

// makeBlob writes F random bytes as the seed's blob and returns its release.
func makeBlob(dir string, F int64) (string, artifact.Release, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o700); err != nil {
		return "", artifact.Release{}, err
	}
	tmp := filepath.Join(dir, "blob.tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return "", artifact.Release{}, err
	}
	var seed [32]byte
	rand.Read(seed[:])
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), chachaReader{mrand.NewChaCha8(seed)}, F); err != nil {
		f.Close()
		return "", artifact.Release{}, err
	}
	if err := f.Close(); err != nil {
		return "", artifact.Release{}, err
	}
	digest := hex.EncodeToString(h.Sum(nil))
	blob := filepath.Join(dir, "blobs", digest)
	if err := os.Rename(tmp, blob); err != nil {
		return "", artifact.Release{}, err
	}
	info, err := artifact.TorrentInfo(blob, digest)
	if err != nil {
		return "", artifact.Release{}, err
	}
	b, err := bencode.Marshal(info)
	if err != nil {
		return "", artifact.Release{}, err
	}
	return blob, artifact.Release{
		Name: "bench", Version: "1.0.0", Kind: artifact.KindWhale,
		Digest: digest, Size: F, PieceLength: info.PieceLength,
		InfoHash: metainfo.HashBytes(b).HexString(), PublishedAt: time.Now(),
	}, nil
}

type chachaReader struct{ c *mrand.ChaCha8 }

func (r chachaReader) Read(p []byte) (int, error) { return r.c.Read(p) }

func verifyBlob(path, digest string) error {
	got, err := dirstore.SHA256File(path)
	if err != nil {
		return fmt.Errorf("leecher has no blob: %w", err)
	}
	if got != digest {
		return fmt.Errorf("%s has sha256 %s, want %s", path, got, digest)
	}
	return nil
}
