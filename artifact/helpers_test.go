package artifact

import (
	"context"
	"crypto/ed25519"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"ballena.dev/signing"
)

var (
	whaleOnce sync.Once
	whalePath string
	whaleErr  error
)

// staticWhale builds testdata/hello once per test run: a real static binary.
func staticWhale(t testing.TB) string {
	t.Helper()
	whaleOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ballena-artifact-test-")
		if err != nil {
			whaleErr = err
			return
		}
		whalePath = filepath.Join(dir, "hello")
		cmd := exec.Command("go", "build", "-o", whalePath, "../testdata/hello")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			whaleErr = err
			t.Logf("%s", out)
		}
	})
	if whaleErr != nil {
		t.Fatalf("build sample whale: %v", whaleErr)
	}
	return whalePath
}

func openStore(t testing.TB) *Store {
	t.Helper()
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func publish(t testing.TB, st *Store, path, name, version string, keys ...ed25519.PrivateKey) (Release, *signing.Envelope) {
	t.Helper()
	rel, env, err := Publish(context.Background(), st, path, PublishOptions{Name: name, Version: version, Keys: keys})
	if err != nil {
		t.Fatalf("publish %s@%s: %v", name, version, err)
	}
	return rel, env
}

// storeFiles lists every file under the store's blobs and tmp dirs.
func storeFiles(t testing.TB, st *Store) []string {
	t.Helper()
	var out []string
	for _, d := range []string{filepath.Join(st.Dir(), "blobs"), st.TempDir()} {
		filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

func keys(k ...ed25519.PrivateKey) []ed25519.PrivateKey { return k }

func policyFor(pubs ...ed25519.PublicKey) *signing.Policy { return signing.PolicyForKeys(pubs...) }
