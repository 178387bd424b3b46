package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// StoreVerifier verifies releases in the node's artifact store against a trust
// policy file, re-read on every verification so that a revocation or a new
// key takes effect at the next start.
//
// The key-expiry rule: a new launch needs a key valid now. A restart of a
// task (RestartVerifier) whose digest already passed verification on this
// node is not refused only because the key's validity window has closed since
// (or the clock has moved outside it): it is verified as of the time the
// digest was first verified here (see verifiedat.go). Everything else is
// checked as for a launch: signatures, scope, threshold, rollback, the blob's
// sha256, and revocation, which stops restarts at once.
type StoreVerifier struct {
	Store         *artifact.Store
	PolicyPath    string
	Policy        *signing.Policy // used instead of PolicyPath when set
	AllowRollback bool
	Now           func() time.Time // for tests; default time.Now

	mu sync.Mutex // Store.Verify records versions: one at a time
}

// RollbackVerifier verifies a task its placement service runs as a revert
// (TaskSpec.AllowRollback): the cell's admin consented, through `job revert`
// or the job's auto_revert, to an older version than this node verified
// before, as --allow-rollback does for a task run by hand. Every other check
// holds: signatures, scope, threshold, revocation, the blob's sha256.
type RollbackVerifier interface {
	VerifyRollback(ctx context.Context, ref string) (Artifact, error)
}

// VerifyRollback implements RollbackVerifier.
func (v *StoreVerifier) VerifyRollback(ctx context.Context, ref string) (Artifact, error) {
	return v.verifyWith(ctx, ref, time.Time{}, true)
}

// RestartVerifier is a Verifier with a rule of its own for restarts of a task
// that already ran; the launcher uses it when its Verifier has it.
type RestartVerifier interface {
	VerifyRestart(ctx context.Context, ref string) (Artifact, error)
}

// Verify implements Verifier with artifact.(*Store).Verify: the key must be
// valid now. It records when each digest first passed.
func (v *StoreVerifier) Verify(ctx context.Context, ref string) (Artifact, error) {
	return v.verify(ctx, ref, time.Time{})
}

// VerifyRestart verifies a restart: as Verify, except that a key that has
// expired since the digest was first verified on this node still counts,
// judged at that time. A revoked key, an untrusted one, a bad signature or a
// changed blob are refused as ever.
func (v *StoreVerifier) VerifyRestart(ctx context.Context, ref string) (Artifact, error) {
	art, err := v.verify(ctx, ref, time.Time{})
	if err == nil || !errors.Is(err, signing.ErrKeyExpired) {
		return art, err
	}
	r, perr := artifact.ParseRef(ref)
	if perr != nil {
		return Artifact{}, err
	}
	rel, _, rerr := v.Store.Release(r)
	if rerr != nil {
		return Artifact{}, err
	}
	first, ok, ferr := firstVerified(v.Store.DB(), rel.Digest)
	if ferr != nil || !ok {
		return Artifact{}, err
	}
	if art, err2 := v.verify(ctx, ref, first); err2 == nil {
		return art, nil
	}
	return Artifact{}, err
}

// policy is Policy, or the policy file read afresh.
func (v *StoreVerifier) policy() (*signing.Policy, error) {
	if v.Policy != nil {
		return v.Policy, nil
	}
	if _, err := os.Stat(v.PolicyPath); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no trust policy at %s: write one or pass --trust", ErrRefused, v.PolicyPath)
	}
	pol, err := signing.LoadPolicy(v.PolicyPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return pol, nil
}

func (v *StoreVerifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// verify checks ref against the policy as of at (zero: now) and, checked as
// of now, records the digest's first verification.
func (v *StoreVerifier) verify(ctx context.Context, ref string, at time.Time) (Artifact, error) {
	return v.verifyWith(ctx, ref, at, false)
}

func (v *StoreVerifier) verifyWith(ctx context.Context, ref string, at time.Time, allowRollback bool) (Artifact, error) {
	r, err := artifact.ParseRef(ref)
	if err != nil {
		return Artifact{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	pol, err := v.policy()
	if err != nil {
		return Artifact{}, err
	}
	now := at
	if now.IsZero() {
		now = v.now()
	}
	v.mu.Lock()
	rel, _, err := v.Store.Verify(ctx, r, pol, artifact.VerifyOptions{AllowRollback: v.AllowRollback || allowRollback, Now: now})
	v.mu.Unlock()
	switch {
	case errors.Is(err, artifact.ErrNotFound):
		return Artifact{}, fmt.Errorf("%s: %w: publish or fetch it first", ref, ErrNotFound)
	case err != nil:
		return Artifact{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if at.IsZero() {
		if err := recordVerified(v.Store.DB(), rel.Digest, now); err != nil {
			return Artifact{}, fmt.Errorf("verify %s: %w", ref, err)
		}
	}
	return Artifact{
		Name: rel.Name, Version: rel.Version, Kind: string(rel.Kind), Digest: rel.Digest,
		BlobPath: v.Store.BlobPath(rel.Digest), Entrypoint: rel.Entrypoint, Cmd: rel.Cmd,
		Env: rel.Env, WorkingDir: rel.WorkingDir,
	}, nil
}
