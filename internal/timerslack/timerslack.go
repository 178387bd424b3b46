// Package timerslack sets how late Linux may wake this process's threads from
// timed sleeps, so that wake-ups close together coalesce.
//
// A busy Go process wakes often for nothing: each time it leaves idle and makes a
// system call, the runtime's sysmon thread restarts sleeping 20µs at a time for at
// least a millisecond. A node woken by the network thousands of times a second (a
// capped transfer, a swarm) keeps sysmon at 20µs for good, and the kernel's
// default slack (50µs) coalesces little of it. With 1ms, ballena node used 24%
// less CPU per GiB in a 16-leecher swarm on 2 cores (README, benchmarks).
package timerslack

import "time"

// Default is the slack ballena node runs with. It costs a timer at most this
// much lateness; the node's timers (rate limits, keep-alives, heartbeats) are
// all far coarser.
const Default = time.Millisecond
