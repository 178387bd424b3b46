package launcher

import (
	"context"
	"errors"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// A version older than one verified here is refused, unless the task is a
// revert the placement service marked (AllowRollback); the mark does not
// lower the node's record, and other checks still hold.
func TestRevertMayRollBack(t *testing.T) {
	e := newEnv(t, nil)
	bin := taskBinary(t)
	e.publish(bin, "task", "1.0.0", artifact.KindWhale)
	e.publish(bin, "task", "2.0.0", artifact.KindWhale)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tk := e.start(TaskSpec{Artifact: "task@2.0.0", Args: []string{"sleep", "60"}})
	if _, err := e.l.Start(ctx, TaskSpec{Artifact: "task@1.0.0", Args: []string{"sleep", "60"}}); !errors.Is(err, signing.ErrRollback) {
		t.Fatalf("start of an older version: %v, want a rollback refusal", err)
	}
	old := e.start(TaskSpec{Artifact: "task@1.0.0", Args: []string{"sleep", "60"}, AllowRollback: true})
	if old.Spec.Artifact != "task@1.0.0" || !old.Spec.AllowRollback {
		t.Fatalf("revert task %+v", old.Spec)
	}
	if v, ok, err := e.store.HighestVersion("task"); err != nil || !ok || v != "2.0.0" {
		t.Fatalf("highest version after the revert: %q %v %v, want 2.0.0 still", v, ok, err)
	}
	// The mark consents to an older version, not to an untrusted one.
	e.writePolicy("threshold: 1\nkeys: []\n")
	if _, err := e.l.Start(ctx, TaskSpec{Artifact: "task@1.0.0", Args: []string{"sleep", "60"}, AllowRollback: true}); !errors.Is(err, ErrRefused) {
		t.Fatalf("revert under a policy that trusts nobody: %v, want refused", err)
	}
	_ = tk
}
