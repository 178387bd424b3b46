package swarm

import (
	"crypto/sha1"
	"sync"
)

// holdBudget is the memory a download may spend keeping piece bytes it wrote
// (see heldPieces).
const holdBudget = 16 << 20

// heldPieces keeps the bytes of a download's whole-piece writes until the
// piece's sha1 check, and verified pieces until the blob's sha256 gets to
// them, so that neither reads the disk again: each such read is a system call
// that blocks, a context switch, and on a VM an exit to the hypervisor.
//
// Its buffers are few and reused (a fresh one would cost a first touch of
// every page). When they are all in use, a write is not held and the checks
// read the disk as before.
type heldPieces struct {
	size int // bytes in a buffer: the torrent's piece length
	max  int // buffers it may make

	mu   sync.Mutex
	held map[int]heldPiece
	free [][]byte
	made int
}

// heldPiece is a piece's bytes and their sha1.
type heldPiece struct {
	b   []byte
	sum [sha1.Size]byte
}

// hashStride is how much hold copies before it hashes what it copied: small
// enough that the sha1 reads the bytes from the L1 cache the copy left them
// in. Hashed later, when the piece is checked, a 256 KiB piece comes from
// memory again, and with many transfers on a core that read costs as much
// as the sha1 itself.
const hashStride = 32 << 10

func newHeldPieces(pieceLength int64) *heldPieces {
	return &heldPieces{size: int(pieceLength), max: max(4, holdBudget/int(pieceLength)), held: make(map[int]heldPiece)}
}

// hold copies b, the whole of piece i, into a buffer and keeps it as the
// piece's bytes, with their sha1 taken as they are copied; it returns the
// copy, block-aligned for direct I/O, or nil if no buffer is free.
func (h *heldPieces) hold(i int, b []byte) []byte {
	h.mu.Lock()
	buf := h.getLocked()
	if old, ok := h.held[i]; ok {
		h.putLocked(old.b)
		delete(h.held, i)
	}
	h.mu.Unlock()
	if buf == nil {
		return nil
	}
	buf = buf[:len(b)]
	d := sha1.New()
	for off := 0; off < len(b); off += hashStride {
		end := min(off+hashStride, len(b))
		copy(buf[off:end], b[off:end])
		d.Write(buf[off:end])
	}
	hp := heldPiece{b: buf}
	d.Sum(hp.sum[:0])
	h.mu.Lock()
	if old, ok := h.held[i]; ok { // a concurrent write of the same piece
		h.putLocked(old.b)
	}
	h.held[i] = hp
	h.mu.Unlock()
	return buf
}

// drop forgets piece i's bytes: it was written in part.
func (h *heldPieces) drop(i int) {
	h.mu.Lock()
	if old, ok := h.held[i]; ok {
		h.putLocked(old.b)
		delete(h.held, i)
	}
	h.mu.Unlock()
}

// take hands piece i's bytes and their sha1 to the caller, who must release
// the bytes; ok is false if it does not hold them.
func (h *heldPieces) take(i int) (b []byte, sum [sha1.Size]byte, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hp, ok := h.held[i]
	if ok {
		delete(h.held, i)
	}
	return hp.b, hp.sum, ok
}

// release returns a buffer from take.
func (h *heldPieces) release(b []byte) {
	h.mu.Lock()
	h.putLocked(b)
	h.mu.Unlock()
}

func (h *heldPieces) getLocked() []byte {
	if n := len(h.free); n > 0 {
		b := h.free[n-1]
		h.free = h.free[:n-1]
		return b[:cap(b)]
	}
	if h.made < h.max {
		h.made++
		return alignedBuf(h.size)
	}
	return nil
}

func (h *heldPieces) putLocked(b []byte) { h.free = append(h.free, b) }
