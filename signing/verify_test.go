package signing

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// verifyFixture holds the keys of a policy with one key in each standing.
type verifyFixture struct {
	alice, bob, unknown, revoked, expired, future, webOnly testKey
	policy, policy2                                        *Policy
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	f := &verifyFixture{
		alice: newTestKey(t), bob: newTestKey(t), unknown: newTestKey(t), revoked: newTestKey(t),
		expired: newTestKey(t), future: newTestKey(t), webOnly: newTestKey(t),
	}
	entry := func(k testKey, extra string) string {
		return "  - pem: |\n      " + strings.ReplaceAll(strings.TrimSpace(k.pem), "\n", "\n      ") + "\n" + extra
	}
	keys := entry(f.alice, "    names: [api, \"web-*\"]\n") +
		entry(f.bob, "    names: [\"*\"]\n") +
		entry(f.revoked, "    names: [api]\n") +
		entry(f.expired, "    names: [api]\n    not_after: 2026-01-01T00:00:00Z\n") +
		entry(f.future, "    names: [api]\n    not_before: 2027-01-01T00:00:00Z\n") +
		entry(f.webOnly, "    names: [\"web-*\"]\n    id: "+f.webOnly.id+"\n")
	revoked := "revoked: [" + f.revoked.id + "]\n"
	var err error
	if f.policy, err = ParsePolicy([]byte("keys:\n"+keys+revoked), "."); err != nil {
		t.Fatal(err)
	}
	if f.policy2, err = ParsePolicy([]byte("threshold: 2\nkeys:\n"+keys+revoked), "."); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestVerify(t *testing.T) {
	f := newVerifyFixture(t)
	good := testStatement(t, "api@1.4.0", testDigest)
	otherSum := strings.Repeat("0", 64)

	flipPayload := func(e *Envelope) { e.Payload[len(e.Payload)/2] ^= 1 }
	flipSig := func(e *Envelope) { e.Signatures[0].Sig[5] ^= 0x80 }

	cases := []struct {
		name    string
		policy  *Policy
		payload []byte
		ptype   string
		keys    []testKey
		mutate  func(*Envelope)
		subject string // name@version for VerifySubject; "" uses Verify
		digest  string
		kind    error
		want    []string
		signers []testKey
	}{
		{name: "ok", keys: []testKey{f.alice}, signers: []testKey{f.alice}},
		{name: "ok subject", keys: []testKey{f.alice}, subject: "api@1.4.0", digest: testDigest, signers: []testKey{f.alice}},
		{name: "ok upper-case digest given", keys: []testKey{f.alice}, subject: "api@1.4.0", digest: strings.ToUpper(testDigest), signers: []testKey{f.alice}},
		{name: "ok alongside unknown and bad signatures", keys: []testKey{f.unknown, f.alice},
			mutate: func(e *Envelope) {
				e.Signatures = append(e.Signatures, Signature{KeyID: f.bob.id, Sig: make([]byte, 64)})
			},
			signers: []testKey{f.alice}},
		{name: "ok lying keyid hint", keys: []testKey{f.bob},
			mutate: func(e *Envelope) { e.Signatures[0].KeyID = f.alice.id }, signers: []testKey{f.bob}},
		{name: "ok no keyid", keys: []testKey{f.bob},
			mutate: func(e *Envelope) { e.Signatures[0].KeyID = "" }, signers: []testKey{f.bob}},
		{name: "ok threshold 2", policy: f.policy2, keys: []testKey{f.alice, f.bob}, signers: []testKey{f.alice, f.bob}},

		{name: "flipped byte in payload", keys: []testKey{f.alice}, mutate: flipPayload,
			kind: ErrBadSignature, want: []string{"verify envelope: signature by key " + shortID(f.alice.id) + " does not verify"}},
		{name: "flipped byte in payload, subject", keys: []testKey{f.alice}, mutate: flipPayload, subject: "api@1.4.0", digest: testDigest,
			kind: ErrBadSignature, want: []string{"verify api@1.4.0: signature by key"}},
		{name: "flipped signature", keys: []testKey{f.alice}, mutate: flipSig, kind: ErrBadSignature, want: []string{"does not verify"}},
		{name: "payload type altered", keys: []testKey{f.alice}, mutate: func(e *Envelope) { e.PayloadType = "application/json" },
			kind: ErrBadSignature},
		{name: "wrong key claiming a trusted ID", keys: []testKey{f.unknown},
			mutate: func(e *Envelope) { e.Signatures[0].KeyID = f.alice.id }, kind: ErrBadSignature},
		{name: "unknown key", keys: []testKey{f.unknown}, kind: ErrUntrustedKey,
			want: []string{"signature by unknown key " + shortID(f.unknown.id) + ": not in trust policy"}},
		{name: "unknown key without keyid", keys: []testKey{f.unknown},
			mutate: func(e *Envelope) { e.Signatures[0].KeyID = "" }, kind: ErrUntrustedKey, want: []string{"without key ID"}},
		{name: "unknown key hinting a revoked ID", keys: []testKey{f.unknown},
			mutate: func(e *Envelope) { e.Signatures[0].KeyID = f.revoked.id }, kind: ErrBadSignature},
		{name: "revoked", keys: []testKey{f.revoked}, kind: ErrRevokedKey,
			want: []string{"verify api@1.4.0: key " + shortID(f.revoked.id) + " is revoked"}},
		{name: "revoked key not in keys", policy: &Policy{Threshold: 1, Keys: f.policy.Keys[:1], Revoked: []string{f.unknown.id}},
			keys: []testKey{f.unknown}, kind: ErrRevokedKey, want: []string{"is revoked"}},
		{name: "expired", keys: []testKey{f.expired}, kind: ErrKeyExpired, want: []string{"expired at 2026-01-01T00:00:00Z"}},
		{name: "not yet valid", keys: []testKey{f.future}, kind: ErrKeyExpired, want: []string{"not valid before 2027-01-01T00:00:00Z"}},
		{name: "out of scope", keys: []testKey{f.webOnly}, kind: ErrOutOfScope,
			want: []string{`may not sign "api" (allowed: web-*)`}},
		{name: "in scope by glob", payload: testStatement(t, "web-frontend@2.0.0", testDigest), keys: []testKey{f.webOnly}, signers: []testKey{f.webOnly}},
		{name: "threshold: duplicate signatures count once", policy: f.policy2, keys: []testKey{f.alice},
			mutate: func(e *Envelope) { e.Signatures = append(e.Signatures, e.Signatures[0]) },
			kind:   ErrThreshold, want: []string{"verify api@1.4.0: 1 of 2 required trusted signatures"}},
		{name: "threshold: revoked co-signer", policy: f.policy2, keys: []testKey{f.alice, f.revoked},
			kind: ErrThreshold, want: []string{"1 of 2 required trusted signatures (key " + shortID(f.revoked.id) + " is revoked)"}},
		{name: "threshold: unknown co-signer", policy: f.policy2, keys: []testKey{f.alice, f.unknown},
			kind: ErrThreshold, want: []string{"1 of 2", "unknown key " + shortID(f.unknown.id)}},
		{name: "wrong payload type", ptype: "application/vnd.example+json", keys: []testKey{f.alice},
			kind: ErrPayloadType, want: []string{`payload type is "application/vnd.example+json"`}},
		{name: "signed garbage", payload: []byte(`{"_type":"x"}`), keys: []testKey{f.alice}, kind: ErrMalformed, want: []string{"_type"}},
		{name: "subject name mismatch", keys: []testKey{f.alice}, subject: "api@1.5.0", digest: testDigest,
			kind: ErrSubjectMismatch, want: []string{"verify api@1.5.0: envelope is for api@1.4.0, not api@1.5.0"}},
		{name: "subject for another artifact", keys: []testKey{f.bob}, subject: "web@1.4.0", digest: testDigest,
			kind: ErrSubjectMismatch, want: []string{"envelope is for api@1.4.0"}},
		{name: "subject digest mismatch", keys: []testKey{f.alice}, subject: "api@1.4.0", digest: otherSum,
			kind: ErrSubjectMismatch, want: []string{"artifact sha256 " + shortID(otherSum) + " does not match the signed sha256 " + shortID(testDigest)}},
		{name: "no signatures", keys: []testKey{f.alice}, mutate: func(e *Envelope) { e.Signatures = nil }, kind: ErrMalformed},
		{name: "zero threshold still needs a signer", policy: &Policy{Keys: f.policy.Keys, Revoked: f.policy.Revoked}, keys: []testKey{f.revoked},
			kind: ErrRevokedKey},
		{name: "malformed hand-built key", policy: &Policy{Threshold: 1, Keys: []TrustedKey{{ID: f.alice.id, Public: f.alice.pub[:5], Names: []string{"*"}}}},
			keys: []testKey{f.alice}, kind: ErrBadSignature},
		{name: "empty policy", policy: &Policy{Threshold: 1}, keys: []testKey{f.alice}, kind: ErrUntrustedKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			payload := good
			if c.payload != nil {
				payload = c.payload
			}
			payload = append([]byte(nil), payload...)
			ptype := PayloadType
			if c.ptype != "" {
				ptype = c.ptype
			}
			pol := f.policy
			if c.policy != nil {
				pol = c.policy
			}
			var env *Envelope
			for _, k := range c.keys {
				if env == nil {
					var err error
					if env, err = SignEnvelope(ptype, payload, k.priv); err != nil {
						t.Fatal(err)
					}
				} else if err := env.AddSignature(k.priv); err != nil {
					t.Fatal(err)
				}
			}
			if c.mutate != nil {
				c.mutate(env)
			}
			var (
				v   *Verified
				err error
			)
			if c.subject != "" {
				name, version, _ := strings.Cut(c.subject, "@")
				v, err = pol.VerifySubject(env, name, version, c.digest, testTime)
			} else {
				v, err = pol.Verify(env, testTime)
			}
			wantErr(t, err, c.kind, c.want...)
			if c.kind != nil {
				if v != nil {
					t.Error("refusal returned a Verified")
				}
				return
			}
			var want []string
			for _, k := range c.signers {
				want = append(want, k.id)
			}
			slices.Sort(want)
			if !slices.Equal(v.KeyIDs, want) {
				t.Errorf("KeyIDs = %v, want %v", v.KeyIDs, want)
			}
			if v.Statement == nil || v.Statement.Subject[0].Digest["sha256"] != testDigest {
				t.Errorf("statement %+v", v.Statement)
			}
		})
	}
}

