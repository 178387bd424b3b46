package signing

import (
	"testing"
)

// Two signers on two machines: the first writes the envelope, the second
// parses it and adds its signature over the same payload. A threshold-2
// policy accepts the pair, refuses either alone, and does not count a second
// key's signature over another statement.
func TestCoSignThreshold(t *testing.T) {
	a, b := newTestKey(t), newTestKey(t)
	pol := &Policy{Threshold: 2, Keys: []TrustedKey{
		{ID: a.id, Public: a.pub, Names: []string{"*"}},
		{ID: b.id, Public: b.pub, Names: []string{"*"}},
	}}
	payload := testStatement(t, "api@1.4.0", testDigest)
	first, err := signTest(t, payload, a).Marshal() // machine 1 writes the file
	if err != nil {
		t.Fatal(err)
	}

	env, err := ParseEnvelope(first) // machine 2 reads it
	if err != nil {
		t.Fatal(err)
	}
	if !env.SignedBy(a.id) || env.SignedBy(b.id) {
		t.Fatalf("SignedBy before co-signing: a %v, b %v", env.SignedBy(a.id), env.SignedBy(b.id))
	}
	_, err = pol.Verify(env, testTime)
	wantErr(t, err, ErrThreshold, "1 of 2 required trusted signatures")
	if err := env.AddSignature(b.priv); err != nil {
		t.Fatal(err)
	}
	if !env.SignedBy(b.id) {
		t.Error("SignedBy(b) after co-signing is false")
	}
	v, err := pol.Verify(env, testTime)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.KeyIDs) != 2 {
		t.Errorf("verified by %v, want both keys", v.KeyIDs)
	}

	// b alone.
	alone := &Envelope{Payload: env.Payload, PayloadType: env.PayloadType, Signatures: env.Signatures[1:]}
	_, err = pol.Verify(alone, testTime)
	wantErr(t, err, ErrThreshold, "1 of 2")

	// b's signature taken from an envelope over another statement does not count.
	other := signTest(t, testStatement(t, "api@1.4.1", testDigest), b)
	spliced, _ := ParseEnvelope(first)
	spliced.Signatures = append(spliced.Signatures, other.Signatures[0])
	_, err = pol.Verify(spliced, testTime)
	wantErr(t, err, ErrThreshold, "1 of 2")
}
