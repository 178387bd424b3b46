package placement

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	p2pcrypto "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The node's ID here is its libp2p peer ID: a mesh key converts to the
// ed25519 key NewNodeClient takes, and both name the machine the same way.
func TestNodeIDIsPeerID(t *testing.T) {
	priv, _, err := p2pcrypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := priv.Raw()
	if err != nil {
		t.Fatal(err)
	}
	want, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewNodeClient("http://127.0.0.1:7480", testJoin, ed25519.PrivateKey(raw))
	if err != nil {
		t.Fatal(err)
	}
	if cl.NodeID() != want.String() {
		t.Errorf("node ID %s, peer ID %s", cl.NodeID(), want)
	}
}

func TestTokenFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "admin.token")
	tok, created, err := LoadOrCreateToken(path)
	if err != nil || !created || len(tok) != 64 {
		t.Fatalf("create: %q %v %v", tok, created, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", fi.Mode(), err)
	}
	again, created, err := LoadOrCreateToken(path)
	if err != nil || created || again != tok {
		t.Errorf("reload: %q %v %v", again, created, err)
	}
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, _, err := LoadOrCreateToken(short); err == nil {
		t.Error("a 3-character token was accepted")
	}
}