// A key's validity window is inclusive at both ends.
func TestVerifyWindowEdges(t *testing.T) {
	k := newTestKey(t)
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &Policy{Threshold: 1, Keys: []TrustedKey{{ID: k.id, Public: k.pub, Names: []string{"api"}, NotBefore: nb, NotAfter: na}}}
	env := signTest(t, testStatement(t, "api@1.4.0", testDigest), k)
	for _, c := range []struct {
		now time.Time
		ok  bool
	}{
		{nb.Add(-time.Second), false}, {nb, true}, {na, true}, {na.Add(time.Second), false},
	} {
		_, err := p.Verify(env, c.now)
		if (err == nil) != c.ok {
			t.Errorf("at %v: err = %v, want ok=%v", c.now, err, c.ok)
		}
	}
}

// Verification survives the JSON round trip the store and the network put it through.
func TestVerifyAfterParse(t *testing.T) {
	k := newTestKey(t)
	data, err := signTest(t, testStatement(t, "api@1.4.0", testDigest), k).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	env, err := ParseEnvelope(data)
	if err != nil {
		t.Fatal(err)
	}
	v, err := PolicyForKeys(k.pub).VerifySubject(env, "api", "1.4.0", testDigest, testTime)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.KeyIDs) != 1 || v.KeyIDs[0] != k.id {
		t.Errorf("KeyIDs = %v", v.KeyIDs)
	}
}
