package signing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests check interoperability against OpenSSL, an independent
// ed25519, PKCS#8 and PKIX implementation.

func openssl(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "openssl", args...).CombinedOutput()
}

func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is needed: apt-get install openssl (.ci/run installs it)")
	}
	if out, err := openssl(t, "pkeyutl", "-help"); !strings.Contains(string(out), "-rawin") {
		t.Skipf("openssl pkeyutl has no -rawin (need OpenSSL 3): %v", err)
	}
}

func TestOpenSSLVerifiesOurSignature(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	keyPath, pubPath, id, err := WriteKeyPair(dir, "release")
	if err != nil {
		t.Fatal(err)
	}
	priv, err := LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	// Our key files load in openssl, and agree on the public key and its ID.
	if out, err := openssl(t, "pkey", "-in", keyPath, "-noout"); err != nil {
		t.Fatalf("openssl cannot read our private key: %v\n%s", err, out)
	}
	der, err := openssl(t, "pkey", "-pubin", "-in", pubPath, "-outform", "DER")
	if err != nil {
		t.Fatalf("openssl cannot read our public key: %v\n%s", err, der)
	}
	if sum := sha256.Sum256(der); hex.EncodeToString(sum[:]) != id {
		t.Errorf("KeyID %s is not sha256 of the DER openssl sees", id)
	}
	derived, err := openssl(t, "pkey", "-in", keyPath, "-pubout")
	if err != nil || strings.TrimSpace(string(derived)) != strings.TrimSpace(mustRead(t, pubPath)) {
		t.Errorf("openssl derives a different public key from our private key: %v\n%s", err, derived)
	}

	env, err := SignEnvelope(PayloadType, testStatement(t, "api@1.4.0", testDigest), priv)
	if err != nil {
		t.Fatal(err)
	}
	data, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	env, err = ParseEnvelope(data)
	if err != nil {
		t.Fatal(err)
	}
	pae := PAE(env.PayloadType, env.Payload)
	paePath, sigPath := filepath.Join(dir, "pae"), filepath.Join(dir, "sig")
	writeFile(t, paePath, pae)
	writeFile(t, sigPath, env.Signatures[0].Sig)
	if out, err := openssl(t, "pkeyutl", "-verify", "-pubin", "-inkey", pubPath, "-rawin", "-sigfile", sigPath, "-in", paePath); err != nil {
		t.Fatalf("openssl rejects our signature: %v\n%s", err, out)
	}

	pae[len(pae)-10] ^= 1
	writeFile(t, paePath, pae)
	if out, err := openssl(t, "pkeyutl", "-verify", "-pubin", "-inkey", pubPath, "-rawin", "-sigfile", sigPath, "-in", paePath); err == nil {
		t.Fatalf("openssl accepts our signature over a flipped byte:\n%s", out)
	}
}

func TestWeVerifyOpenSSLSignature(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	keyPath, pubPath := filepath.Join(dir, "release.key"), filepath.Join(dir, "release.pub")
	if out, err := openssl(t, "genpkey", "-algorithm", "ed25519", "-out", keyPath); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	if out, err := openssl(t, "pkey", "-in", keyPath, "-pubout", "-out", pubPath); err != nil {
		t.Fatalf("openssl pkey -pubout: %v\n%s", err, out)
	}
	priv, err := LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatalf("openssl private key does not load: %v", err)
	}
	pub, err := LoadPublicKey(pubPath)
	if err != nil {
		t.Fatalf("openssl public key does not load: %v", err)
	}
	if !pub.Equal(priv.Public()) {
		t.Fatal("openssl key pair does not match after loading")
	}

	payload := testStatement(t, "api@1.4.0", testDigest)
	paePath, sigPath := filepath.Join(dir, "pae"), filepath.Join(dir, "sig")
	writeFile(t, paePath, PAE(PayloadType, payload))
	if out, err := openssl(t, "pkeyutl", "-sign", "-inkey", keyPath, "-rawin", "-in", paePath, "-out", sigPath); err != nil {
		t.Fatalf("openssl sign: %v\n%s", err, out)
	}
	sig := []byte(mustRead(t, sigPath))
	env := &Envelope{Payload: payload, PayloadType: PayloadType, Signatures: []Signature{{KeyID: KeyID(pub), Sig: sig}}}
	pol := PolicyForKeys(pub)
	if _, err := pol.VerifySubject(env, "api", "1.4.0", testDigest, testTime); err != nil {
		t.Fatalf("openssl's signature does not verify: %v", err)
	}
	// ed25519 is deterministic: our signature must equal openssl's.
	ours, err := SignEnvelope(PayloadType, payload, priv)
	if err != nil {
		t.Fatal(err)
	}
	if string(ours.Signatures[0].Sig) != string(sig) {
		t.Error("our ed25519 signature differs from openssl's for the same key and message")
	}
	env.Payload = append([]byte(nil), payload...)
	env.Payload[3] ^= 1
	_, err = pol.Verify(env, testTime)
	wantErr(t, err, ErrBadSignature)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
