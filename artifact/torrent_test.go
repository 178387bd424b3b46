package artifact

import "testing"

// TestPieceLength: 256 KiB pieces until a blob would have more than 512 of
// them, then doubling, up to 4 MiB.
func TestPieceLength(t *testing.T) {
	const KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
	for _, tc := range []struct {
		size, want int64
	}{
		{1, 256 * KiB},
		{128 * MiB, 256 * KiB},         // 512 pieces
		{128*MiB + 256*KiB, 512 * KiB}, // would be 513
		{256 * MiB, 512 * KiB},         // 512
		{1 * GiB, 2 * MiB},             // 512
		{2 * GiB, 4 * MiB},             // 512
		{100 * GiB, 4 * MiB},           // 25,600: 4 MiB is the largest
	} {
		if got := PieceLength(tc.size); got != tc.want {
			t.Errorf("PieceLength(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}
