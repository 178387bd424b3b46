package artifact

import (
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"

	"ballena.dev/internal/testbin"

	"ballena.dev/signing"
)

// staticWhale is testdata/hello built static, once per test run: a real static binary.
func staticWhale(t testing.TB) string { return testbin.Build(t, "../testdata/hello") }

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
