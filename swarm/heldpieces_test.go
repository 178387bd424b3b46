package swarm

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"fmt"
	"testing"
)

// TestHeldPiecesSum: hold keeps a copy of the piece and the sha1 of that
// copy, whatever the piece's length against the stride it hashes in, and a
// later write of the same piece replaces both.
func TestHeldPiecesSum(t *testing.T) {
	const pieceLength = 256 << 10
	for _, n := range []int{1, hashStride - 1, hashStride, hashStride + 1, 3*hashStride + 5, pieceLength} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			h := newHeldPieces(pieceLength)
			for round := range 2 {
				data := make([]byte, n)
				rand.Read(data)
				want := bytes.Clone(data)
				if h.hold(7, data) == nil {
					t.Fatal("no buffer held")
				}
				rand.Read(data) // the caller reuses its buffer: the held copy must not follow
				if round == 0 {
					continue // overwritten next round, as a duplicate write of the piece does
				}
				b, sum, ok := h.take(7)
				if !ok {
					t.Fatal("take found nothing held")
				}
				if !bytes.Equal(b, want) {
					t.Fatal("held bytes differ from the last write")
				}
				if sum != sha1.Sum(want) {
					t.Fatalf("held sum %x, want the sha1 of the last write %x", sum, sha1.Sum(want))
				}
				h.release(b)
			}
			if _, _, ok := h.take(7); ok {
				t.Fatal("a piece taken is still held")
			}
		})
	}
}
