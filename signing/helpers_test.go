package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

type testKey struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	id   string
	pem  string
}

func newTestKey(t testing.TB) testKey {
	t.Helper()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{pub: pub, priv: priv, id: KeyID(pub), pem: string(pemBytes)}
}

var (
	testTime   = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	testDigest = hex.EncodeToString(func() []byte { s := sha256.Sum256([]byte("whale")); return s[:] }())
)

func testStatement(t testing.TB, subject, digest string) []byte {
	t.Helper()
	rd, _ := SourceDescriptor("https://git.example/api.git", strings.Repeat("ab", 20))
	st := NewStatement(subject, digest, Provenance{
		BuildDefinition: BuildDefinition{
			ExternalParameters:   json.RawMessage(`{"name":"api","version":"1.4.0","kind":"whale"}`),
			ResolvedDependencies: []ResourceDescriptor{rd},
		},
		RunDetails: RunDetails{Metadata: BuildMetadata{
			StartedOn:  testTime.Add(-time.Minute),
			FinishedOn: testTime,
		}},
	})
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func signTest(t testing.TB, payload []byte, keys ...testKey) *Envelope {
	t.Helper()
	var privs []ed25519.PrivateKey
	for _, k := range keys {
		privs = append(privs, k.priv)
	}
	env, err := SignEnvelope(PayloadType, payload, privs...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// wantErr checks err against a sentinel (nil: success) and message fragments.
func wantErr(t *testing.T, err, kind error, fragments ...string) {
	t.Helper()
	if kind == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("succeeded, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("error %q is not %v", err, kind)
	}
	if !IsVerification(err) {
		t.Errorf("IsVerification(%q) = false", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error spans several lines: %q", err)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}
