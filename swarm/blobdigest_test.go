package swarm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

// The digest of a download is the sha256 of the bytes on disk after their
// last write, whatever order pieces complete in, across a restart, and after a
// piece it had read is written again.
func TestBlobDigest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const pl = 64 << 10
	info := &metainfo.Info{PieceLength: pl, Length: 5*pl + 777, Pieces: make([]byte, 6*20)}
	blob := make([]byte, info.Length)
	rand.Read(blob)
	path := filepath.Join(t.TempDir(), "blob")
	pc := storage.NewMapPieceCompletion()
	d := newBlobDigest()
	ti := openBlob(t, blobStorage{path: path, completion: pc, digest: d}, info)
	land := func(ti storage.TorrentImpl, i int) {
		t.Helper()
		p := info.Piece(i)
		sp := ti.Piece(p)
		if _, err := sp.WriteAt(blob[p.Offset():p.Offset()+p.Length()], 0); err != nil {
			t.Fatal(err)
		}
		if err := sp.MarkComplete(); err != nil {
			t.Fatal(err)
		}
	}
	want := func() string {
		s := sha256.Sum256(blob)
		return hex.EncodeToString(s[:])
	}

	// Not every piece: the digest is not ready.
	for _, i := range []int{3, 0, 4} {
		land(ti, i)
	}
	early, stop := context.WithCancel(ctx)
	stop()
	if sum, err := d.result(early); !errors.Is(err, context.Canceled) {
		t.Fatalf("digest with pieces 1, 2, 5 missing = %q, %v; want to wait", sum, err)
	}

	// A restart: the pieces verified before it are read from disk.
	ti.Close()
	d = newBlobDigest()
	ti = openBlob(t, blobStorage{path: path, completion: pc, digest: d}, info)
	for _, i := range []int{5, 1, 2} {
		land(ti, i)
	}
	if sum, err := d.result(ctx); err != nil || sum != want() {
		t.Fatalf("digest = %q, %v; want %s", sum, err, want())
	}

	// Piece 1 rewritten (a re-verify found it bad and it came again): the
	// digest starts over and describes the new bytes.
	p1 := info.Piece(1)
	rand.Read(blob[p1.Offset() : p1.Offset()+p1.Length()])
	if err := ti.Piece(p1).MarkNotComplete(); err != nil {
		t.Fatal(err)
	}
	land(ti, 1)
	if sum, err := d.result(ctx); err != nil || sum != want() {
		t.Fatalf("digest after a rewrite = %q, %v; want %s", sum, err, want())
	}

	// Closed storage: whoever waits hears so.
	ti.Close()
	d2 := newBlobDigest()
	ti = openBlob(t, blobStorage{path: path, completion: storage.NewMapPieceCompletion(), digest: d2}, info)
	ti.Close()
	if _, err := d2.result(ctx); !errors.Is(err, errDigestStopped) {
		t.Fatalf("digest of closed storage: %v, want %v", err, errDigestStopped)
	}
}
