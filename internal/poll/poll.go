// Package poll waits, in tests, for effects that offer no event to await:
// another process's state, a mesh forming, a background fetch.
package poll

import (
	"testing"
	"time"
)

// every is how often Until asks: often enough to add little to a test, seldom
// enough that a condition calling a local API costs nothing to speak of.
const every = 20 * time.Millisecond

// Until asks cond until it holds, and fails t once d has passed without it.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(every)
	}
}
