package placement

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	p2pcrypto "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Node request signing. A launcher signs every request with its ed25519 node key:
//
//	Ballena-Node: <node ID>
//	Ballena-Time: <unix nanoseconds>
//	Ballena-Nonce: <random hex>
//	Ballena-Signature: base64(ed25519(signingString))
//
// over "ballena-node-v1\n" + method + "\n" + request URI + "\n" + time + "\n" +
// nonce + "\n" + hex(sha256(body)). The server binds the node ID to its key at registration (the
// ID is derived from the key, so it cannot be claimed by another key), rejects
// requests outside a small clock window and replays inside it.
const (
	HeaderNode      = "Ballena-Node"
	HeaderTime      = "Ballena-Time"
	HeaderSignature = "Ballena-Signature"
	HeaderNonce     = "Ballena-Nonce"
	signatureWindow = 30 * time.Second
)

// NodeID returns the libp2p peer ID of an ed25519 public key: the machine's name
// in the mesh and in the placement service.
func NodeID(pub ed25519.PublicKey) (string, error) {
	pk, err := p2pcrypto.UnmarshalEd25519PublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("node key: %w", err)
	}
	id, err := peer.IDFromPublicKey(pk)
	if err != nil {
		return "", fmt.Errorf("node key: %w", err)
	}
	return id.String(), nil
}

func signingString(method, uri, ts, nonce string, body []byte) []byte {
	sum := sha256.Sum256(body)
	return []byte("ballena-node-v1\n" + method + "\n" + uri + "\n" + ts + "\n" + nonce + "\n" + hex.EncodeToString(sum[:]))
}

// signRequest adds the node headers to req, whose body is body.
func signRequest(req *http.Request, nodeID string, key ed25519.PrivateKey, now time.Time, body []byte) {
	ts := strconv.FormatInt(now.UnixNano(), 10)
	var nb [12]byte
	rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	sig := ed25519.Sign(key, signingString(req.Method, req.URL.RequestURI(), ts, nonce, body))
	req.Header.Set(HeaderNode, nodeID)
	req.Header.Set(HeaderTime, ts)
	req.Header.Set(HeaderNonce, nonce)
	req.Header.Set(HeaderSignature, base64.StdEncoding.EncodeToString(sig))
}

// replayGuard remembers signatures seen within the window.
type replayGuard struct {
	mu      sync.Mutex
	seen    map[string]time.Time
	cleaned time.Time
}

func (g *replayGuard) check(sig string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen == nil {
		g.seen = map[string]time.Time{}
	}
	// Expired entries go at most once a second: a busy cell sends thousands of
	// requests a second, and a sweep per request would cost the whole map each time.
	if len(g.seen) > 4096 && now.Sub(g.cleaned) > time.Second {
		g.cleaned = now
		for k, exp := range g.seen {
			if now.After(exp) {
				delete(g.seen, k)
			}
		}
	}
	if exp, ok := g.seen[sig]; ok && !now.After(exp) {
		return false
	}
	g.seen[sig] = now.Add(2 * signatureWindow)
	return true
}

var (
	errUnauthorized = errors.New("unauthorized")
	errRevoked      = errors.New("revoked")
)

// checkRequestTime checks a node request's time header against the clock window.
func checkRequestTime(r *http.Request, now time.Time) error {
	nanos, err := strconv.ParseInt(r.Header.Get(HeaderTime), 10, 64)
	if err != nil {
		return fmt.Errorf("%w: bad %s", errUnauthorized, HeaderTime)
	}
	if d := now.Sub(time.Unix(0, nanos)); d > signatureWindow || d < -signatureWindow {
		return fmt.Errorf("%w: request time is %v away from the server's clock (window %v)", errUnauthorized, d.Round(time.Second), signatureWindow)
	}
	return nil
}

// verifyNodeRequest checks a signed node request against pub (or, when pub is nil,
// against the key that keyFor returns for the claimed node).
func verifyNodeRequest(r *http.Request, body []byte, now time.Time, guard *replayGuard, keyFor func(id string) ed25519.PublicKey) (string, error) {
	id := r.Header.Get(HeaderNode)
	ts := r.Header.Get(HeaderTime)
	sigB64 := r.Header.Get(HeaderSignature)
	if id == "" || ts == "" || sigB64 == "" {
		return "", fmt.Errorf("%w: node request must be signed (%s, %s, %s headers)", errUnauthorized, HeaderNode, HeaderTime, HeaderSignature)
	}
	nanos, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: bad %s", errUnauthorized, HeaderTime)
	}
	if d := now.Sub(time.Unix(0, nanos)); d > signatureWindow || d < -signatureWindow {
		return "", fmt.Errorf("%w: request time is %v away from the server's clock (window %v)", errUnauthorized, d.Round(time.Second), signatureWindow)
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return "", fmt.Errorf("%w: bad %s", errUnauthorized, HeaderSignature)
	}
	pub := keyFor(id)
	if pub == nil {
		return "", fmt.Errorf("%w: node %s is not registered or is revoked", errUnauthorized, id)
	}
	if !ed25519.Verify(pub, signingString(r.Method, r.URL.RequestURI(), ts, r.Header.Get(HeaderNonce), body), sig) {
		return "", fmt.Errorf("%w: bad signature for node %s", errUnauthorized, id)
	}
	if !guard.check(sigB64, now) {
		return "", fmt.Errorf("%w: replayed request", errUnauthorized)
	}
	return id, nil
}

// checkBearer compares the request's bearer token with want in constant time.
func checkBearer(r *http.Request, want string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// LoadOrCreateToken reads a token file, or creates it (mode 0600) with a random
// token if it does not exist; created says which.
func LoadOrCreateToken(path string) (token string, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) < 16 {
			return "", false, fmt.Errorf("token file %s: token shorter than 16 characters", path)
		}
		return t, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("read token file: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", false, err
	}
	t := hex.EncodeToString(raw[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("create token file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("create token file: %w", err)
	}
	if _, err := f.WriteString(t + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return "", false, fmt.Errorf("write token file: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", false, fmt.Errorf("write token file: %w", err)
	}
	return t, true, nil
}

// ReadToken reads a token file.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("read token: %s is empty", path)
	}
	for _, r := range t {
		if r <= ' ' || r > '~' {
			return "", fmt.Errorf("read token: %s holds more than one printable token", path)
		}
	}
	return t, nil
}
