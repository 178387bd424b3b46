package signing

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyRoundTrip(t *testing.T) {
	k := newTestKey(t)
	privPEM, err := MarshalPrivateKey(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(privPEM, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("private key PEM starts %q", privPEM[:30])
	}
	if !strings.HasPrefix(k.pem, "-----BEGIN PUBLIC KEY-----\n") {
		t.Errorf("public key PEM starts %q", k.pem[:30])
	}
	priv, err := ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Equal(k.priv) {
		t.Error("private key changed in round trip")
	}
	pub, err := ParsePublicKey([]byte(k.pem))
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(k.pub) {
		t.Error("public key changed in round trip")
	}
	if len(k.id) != 64 || KeyID(pub) != k.id {
		t.Errorf("KeyID = %q", k.id)
	}
}

func TestParseKeyRefusals(t *testing.T) {
	k := newTestKey(t)
	privPEM, _ := MarshalPrivateKey(k.priv)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecDER})
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}})

	pubCases := []struct {
		name, in, want string
	}{
		{"empty", "", "no PEM block"},
		{"private given", string(privPEM), "give the .pub file"},
		{"ecdsa", string(ecPEM), "ECDSA"},
		{"garbage DER", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not PKIX"},
		{"two blocks", k.pem + k.pem, "after the PEM block"},
	}
	for _, c := range pubCases {
		t.Run("pub/"+c.name, func(t *testing.T) {
			_, err := ParsePublicKey([]byte(c.in))
			wantErr(t, err, ErrMalformed, c.want)
		})
	}
	privCases := []struct {
		name, in, want string
	}{
		{"public given", k.pem, "give the .key file"},
		{"encrypted", string(encrypted), "decrypt it first"},
	}
	for _, c := range privCases {
		t.Run("priv/"+c.name, func(t *testing.T) {
			_, err := ParsePrivateKey([]byte(c.in))
			wantErr(t, err, ErrMalformed, c.want)
		})
	}
}

func TestWriteKeyPair(t *testing.T) {
	dir := t.TempDir()
	keyPath, pubPath, id, err := WriteKeyPair(dir, "release")
	if err != nil {
		t.Fatal(err)
	}
	if keyPath != filepath.Join(dir, "release.key") || pubPath != filepath.Join(dir, "release.pub") {
		t.Errorf("paths %s %s", keyPath, pubPath)
	}
	for p, mode := range map[string]os.FileMode{keyPath: 0o600, pubPath: 0o644} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), mode)
		}
	}
	priv, err := LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(priv.Public()) || KeyID(pub) != id {
		t.Error("written key pair does not match the returned ID")
	}

	keyBefore, _ := os.ReadFile(keyPath)
	if _, _, _, err := WriteKeyPair(dir, "release"); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second WriteKeyPair: %v, want refusal", err)
	}
	if keyAfter, _ := os.ReadFile(keyPath); !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("existing key was overwritten")
	}

	// Only the .pub exists: refuse and leave no .key behind.
	if err := os.WriteFile(filepath.Join(dir, "other.pub"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := WriteKeyPair(dir, "other"); err == nil {
		t.Fatal("WriteKeyPair over an existing .pub succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "other.key")); !os.IsNotExist(err) {
		t.Errorf("other.key left behind: %v", err)
	}

	for _, bad := range []string{"", ".", "..", "a/b", `a\b`} {
		if _, _, _, err := WriteKeyPair(dir, bad); err == nil {
			t.Errorf("WriteKeyPair(%q) succeeded", bad)
		}
	}
}

func TestLoadFixtureKeys(t *testing.T) {
	for _, n := range []string{"alice", "bob"} {
		priv, err := LoadPrivateKey(filepath.Join("testdata", "keys", n+".key"))
		if err != nil {
			t.Fatal(err)
		}
		pub, err := LoadPublicKey(filepath.Join("testdata", "keys", n+".pub"))
		if err != nil {
			t.Fatal(err)
		}
		if !pub.Equal(priv.Public()) {
			t.Errorf("%s: public key does not match private key", n)
		}
	}
}
