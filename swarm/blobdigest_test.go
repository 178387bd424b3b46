package swarm

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
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

// The sha1 check of the digest's next piece feeds the digest in the same
// read, and a piece that fails its check leaves no trace in it.
func TestBlobDigestFedByTheHashCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const pl = 64 << 10
	blob := make([]byte, 3*pl+5000)
	rand.Read(blob)
	info := &metainfo.Info{PieceLength: pl, Length: int64(len(blob))}
	for off := 0; off < len(blob); off += pl {
		sum := sha1.Sum(blob[off:min(off+pl, len(blob))])
		info.Pieces = append(info.Pieces, sum[:]...)
	}
	d := newBlobDigest()
	ti := openBlob(t, blobStorage{path: filepath.Join(t.TempDir(), "blob"), completion: storage.NewMapPieceCompletion(), digest: d}, info)
	next := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.next
	}
	p0 := ti.Piece(info.Piece(0)).(storage.SelfHashing)
	bad := append([]byte{^blob[0]}, blob[1:pl]...)
	ti.Piece(info.Piece(0)).WriteAt(bad, 0)
	if sum, err := p0.SelfHash(); err != nil || sum == info.Piece(0).V1Hash().Value {
		t.Fatalf("SelfHash of a bad piece = %x, %v", sum, err)
	}
	if n := next(); n != 0 {
		t.Fatalf("a piece that failed its check went into the digest (next %d)", n)
	}
	ti.Piece(info.Piece(0)).WriteAt(blob[:pl], 0)
	if sum, err := p0.SelfHash(); err != nil || sum != info.Piece(0).V1Hash().Value {
		t.Fatalf("SelfHash of the good piece = %x, %v", sum, err)
	}
	// Not marked complete, so the digest's own reader has not read it.
	if n := next(); n != 1 {
		t.Fatalf("the hash check did not feed the digest (next %d, want 1)", n)
	}
	for i := range info.NumPieces() {
		p := info.Piece(i)
		sp := ti.Piece(p)
		if i > 0 {
			sp.WriteAt(blob[p.Offset():p.Offset()+p.Length()], 0)
		}
		if err := sp.MarkComplete(); err != nil {
			t.Fatal(err)
		}
	}
	want := sha256.Sum256(blob)
	if sum, err := d.result(ctx); err != nil || sum != hex.EncodeToString(want[:]) {
		t.Fatalf("digest = %q, %v; want %x", sum, err, want)
	}
}
