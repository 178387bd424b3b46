package signing

import (
	"crypto/ed25519"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// Verify checks env against the policy at time now, in DSSE order: signatures
// over the PAE bytes first, then the payload type, then the statement. Each
// verified key must be unrevoked, inside its validity window and allowed to
// sign the subject's name; distinct such keys must reach the threshold.
func (p *Policy) Verify(env *Envelope, now time.Time) (*Verified, error) {
	return p.verify(env, now, nil)
}

// VerifySubject is Verify plus a check that the envelope is about name@version
// with the given sha256, i.e. about the artifact in hand.
func (p *Policy) VerifySubject(env *Envelope, name, version, sha256Hex string, now time.Time) (*Verified, error) {
	return p.verify(env, now, &Subject{Name: name + "@" + version, Digest: map[string]string{"sha256": sha256Hex}})
}

type rejection struct {
	kind error
	msg  string
}

func (p *Policy) verify(env *Envelope, now time.Time, want *Subject) (*Verified, error) {
	label := "envelope"
	if want != nil {
		label = want.Name
	}
	fail := func(kind error, format string, args ...any) (*Verified, error) {
		return nil, refusef(kind, "verify %s: "+format, append([]any{label}, args...)...)
	}
	if p == nil || len(p.Keys) == 0 {
		return fail(ErrUntrustedKey, "trust policy has no keys")
	}
	if env == nil {
		return fail(ErrMalformed, "no envelope")
	}
	if err := env.validate(); err != nil {
		return fail(ErrMalformed, "envelope: %v", err)
	}

	// 1. Signatures. The keyid is an unauthenticated hint: try the hinted key
	// first, then every other key, and count a key only if its signature verifies.
	pae := PAE(env.PayloadType, env.Payload)
	var (
		signers  []*TrustedKey // distinct keys with a valid signature, in signature order
		badKnown []string      // hinted policy keys whose signature did not verify
		unknown  []string      // hints naming no policy key, with no verifying key
	)
	for _, sig := range env.Signatures {
		hinted := p.key(sig.KeyID)
		var found *TrustedKey
		if hinted != nil && hinted.verifies(pae, sig.Sig) {
			found = hinted
		} else {
			for i := range p.Keys {
				k := &p.Keys[i]
				if k != hinted && k.verifies(pae, sig.Sig) {
					found = k
					break
				}
			}
		}
		switch {
		case found != nil:
			if !slices.Contains(signers, found) {
				signers = append(signers, found)
			}
		case hinted != nil:
			badKnown = append(badKnown, hinted.ID)
		default:
			unknown = append(unknown, sig.KeyID)
		}
	}
	if len(signers) == 0 {
		switch {
		case len(badKnown) > 0:
			return fail(ErrBadSignature, "signature by key %s does not verify: payload or signature was altered", shortID(badKnown[0]))
		case len(unknown) > 0 && p.revoked(unknown[0]):
			return fail(ErrRevokedKey, "signature by key %s: key is revoked", shortID(unknown[0]))
		case len(unknown) > 0 && unknown[0] == "":
			return fail(ErrUntrustedKey, "signature without key ID matches no key in the trust policy")
		default:
			return fail(ErrUntrustedKey, "signature by unknown key %s: not in trust policy", shortID(unknown[0]))
		}
	}

	// 2. Payload type, only now that the bytes are authenticated.
	if env.PayloadType != PayloadType {
		return fail(ErrPayloadType, "payload type is %q, want %q", env.PayloadType, PayloadType)
	}

	// 3. The statement.
	st, err := ParseStatement(env.Payload)
	if err != nil {
		return fail(ErrMalformed, "%v", err)
	}
	subject := st.Subject[0]
	if want == nil {
		label = subject.Name
	} else {
		if subject.Name != want.Name {
			return fail(ErrSubjectMismatch, "envelope is for %s, not %s", subject.Name, want.Name)
		}
		if got, wantSum := subject.Digest["sha256"], strings.ToLower(want.Digest["sha256"]); got != wantSum {
			return fail(ErrSubjectMismatch, "artifact sha256 %s does not match the signed sha256 %s", shortID(wantSum), shortID(got))
		}
	}
	artifactName, _, _ := strings.Cut(subject.Name, "@")

	// 4. Each signer's standing under the policy.
	var (
		counted  []string
		rejected []rejection
	)
	for _, k := range signers {
		if r := p.judge(k, artifactName, now); r != nil {
			rejected = append(rejected, *r)
			continue
		}
		counted = append(counted, k.ID)
	}
	// A hand-built Policy may leave Threshold zero; never let that accept no signer.
	threshold := max(p.Threshold, 1)
	if len(counted) >= threshold {
		slices.Sort(counted)
		return &Verified{Statement: st, KeyIDs: counted}, nil
	}
	if len(counted) == 0 && len(rejected) > 0 && threshold == 1 {
		return fail(rejected[0].kind, "%s", rejected[0].msg)
	}
	var why []string
	for _, r := range rejected {
		why = append(why, r.msg)
	}
	for _, id := range badKnown {
		why = append(why, fmt.Sprintf("signature by key %s does not verify", shortID(id)))
	}
	for _, id := range unknown {
		why = append(why, fmt.Sprintf("signature by unknown key %s: not in trust policy", shortID(id)))
	}
	msg := fmt.Sprintf("%d of %d required trusted signatures", len(counted), threshold)
	if len(why) > 0 {
		msg += " (" + strings.Join(why, "; ") + ")"
	}
	return fail(ErrThreshold, "%s", msg)
}

// judge says why key k may not vouch for name at now, or nil if it may.
func (p *Policy) judge(k *TrustedKey, name string, now time.Time) *rejection {
	id := shortID(k.ID)
	switch {
	case p.revoked(k.ID):
		return &rejection{ErrRevokedKey, fmt.Sprintf("key %s is revoked", id)}
	case !k.NotBefore.IsZero() && now.Before(k.NotBefore):
		return &rejection{ErrKeyExpired, fmt.Sprintf("key %s is not valid before %s", id, k.NotBefore.Format(time.RFC3339))}
	case !k.NotAfter.IsZero() && now.After(k.NotAfter):
		return &rejection{ErrKeyExpired, fmt.Sprintf("key %s expired at %s", id, k.NotAfter.Format(time.RFC3339))}
	case !k.mayName(name):
		return &rejection{ErrOutOfScope, fmt.Sprintf("key %s may not sign %q (allowed: %s)", id, name, strings.Join(k.Names, ", "))}
	}
	return nil
}

// verifies reports whether sig is k's signature over msg. A hand-built
// TrustedKey with a malformed key verifies nothing rather than panicking.
func (k *TrustedKey) verifies(msg, sig []byte) bool {
	return len(k.Public) == ed25519.PublicKeySize && ed25519.Verify(k.Public, msg, sig)
}

func (k *TrustedKey) mayName(name string) bool {
	for _, g := range k.Names {
		if g == "*" {
			return true
		}
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

func (p *Policy) key(id string) *TrustedKey {
	if id == "" {
		return nil
	}
	for i := range p.Keys {
		if strings.EqualFold(p.Keys[i].ID, id) {
			return &p.Keys[i]
		}
	}
	return nil
}

func (p *Policy) revoked(id string) bool {
	for _, r := range p.Revoked {
		if strings.EqualFold(r, id) {
			return true
		}
	}
	return false
}
