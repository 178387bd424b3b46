package procs

import (
	"runtime"
	"testing"
)

func TestForCaps(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		up, down  int64
		max, want int
	}{
		{0, 0, 8, 0},               // not capped: every core
		{16 * mib, 0, 8, 0},        // capped one way only
		{0, 16 * mib, 8, 0},        // the other way only
		{16 * mib, 16 * mib, 8, 1}, // the benchmarks' swarm
		{128 * mib, 128 * mib, 8, 1},
		{128 * mib, 129 * mib, 8, 2},
		{1 << 30, 1 << 30, 4, 0}, // needs every core there is
		{16 * mib, 16 * mib, 1, 0},
	} {
		if got := ForCaps(tc.up, tc.down, tc.max); got != tc.want {
			t.Errorf("ForCaps(%d, %d, %d) = %d, want %d", tc.up, tc.down, tc.max, got, tc.want)
		}
	}
}

func TestSet(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	t.Setenv("GOMAXPROCS", "2")
	if n := Set(16<<20, 16<<20); n != 0 || runtime.GOMAXPROCS(0) != orig {
		t.Errorf("under GOMAXPROCS=2: Set = %d, runtime at %d; want 0 and %d untouched", n, runtime.GOMAXPROCS(0), orig)
	}
	if orig < 2 {
		t.Skip("one thread already")
	}
	t.Setenv("GOMAXPROCS", "")
	if n := Set(16<<20, 16<<20); n != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Errorf("capped at 16MiB/s both ways: Set = %d, runtime at %d; want 1 and 1", n, runtime.GOMAXPROCS(0))
	}
}
