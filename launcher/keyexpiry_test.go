package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"ballena.dev/signing"
)

// TestRestartAfterKeyExpiry: the publisher's key expires while a task runs.
// The task's restart goes on (its digest was verified here while the key was
// valid); a new launch, and a restart of a digest never verified here, are
// refused; a revocation then stops the restarts.
func TestRestartAfterKeyExpiry(t *testing.T) {
	var clock atomic.Int64 // offset from the real time
	now := func() time.Time { return time.Now().Add(time.Duration(clock.Load())) }
	var sv *StoreVerifier
	e := newEnv(t, func(c *Config) {
		sv = c.Verifier.(*StoreVerifier)
		sv.Now = now
	})
	notAfter := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	policy := fmt.Sprintf("threshold: 1\nkeys:\n  - path: release.pub\n    names: [\"*\"]\n    not_after: %q\n", notAfter)
	e.writePolicy(policy)
	ref := e.publishTask()
	// Another digest (the same binary with a byte more), stored, never verified here.
	other := filepath.Join(t.TempDir(), "task")
	b, err := os.ReadFile(taskBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	e.publish(other, "task", "1.0.1", artifact.KindWhale)

	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}, Restart: RestartAlways})
	poll.Until(t, 10*time.Second, "ready", func() bool { return strings.Contains(e.logs(tk.ID), "ready") })

	clock.Store(int64(2 * time.Hour)) // the key has expired
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.l.Start(ctx, TaskSpec{Artifact: ref, Args: []string{"exit", "0"}}); !errors.Is(err, signing.ErrKeyExpired) {
		t.Fatalf("a new launch with an expired key: %v; want refused as expired", err)
	}
	if _, err := sv.VerifyRestart(ctx, "task@1.0.1"); !errors.Is(err, signing.ErrKeyExpired) {
		t.Fatalf("restart of a digest never verified here: %v; want refused as expired", err)
	}

	pid := tk.PID
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil { // the task ends on its own
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "the restart", func() bool {
		g, _ := e.l.Get(tk.ID)
		return g.Restarts >= 1 && g.State == StateRunning && g.PID != pid
	})
	poll.Until(t, 10*time.Second, "ready again", func() bool { return strings.Count(e.logs(tk.ID), "ready") >= 2 })

	// Revocation stops everything at once, expired or not.
	if rt := e.l.RevokedTasks(); len(rt) != 0 {
		t.Fatalf("tasks reported revoked before any revocation: %+v", rt)
	}
	e.writePolicy(policy + "revoked: [\"" + keyIDOf(t, e.pubPath) + "\"]\n")
	rt := e.l.RevokedTasks()
	if len(rt) != 1 || rt[0].ID != tk.ID || !strings.Contains(rt[0].Revoked, "revoked") {
		t.Fatalf("revoked tasks %+v; want the running task, marked", rt)
	}
	g, _ := e.l.Get(tk.ID)
	if err := syscall.Kill(g.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	g = e.wait(tk.ID)
	if g.State != StateFailed || g.Exit == nil || !strings.Contains(g.Exit.Message, "revoked") || g.Restarts != 1 {
		t.Fatalf("after revocation: %s %+v restarts %d; want failed, revoked, no more restarts", g.State, g.Exit, g.Restarts)
	}
}
