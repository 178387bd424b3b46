package swarm

import "testing"

// TestFetchChunkSize: half a piece, within 256 KiB and 1 MiB, never more than
// the piece.
func TestFetchChunkSize(t *testing.T) {
	const KiB, MiB = 1 << 10, 1 << 20
	for _, tc := range []struct {
		piece, want int64
	}{
		{0, 0}, // anacrolix's default
		{16 * KiB, 16 * KiB},
		{256 * KiB, 256 * KiB},
		{512 * KiB, 256 * KiB},
		{1 * MiB, 512 * KiB},
		{2 * MiB, 1 * MiB},
		{4 * MiB, 1 * MiB},
	} {
		if got := fetchChunkSize(tc.piece); int64(got) != tc.want {
			t.Errorf("fetchChunkSize(%d) = %d, want %d", tc.piece, got, tc.want)
		}
	}
}
