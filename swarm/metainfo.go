package swarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/artifact"
)

// MetaInfo returns a standard v1 .torrent for a blob this engine holds. Its
// announce URL is the engine's HTTP tracker, which points standard clients at
// the plain TCP listener (see tracker.go for why a tracker and not a web seed).
func (e *Engine) MetaInfo(rel artifact.Release) (*metainfo.MetaInfo, error) {
	if err := checkRelease(rel); err != nil {
		return nil, fmt.Errorf("torrent: %w", err)
	}
	b, err := e.infoBytes(context.Background(), rel)
	if err != nil {
		return nil, fmt.Errorf("torrent %s: %w", short(rel.Digest), err)
	}
	mi := &metainfo.MetaInfo{
		InfoBytes:    b,
		CreatedBy:    "ballena",
		CreationDate: rel.PublishedAt.Unix(),
		Comment:      rel.Ref().String(),
	}
	if u := e.TrackerURL(); u != "" {
		mi.Announce = u
		mi.AnnounceList = [][]string{{u}}
	}
	return mi, nil
}

// infoBytes returns the bencoded info dict of a blob in the store, from the cache
// or by hashing the blob, checked against rel.InfoHash.
func (e *Engine) infoBytes(ctx context.Context, rel artifact.Release) ([]byte, error) {
	ih := metainfo.NewHashFromHex(rel.InfoHash)
	if b, err := e.cachedInfo(ih); err == nil {
		return b, nil
	}
	if !e.cfg.Store.HasBlob(rel.Digest) {
		return nil, fmt.Errorf("blob %w", artifact.ErrNotFound)
	}
	info, err := artifact.TorrentInfo(e.cfg.Store.BlobPath(rel.Digest), rel.Digest)
	if err != nil {
		return nil, err
	}
	b, err := bencode.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("encode torrent info: %w", err)
	}
	if got := metainfo.HashBytes(b); got != ih {
		return nil, fmt.Errorf("torrent info of the stored blob has infohash %s, release says %s", got.HexString(), rel.InfoHash)
	}
	e.saveInfo(ih, b)
	return b, nil
}

func (e *Engine) infoPath(ih metainfo.Hash) string {
	return filepath.Join(e.cfg.DataDir, "bt", "info", ih.HexString())
}

// cachedInfo returns info bytes saved earlier, if they still hash to ih.
func (e *Engine) cachedInfo(ih metainfo.Hash) ([]byte, error) {
	b, err := os.ReadFile(e.infoPath(ih))
	if err != nil {
		return nil, err
	}
	if metainfo.HashBytes(b) != ih {
		return nil, errors.New("cached torrent info does not match its infohash")
	}
	return b, nil
}

func (e *Engine) saveInfo(ih metainfo.Hash, b []byte) {
	p := e.infoPath(ih)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		os.Rename(tmp, p)
	}
}
