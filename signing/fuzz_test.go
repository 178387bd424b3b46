package signing

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzKey is the fixture key seeds are signed with, so that the fuzzer starts
// from envelopes that verify and mutates its way to ones that must not.
func fuzzKey(f *testing.F) ed25519.PrivateKey {
	f.Helper()
	priv, err := LoadPrivateKey(filepath.Join("testdata", "keys", "alice.key"))
	if err != nil {
		f.Fatal(err)
	}
	return priv
}

func checkOneLine(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("error does not wrap ErrMalformed: %v", err)
	}
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Fatalf("error spans lines: %q", err)
	}
}

func FuzzParseEnvelope(f *testing.F) {
	priv := fuzzKey(f)
	env, err := SignEnvelope(PayloadType, testStatement(f, "api@1.4.0", testDigest), priv)
	if err != nil {
		f.Fatal(err)
	}
	good, err := env.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"payload":"aGk","payloadType":"x","signatures":[{"keyid":"k","sig":"_-8"}]}`))
	f.Add([]byte(`{"payload":"","payloadType":"x","signatures":[{"sig":"AA=="}],"payload":"AA=="}`))
	f.Add([]byte(`{"payload":null,"payloadType":"x","signatures":null}`))
	f.Add([]byte(`[[[[{}]]]]`))
	pol := PolicyForKeys(priv.Public().(ed25519.PublicKey))
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := ParseEnvelope(data)
		if err != nil {
			checkOneLine(t, err)
			return
		}
		out, err := env.Marshal()
		if err != nil {
			t.Fatalf("parsed envelope does not marshal: %v", err)
		}
		again, err := ParseEnvelope(out)
		if err != nil {
			t.Fatalf("marshalled envelope does not parse: %v\n%s", err, out)
		}
		if !bytes.Equal(again.Payload, env.Payload) || again.PayloadType != env.PayloadType || len(again.Signatures) != len(env.Signatures) {
			t.Fatalf("round trip changed the envelope:\n%s\n%s", data, out)
		}
		v, err := pol.Verify(env, testTime)
		if err != nil {
			if !IsVerification(err) {
				t.Fatalf("Verify: not a verification error: %v", err)
			}
			return
		}
		// Whatever verified must carry a real signature over this exact payload.
		ok := false
		for _, s := range env.Signatures {
			ok = ok || ed25519.Verify(pol.Keys[0].Public, PAE(env.PayloadType, env.Payload), s.Sig)
		}
		if !ok || env.PayloadType != PayloadType || len(v.KeyIDs) != 1 {
			t.Fatalf("Verify accepted an envelope without a valid signature: %s", data)
		}
	})
}

func FuzzParseStatement(f *testing.F) {
	f.Add(testStatement(f, "api@1.4.0", testDigest))
	f.Add(testStatement(f, "web-frontend@2.0.0-rc.1", strings.Repeat("f", 64)))
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"a","digest":{"sha256":"` + testDigest + `"}}],"predicateType":"https://slsa.dev/provenance/v1","predicate":{"buildDefinition":{"buildType":"x","externalParameters":{}},"runDetails":{"builder":{"id":"b"},"metadata":{"startedOn":"2026-01-01T00:00:00+02:00","finishedOn":"2026-01-01T00:00:00Z"}}},"extra":[1,2]}`))
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","_TYPE":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseStatement(data)
		if err != nil {
			checkOneLine(t, err)
			return
		}
		out, err := st.Marshal()
		if err != nil {
			t.Fatalf("parsed statement does not marshal: %v", err)
		}
		again, err := ParseStatement(out)
		if err != nil {
			t.Fatalf("marshalled statement does not parse: %v\n%s", err, out)
		}
		out2, err := again.Marshal()
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("statement round trip is not stable: %v\n%s\n%s", err, out, out2)
		}
		if len(st.Subject) != 1 || !sha256Hex.MatchString(st.Subject[0].Digest["sha256"]) {
			t.Fatalf("ParseStatement accepted subject %+v", st.Subject)
		}
	})
}

func FuzzParsePolicy(f *testing.F) {
	baseDir := filepath.Join("testdata", "policy")
	good, err := os.ReadFile(filepath.Join(baseDir, "trust.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("threshold: 1\nkeys:\n  - path: ../keys/bob.pub\n    names: [\"*\"]\n"))
	f.Add([]byte("threshold: 2\nkeys:\n  - path: ../keys/alice.pub\n    names: [api]\n  - path: ../keys/bob.pub\n    names: [api]\nrevoked: []\n"))
	f.Add([]byte("keys:\n  - path: ../keys/bob.pub\n    nmes: [api]\n"))
	f.Add([]byte("keys: &a [*a]\n"))
	f.Add([]byte("keys:\n  - path: ../keys/bob.pub\n    names: [api\nrevoked: []\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data, baseDir)
		if err != nil {
			checkOneLine(t, err)
			return
		}
		if p.Threshold < 1 || p.Threshold > len(p.Keys) {
			t.Fatalf("accepted threshold %d with %d keys", p.Threshold, len(p.Keys))
		}
		for _, k := range p.Keys {
			if len(k.Public) != ed25519.PublicKeySize || k.ID != KeyID(k.Public) || len(k.Names) == 0 {
				t.Fatalf("accepted key %+v", k)
			}
		}
		for _, id := range p.Revoked {
			if !sha256Hex.MatchString(id) {
				t.Fatalf("accepted revoked ID %q", id)
			}
		}
	})
}
