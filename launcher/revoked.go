package launcher

import (
	"errors"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// RevocationChecker is a Verifier that can tell, without re-hashing blobs,
// which releases are now refused for a revoked signing key. The launcher asks
// it about live tasks (MarkRevoked), so that a revocation shows on the tasks
// it can no longer restart.
type RevocationChecker interface {
	// RevokedRefs maps each of refs whose key is revoked to the reason.
	RevokedRefs(refs []string) map[string]string
}

// RevokedRefs reads the policy once and checks each ref's stored envelope.
func (v *StoreVerifier) RevokedRefs(refs []string) map[string]string {
	pol, err := v.policy()
	if err != nil {
		return nil
	}
	out := make(map[string]string)
	for _, ref := range refs {
		if _, done := out[ref]; done {
			continue
		}
		r, err := artifact.ParseRef(ref)
		if err != nil {
			continue
		}
		_, env, err := v.Store.Release(r)
		if err != nil {
			continue
		}
		if _, _, err := artifact.VerifyEnvelope(env, pol, v.now()); errors.Is(err, signing.ErrRevokedKey) {
			out[ref] = err.Error()
		}
	}
	return out
}

// MarkRevoked fills Revoked on the live tasks of ts whose artifact's signing
// key has been revoked. List leaves it empty, so that the agent's frequent
// listings cost no policy reads; ps and status call this.
func (l *Launcher) MarkRevoked(ts []Task) []Task {
	rc, ok := l.cfg.Verifier.(RevocationChecker)
	if !ok {
		return ts
	}
	var refs []string
	for _, t := range ts {
		if !t.State.Final() {
			refs = append(refs, t.Spec.Artifact)
		}
	}
	if len(refs) == 0 {
		return ts
	}
	revoked := rc.RevokedRefs(refs)
	for i, t := range ts {
		if reason, ok := revoked[t.Spec.Artifact]; ok && !t.State.Final() {
			ts[i].Revoked = reason
		}
	}
	return ts
}

// RevokedTasks lists the live tasks whose artifact's signing key has been
// revoked: they run on, but will not be restarted.
func (l *Launcher) RevokedTasks() []Task {
	var out []Task
	for _, t := range l.MarkRevoked(l.List()) {
		if t.Revoked != "" {
			out = append(out, t)
		}
	}
	return out
}
