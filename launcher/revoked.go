package launcher

import (
	"errors"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// RevocationChecker is a Verifier that can tell, without re-hashing a blob,
// whether the key behind a release has been revoked. The launcher asks it
// about every live task when it lists them, so a revocation shows on the
// tasks it can no longer restart.
type RevocationChecker interface {
	Revoked(ref string) (reason string, revoked bool)
}

// Revoked says whether ref's envelope is now refused for a revoked key.
func (v *StoreVerifier) Revoked(ref string) (string, bool) {
	r, err := artifact.ParseRef(ref)
	if err != nil {
		return "", false
	}
	pol, err := v.policy()
	if err != nil {
		return "", false
	}
	_, env, err := v.Store.Release(r)
	if err != nil {
		return "", false
	}
	if _, _, err := artifact.VerifyEnvelope(env, pol, v.now()); errors.Is(err, signing.ErrRevokedKey) {
		return err.Error(), true
	}
	return "", false
}

// withRevocation marks a live task whose artifact's key has been revoked.
func (l *Launcher) withRevocation(t Task) Task {
	rc, ok := l.cfg.Verifier.(RevocationChecker)
	if !ok || t.State.Final() {
		return t
	}
	if reason, revoked := rc.Revoked(t.Spec.Artifact); revoked {
		t.Revoked = reason
	}
	return t
}

// RevokedTasks lists the live tasks whose artifact's signing key has been
// revoked: they run on, but will not be restarted.
func (l *Launcher) RevokedTasks() []Task {
	var out []Task
	for _, t := range l.List() {
		if t.Revoked != "" {
			out = append(out, t)
		}
	}
	return out
}
