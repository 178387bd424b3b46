package swarm

import "sync"

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
	held map[int][]byte
	free [][]byte
	made int
}

func newHeldPieces(pieceLength int64) *heldPieces {
	return &heldPieces{size: int(pieceLength), max: max(4, holdBudget/int(pieceLength)), held: make(map[int][]byte)}
}

// hold copies b, the whole of piece i, into a buffer and keeps it as the
// piece's bytes; it returns the copy, block-aligned for direct I/O, or nil if
// no buffer is free.
func (h *heldPieces) hold(i int, b []byte) []byte {
	h.mu.Lock()
	buf := h.getLocked()
	if old, ok := h.held[i]; ok {
		h.putLocked(old)
		delete(h.held, i)
	}
	h.mu.Unlock()
	if buf == nil {
		return nil
	}
	buf = buf[:copy(buf, b)]
	h.mu.Lock()
	if old, ok := h.held[i]; ok { // a concurrent write of the same piece
		h.putLocked(old)
	}
	h.held[i] = buf
	h.mu.Unlock()
	return buf
}

// drop forgets piece i's bytes: it was written in part.
func (h *heldPieces) drop(i int) {
	h.mu.Lock()
	if old, ok := h.held[i]; ok {
		h.putLocked(old)
		delete(h.held, i)
	}
	h.mu.Unlock()
}

// take hands piece i's bytes to the caller, who must release them; nil if it
// does not hold them.
func (h *heldPieces) take(i int) []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, ok := h.held[i]
	if ok {
		delete(h.held, i)
	}
	return b
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
