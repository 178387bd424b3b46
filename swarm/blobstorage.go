package swarm

import (
	"context"
	"crypto/sha1"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"

	g "github.com/anacrolix/generics"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"golang.org/x/sys/unix"
)

// blobStorage keeps a single-file torrent in one file, opened once: a seed
// reads the store's blob, a download writes its staging file. It replaces
// anacrolix's file storage, which opens and closes the file for every chunk
// read or written, re-reads every piece from disk to hash it, reads the bbolt
// completion db on every lookup, and syncs every verified piece: together more
// CPU than the transfer itself on a busy node.
//
// Piece data moves by direct I/O where it can (see dioFile), and a download
// hashes its whole blob as pieces pass their checks (see blobDigest).
type blobStorage struct {
	path       string
	readOnly   bool // seeding a blob the store verified: never written
	fresh      bool // a new staging file: recorded completion is stale
	completion storage.PieceCompletion
	digest     *blobDigest // a download's whole-blob sha256; nil when seeding
}

func (s blobStorage) OpenTorrent(_ context.Context, info *metainfo.Info, ih metainfo.Hash) (storage.TorrentImpl, error) {
	if info.IsDir() {
		return storage.TorrentImpl{}, fmt.Errorf("open %s: a blob torrent has one file", ih.HexString())
	}
	flag := os.O_RDWR // the file is made by reserve
	if s.readOnly {
		flag = os.O_RDONLY
	}
	f, err := openDIO(s.path, flag, info.Length)
	if err != nil {
		return storage.TorrentImpl{}, fmt.Errorf("open %s: %w", ih.HexString(), err)
	}
	t := &blobTorrent{f: f, ih: ih, s: s, info: info, done: make(map[int]bool), closed: make(chan struct{})}
	if !s.readOnly {
		st, err := f.f.Stat()
		if err != nil {
			f.Close()
			return storage.TorrentImpl{}, fmt.Errorf("open %s: %w", ih.HexString(), err)
		}
		// A staging file shorter than the blob was never fully reserved: any
		// completion recorded for it belongs to an earlier file that is gone.
		t.fresh = s.fresh || st.Size() < info.Length
		if st.Size() != info.Length {
			f.Close()
			return storage.TorrentImpl{}, fmt.Errorf("open %s: staging file holds %d bytes, the torrent %d", ih.HexString(), st.Size(), info.Length)
		}
		t.held = newHeldPieces(info.PieceLength)
		t.writes = make([]atomic.Uint32, info.NumPieces())
		if s.digest != nil {
			s.digest.release = t.held.release
			s.digest.window = t.held.max / 2
			go s.digest.run(t, t.closed)
		}
	}
	return storage.TorrentImpl{Piece: t.piece, Close: t.close}, nil
}

// reserve creates the staging file at path, or keeps the one a crash left,
// with room for the whole blob, so a full disk fails a download at its start
// (ENOSPC) instead of at some piece half-way. fresh reports that no earlier
// download's pieces can be in it. A file it cannot make whole is removed if
// reserve created it.
func reserve(path string, size int64) (fresh bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	fresh = st.Size() != size
	err = unix.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		err = f.Truncate(size)
	}
	if err != nil {
		if st.Size() == 0 {
			os.Remove(path)
		}
		return false, fmt.Errorf("no room for %d bytes at %s: %w", size, path, err)
	}
	return fresh, nil
}

type blobTorrent struct {
	f      *dioFile
	ih     metainfo.Hash
	s      blobStorage
	info   *metainfo.Info
	fresh  bool          // no earlier download's pieces are in the file
	closed chan struct{} // stops the digest
	once   sync.Once
	held   *heldPieces     // a download's pieces in memory until checked; nil when seeding
	wlocks [16]sync.Mutex  // a piece's writes, by index: the disk and held agree
	writes []atomic.Uint32 // writes to each piece, to tell held bytes from stale

	mu   sync.Mutex
	done map[int]bool // completion known in this process
}

func (t *blobTorrent) close() error {
	err := os.ErrClosed
	t.once.Do(func() {
		close(t.closed)
		err = t.f.Close()
	})
	return err
}

// numPieces, complete and pieceReader give blobDigest the pieces to hash.
func (t *blobTorrent) numPieces() int { return t.info.NumPieces() }

func (t *blobTorrent) complete(i int) bool {
	c := t.piece(t.info.Piece(i)).Completion()
	return c.Ok && c.Complete
}

func (t *blobTorrent) pieceReader(i int) io.Reader {
	p := t.info.Piece(i)
	return io.NewSectionReader(t.f, p.Offset(), p.Length())
}

func (t *blobTorrent) piece(p metainfo.Piece) storage.PieceImpl {
	return blobPiece{t: t, index: p.Index(), off: p.Offset(), length: p.Length()}
}

// blobPiece is one piece of a blobTorrent. It implements storage.SelfHashing,
// reading the piece by direct I/O: hashing runs on anacrolix's hasher
// goroutines instead of the connection's reader, which hashing the bytes as
// they were written would stall.
type blobPiece struct {
	t      *blobTorrent
	index  int
	off    int64
	length int64
}

