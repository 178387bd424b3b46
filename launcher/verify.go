package launcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// StoreVerifier verifies releases in the node's artifact store against a trust
// policy file, re-read on every verification so that a revocation or a new
// key takes effect at the next start.
type StoreVerifier struct {
	Store         *artifact.Store
	PolicyPath    string
	Policy        *signing.Policy // used instead of PolicyPath when set
	AllowRollback bool

	mu sync.Mutex // Store.Verify records versions: one at a time
}

// Verify implements Verifier with artifact.(*Store).Verify.
func (v *StoreVerifier) Verify(ctx context.Context, ref string) (Artifact, error) {
	r, err := artifact.ParseRef(ref)
	if err != nil {
		return Artifact{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	pol := v.Policy
	if pol == nil {
		if _, err := os.Stat(v.PolicyPath); errors.Is(err, os.ErrNotExist) {
			return Artifact{}, fmt.Errorf("%w: no trust policy at %s: write one or pass --trust", ErrRefused, v.PolicyPath)
		}
		pol, err = signing.LoadPolicy(v.PolicyPath)
		if err != nil {
			return Artifact{}, fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	v.mu.Lock()
	rel, _, err := v.Store.Verify(ctx, r, pol, artifact.VerifyOptions{AllowRollback: v.AllowRollback})
	v.mu.Unlock()
	switch {
	case errors.Is(err, artifact.ErrNotFound):
		return Artifact{}, fmt.Errorf("%s: %w: publish or fetch it first", ref, ErrNotFound)
	case err != nil:
		return Artifact{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return Artifact{
		Name: rel.Name, Version: rel.Version, Kind: string(rel.Kind), Digest: rel.Digest,
		BlobPath: v.Store.BlobPath(rel.Digest), Entrypoint: rel.Entrypoint, Cmd: rel.Cmd,
		Env: rel.Env, WorkingDir: rel.WorkingDir,
	}, nil
}
