package signing

import (
	"testing"
)

// BenchmarkVerifyEnvelope measures the signature half of verifying a release:
// PAE, ed25519, payload type, statement parse, policy and subject checks.
// The sha256 of the blob is artifact's benchmark.
func BenchmarkVerifyEnvelope(b *testing.B) {
	k := newTestKey(b)
	pol := &Policy{Threshold: 1, Keys: []TrustedKey{{ID: k.id, Public: k.pub, Names: []string{"api"}}}}
	for i := 0; i < 7; i++ { // a realistic policy: the signer is one of several keys
		o := newTestKey(b)
		pol.Keys = append(pol.Keys, TrustedKey{ID: o.id, Public: o.pub, Names: []string{"*"}})
	}
	data, err := signTest(b, testStatement(b, "api@1.4.0", testDigest), k).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		env, err := ParseEnvelope(data)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pol.VerifySubject(env, "api", "1.4.0", testDigest, testTime); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignEnvelope(b *testing.B) {
	k := newTestKey(b)
	payload := testStatement(b, "api@1.4.0", testDigest)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := SignEnvelope(PayloadType, payload, k.priv); err != nil {
			b.Fatal(err)
		}
	}
}
