package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"ballena.dev/internal/atomicfile"
)

const (
	pemPrivateKey = "PRIVATE KEY"
	pemPublicKey  = "PUBLIC KEY"
)

// GenerateKey returns a new ed25519 key pair from crypto/rand.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return pub, priv, nil
}

// KeyID returns the hex sha256 of the public key's PKIX (SubjectPublicKeyInfo)
// DER, the same value `openssl pkey -pubin -outform DER | sha256sum` prints.
func KeyID(pub ed25519.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// Only a nil key gets here; hash its raw bytes so the ID still differs
		// from every real key's.
		der = pub
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// MarshalPrivateKey encodes priv as a PKCS#8 PEM block ("PRIVATE KEY").
func MarshalPrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("marshal private key: ed25519 key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// MarshalPublicKey encodes pub as a PKIX PEM block ("PUBLIC KEY").
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("marshal public key: ed25519 key has %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

// ParsePrivateKey decodes a PKCS#8 PEM ed25519 private key, as written by
// MarshalPrivateKey or `openssl genpkey -algorithm ed25519`.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	der, err := singlePEM(data, pemPrivateKey)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, refusef(ErrMalformed, "private key: not PKCS#8: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, refusef(ErrMalformed, "private key: %s, want ed25519 (openssl genpkey -algorithm ed25519)", keyTypeName(k))
	}
	return priv, nil
}

// ParsePublicKey decodes a PKIX PEM ed25519 public key, as written by
// MarshalPublicKey or `openssl pkey -pubout`.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	der, err := singlePEM(data, pemPublicKey)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, refusef(ErrMalformed, "public key: not PKIX: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, refusef(ErrMalformed, "public key: %s, want ed25519", keyTypeName(k))
	}
	return pub, nil
}

// singlePEM returns the DER of the one PEM block of the wanted type in data.
// Text before the block is tolerated (openssl writes none, humans add comments);
// a second block is not, since it would be silently ignored.
func singlePEM(data []byte, want string) ([]byte, error) {
	what := strings.ToLower(want)
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, refusef(ErrMalformed, "%s: no PEM block found (want -----BEGIN %s-----)", what, want)
	}
	if b.Type != want {
		hint := ""
		switch b.Type {
		case "ENCRYPTED PRIVATE KEY":
			hint = "; decrypt it first: openssl pkey -in KEY -out KEY.plain"
		case pemPrivateKey:
			hint = "; this is a private key, give the .pub file"
		case pemPublicKey:
			hint = "; this is a public key, give the .key file"
		}
		return nil, refusef(ErrMalformed, "%s: PEM block is %q, want %q%s", what, b.Type, want, hint)
	}
	if len(b.Headers) != 0 {
		return nil, refusef(ErrMalformed, "%s: PEM block has headers (encrypted?), want a plain %q block", what, want)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, refusef(ErrMalformed, "%s: unexpected data after the PEM block", what)
	}
	return b.Bytes, nil
}

func keyTypeName(k any) string {
	switch k.(type) {
	case ed25519.PrivateKey, ed25519.PublicKey:
		return "ed25519"
	}
	t := fmt.Sprintf("%T", k)
	switch {
	case strings.Contains(t, "rsa"):
		return "an RSA key"
	case strings.Contains(t, "ecdsa"):
		return "an ECDSA key"
	case strings.Contains(t, "ecdh"):
		return "an ECDH key"
	}
	return "a " + t + " key"
}

// LoadPrivateKey reads a PKCS#8 PEM ed25519 private key file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	priv, err := ParsePrivateKey(data)
	if err != nil {
		return nil, withPrefix("load "+path, err)
	}
	return priv, nil
}

// LoadPublicKey reads a PKIX PEM ed25519 public key file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load public key: %w", err)
	}
	pub, err := ParsePublicKey(data)
	if err != nil {
		return nil, withPrefix("load "+path, err)
	}
	return pub, nil
}

// WriteKeyPair generates a key pair and writes dir/name.key (PKCS#8 PEM, 0600)
// and dir/name.pub (PKIX PEM, 0644). It refuses to overwrite either file and
// leaves nothing behind when it fails.
func WriteKeyPair(dir, name string) (keyPath, pubPath, keyID string, err error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || strings.ContainsRune(name, 0) {
		return "", "", "", fmt.Errorf("write key pair: invalid key name %q: want a plain file name like \"release\"", name)
	}
	keyPath = filepath.Join(dir, name+".key")
	pubPath = filepath.Join(dir, name+".pub")
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", "", fmt.Errorf("write key pair: %s already exists; refusing to overwrite it (pick another name or move it away)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", "", "", fmt.Errorf("write key pair: %w", err)
		}
	}
	pub, priv, err := GenerateKey()
	if err != nil {
		return "", "", "", err
	}
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		return "", "", "", err
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		return "", "", "", err
	}
	if err := writeExclusive(keyPath, privPEM, 0o600); err != nil {
		return "", "", "", fmt.Errorf("write key pair: %w", err)
	}
	if err := writeExclusive(pubPath, pubPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return "", "", "", fmt.Errorf("write key pair: %w", err)
	}
	return keyPath, pubPath, KeyID(pub), nil
}

// writeExclusive creates path (failing if it exists), writes data, sets mode
// regardless of umask, and fsyncs. On failure it removes what it created.
func writeExclusive(path string, data []byte, mode os.FileMode) error {
	err := atomicfile.WriteNew(path, data, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists; refusing to overwrite it", path)
	}
	return err
}
