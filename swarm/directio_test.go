package swarm

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// openTestDIO makes a file of size zero bytes and opens it for direct I/O; with
// direct false, direct I/O is turned off as on a filesystem that refuses it.
func openTestDIO(t *testing.T, size int64, direct bool) (*dioFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blob")
	if _, err := reserve(path, size); err != nil {
		t.Fatal(err)
	}
	d, err := openDIO(path, os.O_RDWR, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if direct && d.direct == nil {
		t.Skipf("%s refuses O_DIRECT", path)
	}
	if !direct {
		d.direct.Close()
		d.direct, d.mapped = nil, nil
	}
	return d, path
}

// Every write and read, aligned or not, in memory and on disk, lands the same
// bytes as plain I/O would, and reads across the end of the file stop at it.
func TestDirectIO(t *testing.T) {
	const size = 3<<20 + 1234 // not a multiple of the block or of a bounce buffer
	for _, direct := range []bool{true, false} {
		d, path := openTestDIO(t, size, direct)
		want := make([]byte, size)
		writes := []struct {
			off, n    int64
			unaligned bool // the buffer starts off a block boundary
		}{
			{0, 1 << 20, false},            // one whole aligned chunk
			{1 << 20, 1 << 20, true},       // the same through the bounce buffer
			{2 << 20, 1<<20 + 1234, false}, // the blob's last piece: an unaligned tail
			{4096, 100, false},             // shorter than a block
			{5000, 9000, false},            // off a block boundary
			{3 << 20, 1234, true},          // the tail alone
			{8192, 3 * maxChunk / 2, true}, // longer than a bounce buffer
		}
		for _, w := range writes {
			b := make([]byte, w.n+1)
			if w.unaligned {
				b = b[1:]
			} else {
				b = alignedBuf(int(w.n))
			}
			rand.Read(b)
			copy(want[w.off:], b)
			if n, err := d.WriteAt(b, w.off); err != nil || n != len(b) {
				t.Fatalf("direct=%v: WriteAt(%d bytes at %d) = %d, %v", direct, len(b), w.off, n, err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("direct=%v: file differs from what was written (%v)", direct, err)
		}
		// The pages are cached now (ReadFile): drop them so reads go to disk.
		dropCache(t, path)
		reads := []struct{ off, n int64 }{
			{0, size},
			{4096, 4096},
			{1, 1 << 20},
			{12345, 3 * maxChunk / 2},
			{size - 10, 10},
			{3 << 20, 1234},
		}
		for _, r := range reads {
			for _, unaligned := range []bool{false, true} {
				b := alignedBuf(int(r.n) + 1)
				if unaligned {
					b = b[1:]
				} else {
					b = b[:r.n]
				}
				n, err := d.ReadAt(b, r.off)
				if err != nil || n != int(r.n) || !bytes.Equal(b[:n], want[r.off:r.off+r.n]) {
					t.Fatalf("direct=%v: ReadAt(%d at %d, unaligned %v) = %d, %v, equal %v", direct, r.n, r.off, unaligned, n, err, bytes.Equal(b[:n], want[r.off:r.off+int64(n)]))
				}
			}
		}
		// Short reads at the end of the file.
		for _, off := range []int64{size - 100, 3 << 20, size} {
			b := alignedBuf(8192)
			n, err := d.ReadAt(b, off)
			if n != int(size-off) || !errors.Is(err, io.EOF) || !bytes.Equal(b[:n], want[off:]) {
				t.Fatalf("direct=%v: ReadAt(8192 at %d) = %d, %v; want %d, EOF", direct, off, n, err, size-off)
			}
		}
	}
}

// Direct writes leave nothing in the page cache, and reads of cached pages
// are answered from it.
func TestDirectIOBypassesTheCache(t *testing.T) {
	d, path := openTestDIO(t, 2<<20, true)
	b := alignedBuf(1 << 20)
	rand.Read(b)
	if _, err := d.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(b[1:], 1<<20+1); err != nil { // unaligned: the page cache
		t.Fatal(err)
	}
	if d.cached(0, 1<<20) {
		t.Fatal("a direct write left its pages in the page cache")
	}
	if !d.cached(1<<20+4096, 4096) {
		t.Fatal("mincore does not see a page an ordinary write cached")
	}
	dropCache(t, path)
	r := alignedBuf(1 << 20)
	if _, err := d.ReadAt(r, 0); err != nil || !bytes.Equal(r, b) {
		t.Fatalf("direct read: %v", err)
	}
	if d.cached(0, 1<<20) {
		t.Fatal("a direct read brought its pages into the page cache")
	}
	if _, err := os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	if !d.cached(0, 2<<20) {
		t.Fatal("pages read through the page cache are not reported cached")
	}
}

// dropCache evicts path's pages from the page cache.
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := fadviseDontNeed(f); err != nil {
		t.Fatal(err)
	}
}

func fadviseDontNeed(f *os.File) error {
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