func (p blobPiece) key() metainfo.PieceKey {
	return metainfo.PieceKey{InfoHash: p.t.ih, Index: p.index}
}

func (p blobPiece) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.length {
		return 0, io.EOF
	}
	short := off+int64(len(b)) > p.length
	if short {
		b = b[:p.length-off]
	}
	n, err := p.t.f.ReadAt(b, p.off+off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

func (p blobPiece) WriteAt(b []byte, off int64) (int, error) {
	if p.t.s.readOnly {
		return 0, fmt.Errorf("write piece %d of %s: seeding a stored blob read-only", p.index, p.t.ih.HexString())
	}
	if off < 0 || off+int64(len(b)) > p.length {
		return 0, fmt.Errorf("write piece %d of %s: %d bytes at %d overrun the piece", p.index, p.t.ih.HexString(), len(b), off)
	}
	l := &p.t.wlocks[p.index%len(p.t.wlocks)]
	l.Lock()
	src := b
	if off == 0 && int64(len(b)) == p.length {
		if buf := p.t.held.hold(p.index, b); buf != nil {
			src = buf // block-aligned: no bounce for direct I/O
		}
	} else {
		p.t.held.drop(p.index)
	}
	n, err := p.t.f.WriteAt(src, p.off+off)
	if err != nil {
		p.t.held.drop(p.index)
	}
	l.Unlock()
	p.t.writes[p.index].Add(1)
	if d := p.t.s.digest; d != nil {
		d.written(p.index)
	}
	return n, err
}

// SelfHash returns the sha1 of the piece as it was written: the one taken as
// its bytes were held, if they still are, else one read from the disk. A
// download's next piece for its whole-blob sha256 goes to that hash as well;
// a later one that passes is handed to it held.
func (p blobPiece) SelfHash() (metainfo.Hash, error) {
	var mem []byte
	var gen uint32
	var out metainfo.Hash
	if p.t.held != nil {
		gen = p.t.writes[p.index].Load()
		var ok bool
		if mem, out, ok = p.t.held.take(p.index); !ok {
			mem = nil
		}
	}
	d := p.t.s.digest
	var whole hash.Hash
	claimed := false
	if d != nil {
		whole, claimed = d.claim(p.index)
	}
	var err error
	if mem != nil {
		if claimed {
			whole.Write(mem)
		}
	} else {
		h := sha1.New()
		var w io.Writer = h
		if claimed {
			w = io.MultiWriter(h, whole)
		}
		_, err = p.WriteTo(w)
		h.Sum(out[:0])
	}
	want := p.t.info.Piece(p.index).V1Hash()
	passed := err == nil && want.Ok && want.Value == out
	if claimed {
		d.settle(passed)
	}
	if mem != nil {
		if passed && !claimed && d != nil {
			d.offer(p.index, mem, func() bool { return p.t.writes[p.index].Load() == gen })
		} else {
			p.t.held.release(mem)
		}
	}
	if err != nil {
		return metainfo.Hash{}, fmt.Errorf("hash piece %d of %s: %w", p.index, p.t.ih.HexString(), err)
	}
	return out, nil
}

// WriteTo writes the piece to w in as few reads as a pooled, aligned 1 MiB
// buffer allows: each read goes straight to the disk.
func (p blobPiece) WriteTo(w io.Writer) (int64, error) {
	bp := bounces.Get().(*[]byte)
	defer bounces.Put(bp)
	return io.CopyBuffer(w, io.NewSectionReader(p.t.f, p.off, p.length), *bp)
}

func (p blobPiece) MarkComplete() error    { return p.mark(true) }
func (p blobPiece) MarkNotComplete() error { return p.mark(false) }

func (p blobPiece) mark(complete bool) error {
	if err := p.t.s.completion.Set(p.key(), g.Some(complete)); err != nil {
		return err
	}
	p.t.mu.Lock()
	p.t.done[p.index] = complete
	p.t.mu.Unlock()
	if d := p.t.s.digest; d != nil && complete {
		d.poke()
	}
	return nil
}

// Completion answers from memory once known: anacrolix asks for it far more
// often than it changes, and a bbolt read transaction per ask adds up.
func (p blobPiece) Completion() storage.Completion {
	p.t.mu.Lock()
	c, ok := p.t.done[p.index]
	p.t.mu.Unlock()
	if ok {
		return storage.Completion{Ok: true, Complete: c}
	}
	if p.t.fresh {
		return storage.Completion{Ok: true, Complete: false}
	}
	got, err := p.t.s.completion.Get(p.key())
	if err != nil {
		return storage.Completion{Err: err}
	}
	if got.Ok {
		p.t.mu.Lock()
		if _, set := p.t.done[p.index]; !set {
			p.t.done[p.index] = got.Complete
		}
		p.t.mu.Unlock()
	}
	return got
}
