// Package procs sizes a node's Go runtime (GOMAXPROCS) to the traffic its
// rate caps allow.
package procs

import (
	"os"
	"runtime"
)

// PerThread is the capped traffic (upload plus download, bytes per second) a
// node is given one Go thread for. One core moves more than this even when the
// VM is slow (about 280MiB/s into a leecher at 3.7 CPU-s per GiB).
const PerThread = 256 << 20

// ForCaps is how many threads a node needs to run its Go code to move what its
// caps allow, at most max; 0 when it is not capped both ways, or needs max.
//
// Each thread beyond that costs: when one goroutine readies another while a P
// is idle, the runtime wakes an idle thread to run it, and a capped node,
// mostly waiting, does so for nearly every message. With 8 leechers capped at
// 16MiB/s on 2 cores, one thread per node took 9-15% less CPU (README,
// benchmarks).
func ForCaps(upload, download int64, max int) int {
	if upload <= 0 || download <= 0 {
		return 0
	}
	n := int((upload + download + PerThread - 1) / PerThread)
	if n >= max {
		return 0
	}
	return n
}

// Set sizes this process's runtime to its caps (see ForCaps), unless the
// GOMAXPROCS environment variable already decided; it returns the threads set,
// or 0 where it left the runtime alone.
func Set(upload, download int64) int {
	if os.Getenv("GOMAXPROCS") != "" {
		return 0
	}
	n := ForCaps(upload, download, runtime.GOMAXPROCS(0))
	if n > 0 {
		runtime.GOMAXPROCS(n)
	}
	return n
}
