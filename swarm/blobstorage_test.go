package swarm

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	g "github.com/anacrolix/generics"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

// openBlob opens s as a download does: reserve, then open.
func openBlob(t *testing.T, s blobStorage, info *metainfo.Info) storage.TorrentImpl {
	t.Helper()
	if !s.readOnly {
		fresh, err := reserve(s.path, info.Length)
		if err != nil {
			t.Fatal(err)
		}
		s.fresh = fresh
	}
	ti, err := s.OpenTorrent(context.Background(), info, metainfo.Hash{1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ti.Close() })
	return ti
}

func TestBlobStorageHashesWhatIsOnDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob")
	info := &metainfo.Info{PieceLength: 1 << 10, Length: 3<<10 + 100, Pieces: make([]byte, 4*20)}
	ti := openBlob(t, blobStorage{path: path, completion: storage.NewMapPieceCompletion()}, info)
	if st, err := os.Stat(path); err != nil || st.Size() != info.Length {
		t.Fatalf("staging file not allocated whole: %v %v", st, err)
	}
	piece := ti.Piece(info.Piece(1)).(blobPiece)
	data := make([]byte, 1<<10)
	rand.Read(data)
	if _, err := piece.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if got, err := piece.SelfHash(); err != nil || got != metainfo.Hash(sha1.Sum(data)) {
		t.Fatalf("SelfHash = %x, %v; want the hash of the write", got, err)
	}
	// Bytes changed behind the storage's back are what the next check sees.
	other, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	other.WriteAt([]byte{^data[0]}, info.PieceLength)
	other.Close()
	onDisk := append([]byte{^data[0]}, data[1:]...)
	if got, err := piece.SelfHash(); err != nil || got != metainfo.Hash(sha1.Sum(onDisk)) {
		t.Fatalf("SelfHash after a change on disk = %x, %v; want the hash of the disk", got, err)
	}

	last := ti.Piece(info.Piece(3)).(blobPiece)
	tail := make([]byte, 100)
	rand.Read(tail)
	if _, err := last.WriteAt(tail, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := last.WriteAt(tail[:10], 5); err != nil {
		t.Fatal(err)
	}
	want := append(append(tail[:5:5], tail[:10]...), tail[15:]...)
	if got, _ := last.SelfHash(); got != metainfo.Hash(sha1.Sum(want)) {
		t.Fatalf("SelfHash after a partial write = %x, want %x", got, sha1.Sum(want))
	}
	if _, err := last.WriteAt(tail, 1); err == nil {
		t.Fatal("write past the end of the piece accepted")
	}
	buf := make([]byte, 200)
	if n, err := last.ReadAt(buf, 0); n != 100 || err == nil {
		t.Fatalf("ReadAt past the blob's end = %d, %v; want 100, EOF", n, err)
	}
}

func TestBlobStorageCompletion(t *testing.T) {
	dir := t.TempDir()
	info := &metainfo.Info{PieceLength: 1 << 10, Length: 4 << 10, Pieces: make([]byte, 4*20)}
	pc := storage.NewMapPieceCompletion()
	pk := metainfo.PieceKey{InfoHash: metainfo.Hash{1}, Index: 2}
	// A completion left from a staging file that is gone must not count.
	pc.Set(pk, g.Some(true))
	s := blobStorage{path: filepath.Join(dir, "blob"), completion: pc}
	ti := openBlob(t, s, info)
	p := ti.Piece(info.Piece(2))
	if c := p.Completion(); !c.Ok || c.Complete {
		t.Fatalf("fresh file: completion %+v, want known incomplete", c)
	}
	if err := p.MarkComplete(); err != nil {
		t.Fatal(err)
	}
	if c := p.Completion(); !c.Complete {
		t.Fatalf("after MarkComplete: %+v", c)
	}
	ti.Close()
	// Reopened (a restart): the file is whole, so the recorded completion holds.
	ti = openBlob(t, s, info)
	if c := ti.Piece(info.Piece(2)).Completion(); !c.Ok || !c.Complete {
		t.Fatalf("after reopen: %+v, want complete", c)
	}
	if c := ti.Piece(info.Piece(1)).Completion(); c.Ok {
		t.Fatalf("unrecorded piece after reopen: %+v, want unknown (to be hashed)", c)
	}
}

func TestBlobStorageSeedIsReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(path, make([]byte, 2048), 0o444)
	info := &metainfo.Info{PieceLength: 1 << 10, Length: 2048, Pieces: make([]byte, 2*20)}
	ti := openBlob(t, blobStorage{path: path, readOnly: true, completion: storage.NewMapPieceCompletion()}, info)
	if _, err := ti.Piece(info.Piece(0)).WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("write to a seeded blob accepted")
	}
}

// A full disk fails the reservation with ENOSPC and leaves no staging file.
func TestReserveFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	path := filepath.Join(dir, "blob")
	info := &metainfo.Info{PieceLength: 1 << 20, Length: 8 << 20, Pieces: make([]byte, 8*20)}
	_, err := reserve(path, info.Length)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no room") {
		t.Fatalf("reserve on a full disk: %v, want a no-room error with ENOSPC", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("staging file left behind: %v", err)
	}
}
