package artifact

import (
	"context"
	"fmt"
	"time"

	"ballena.dev/signing"
)

// VerifyOptions tunes Store.Verify.
type VerifyOptions struct {
	AllowRollback bool      // an admin's explicit consent to run an older version
	Now           time.Time // zero means time.Now()
}

// VerifyEnvelope checks an envelope against the trust policy and returns the
// release it signs. It needs no blob: it is how a node judges an announcement.
func VerifyEnvelope(env *signing.Envelope, pol *signing.Policy, now time.Time) (Release, *signing.Verified, error) {
	if env == nil {
		return Release{}, nil, Tagged(signing.ErrMalformed, "verify: no envelope")
	}
	v, err := pol.Verify(env, now)
	if err != nil {
		return Release{}, nil, err
	}
	rel, err := ReleaseFromStatement(v.Statement)
	if err != nil {
		return Release{}, nil, fmt.Errorf("verify: %w", err)
	}
	return rel, v, nil
}

// Verify is the check before use: the blob still hashes to its digest, the
// envelope verifies against the policy for exactly this name, version and
// digest, and the version is not older than one verified before (unless
// allowed). On success the version is remembered for rollback protection.
func (s *Store) Verify(ctx context.Context, ref Ref, pol *signing.Policy, opts VerifyOptions) (Release, *signing.Verified, error) {
	stored, env, err := s.Release(ref)
	if err != nil {
		return Release{}, nil, err
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	rel, v, err := VerifyEnvelope(env, pol, now)
	if err != nil {
		return Release{}, nil, err // signing's errors already name the subject
	}
	if rel.Ref() != ref || rel.Digest != stored.Digest {
		return Release{}, nil, Tagged(signing.ErrSubjectMismatch, "verify %s: the envelope signs %s (sha256 %s), not this record",
			ref, rel.Ref(), short(rel.Digest))
	}
	if err := s.VerifyBlob(ctx, rel.Digest); err != nil {
		return Release{}, nil, fmt.Errorf("verify %s: %w", ref, err)
	}
	if err := signing.CheckRollback(s, rel.Name, rel.Version, opts.AllowRollback); err != nil {
		return Release{}, nil, fmt.Errorf("verify %s: %w", ref, err)
	}
	if err := s.RecordVersion(rel.Name, rel.Version); err != nil {
		return Release{}, nil, fmt.Errorf("verify %s: record version: %w", ref, err)
	}
	return rel, v, nil
}
