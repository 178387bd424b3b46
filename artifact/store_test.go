package artifact

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ballena.dev/signing"
)

func TestPublishVerifyRoundTrip(t *testing.T) {
	st := openStore(t)
	pub, priv := newKey(t)
	rel, env := publish(t, st, staticWhale(t), "api", "1.4.0", priv)
	if rel.Kind != KindWhale || rel.Arch != "amd64" || rel.Size == 0 || !ValidDigest(rel.Digest) || len(rel.InfoHash) != 40 {
		t.Fatalf("release record incomplete: %+v", rel)
	}
	if got, _ := HashFile(context.Background(), st.BlobPath(rel.Digest)); got != rel.Digest {
		t.Fatalf("blob hashes to %s, record says %s", got, rel.Digest)
	}
	back, _, err := VerifyEnvelope(env, signing.PolicyForKeys(pub), time.Now())
	if err != nil || back.Digest != rel.Digest || back.InfoHash != rel.InfoHash {
		t.Fatalf("VerifyEnvelope = %+v, %v", back, err)
	}
	got, v, err := st.Verify(context.Background(), rel.Ref(), signing.PolicyForKeys(pub), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != rel.Digest || len(v.KeyIDs) != 1 || v.KeyIDs[0] != signing.KeyID(pub) {
		t.Fatalf("Verify = %+v %+v", got, v)
	}
	if h, ok, _ := st.HighestVersion("api"); !ok || h != "1.4.0" {
		t.Fatalf("highest version = %q %v, want 1.4.0 recorded", h, ok)
	}
}

func TestVerifyRefusals(t *testing.T) {
	ctx := context.Background()
	pub, priv := newKey(t)
	otherPub, _ := newKey(t)
	whale := staticWhale(t)
	cases := []struct {
		name   string
		mangle func(t *testing.T, st *Store, rel Release) // mangles the store after a good publish
		pol    func() *signing.Policy
		want   error
	}{
		{"flipped byte in blob", func(t *testing.T, st *Store, rel Release) {
			flipByte(t, st.BlobPath(rel.Digest), rel.Size/2)
		}, nil, signing.ErrSubjectMismatch},
		{"untrusted key", nil, func() *signing.Policy { return signing.PolicyForKeys(otherPub) }, signing.ErrUntrustedKey},
		{"flipped byte in envelope payload", func(t *testing.T, st *Store, rel Release) {
			_, env, _ := st.Release(rel.Ref())
			env.Payload[len(env.Payload)/2] ^= 1
			putRaw(t, st, rel, env)
		}, nil, signing.ErrBadSignature},
		{"envelope for another artifact", func(t *testing.T, st *Store, rel Release) {
			_, otherEnv := publishNoRecord(t, st, whale, "web", "1.0.0", priv)
			putRaw(t, st, rel, otherEnv)
		}, nil, signing.ErrSubjectMismatch},
		{"rollback", func(t *testing.T, st *Store, rel Release) {
			if err := st.RecordVersion("api", "2.0.0"); err != nil {
				t.Fatal(err)
			}
		}, nil, signing.ErrRollback},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := openStore(t)
			rel, _ := publish(t, st, whale, "api", "1.4.0", priv)
			if c.mangle != nil {
				c.mangle(t, st, rel)
			}
			pol := signing.PolicyForKeys(pub)
			if c.pol != nil {
				pol = c.pol()
			}
			_, _, err := st.Verify(ctx, rel.Ref(), pol, VerifyOptions{})
			if !errors.Is(err, c.want) {
				t.Fatalf("Verify err = %v, want %v", err, c.want)
			}
			if bytes.ContainsRune([]byte(err.Error()), '\n') {
				t.Fatalf("error spans lines: %q", err)
			}
		})
	}
}

func TestAllowRollback(t *testing.T) {
	st := openStore(t)
	pub, priv := newKey(t)
	rel, _ := publish(t, st, staticWhale(t), "api", "1.3.0", priv)
	if err := st.RecordVersion("api", "1.4.0"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Verify(context.Background(), rel.Ref(), signing.PolicyForKeys(pub), VerifyOptions{AllowRollback: true}); err != nil {
		t.Fatalf("explicit rollback refused: %v", err)
	}
	if h, _, _ := st.HighestVersion("api"); h != "1.4.0" {
		t.Fatalf("an allowed rollback lowered the mark to %s", h)
	}
}

func TestIngestMismatchLeavesNothing(t *testing.T) {
	st := openStore(t)
	src := writeFile(t, []byte("some bytes"))
	_, _, err := st.IngestFile(context.Background(), src, "0000000000000000000000000000000000000000000000000000000000000000")
	if !errors.Is(err, signing.ErrSubjectMismatch) {
		t.Fatalf("err = %v", err)
	}
	if f := storeFiles(t, st); len(f) != 0 {
		t.Fatalf("files left behind: %v", f)
	}
}

// A cancelled copy stands in for a crash mid-import: no blob, no temp file, no record.
func TestInterruptedImportLeavesNothing(t *testing.T) {
	st := openStore(t)
	_, priv := newKey(t)
	p, err := Prepare(context.Background(), staticWhale(t), st.TempDir(), PublishOptions{Name: "api", Version: "1.0.0", Keys: nil})
	if err != nil {
		t.Fatal(err)
	}
	env, err := Sign(p.Release, p.Path, PublishOptions{Keys: []ed25519.PrivateKey{priv}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := st.Import(ctx, p.Path, env); !errors.Is(err, context.Canceled) {
		t.Fatalf("Import after cancel = %v", err)
	}
	if f := storeFiles(t, st); len(f) != 0 {
		t.Fatalf("files left behind: %v", f)
	}
	if rels, _ := st.Releases(); len(rels) != 0 {
		t.Fatalf("records left behind: %v", rels)
	}
}

func TestPutReleaseNeedsBlob(t *testing.T) {
	st := openStore(t)
	rel := Release{Name: "api", Version: "1.0.0", Kind: KindWhale, Digest: "ab" + string(bytes.Repeat([]byte("0"), 62))}
	if err := st.PutRelease(rel, &signing.Envelope{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("PutRelease without blob = %v, want ErrNotFound", err)
	}
}

func TestGC(t *testing.T) {
	st := openStore(t)
	_, priv := newKey(t)
	whale := staticWhale(t)
	keep, _ := publish(t, st, whale, "api", "1.4.0", priv)
	drop, _ := publish(t, st, writeFile(t, append(readFile(t, whale), 0)), "api", "1.3.0", priv)
	if err := st.DeleteRelease(drop.Ref()); err != nil {
		t.Fatal(err)
	}
	removed, err := st.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != drop.Digest {
		t.Fatalf("gc removed %v, want only %s", removed, drop.Digest)
	}
	if !st.HasBlob(keep.Digest) || st.HasBlob(drop.Digest) {
		t.Fatal("gc removed the wrong blob")
	}
}

func TestOpenTwiceIsBusy(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := Open(dir); !errors.Is(err, ErrStoreBusy) {
		t.Fatalf("second Open = %v, want ErrStoreBusy", err)
	}
}

func TestPublishRefusesBadNames(t *testing.T) {
	st := openStore(t)
	_, priv := newKey(t)
	for _, c := range []struct{ name, version string }{{"API", "1.0.0"}, {"../x", "1.0.0"}, {"api", "one"}} {
		_, _, err := Publish(context.Background(), st, staticWhale(t), PublishOptions{Name: c.name, Version: c.version, Keys: []ed25519.PrivateKey{priv}})
		if err == nil {
			t.Errorf("publish %s@%s accepted", c.name, c.version)
		}
	}
}

// publishNoRecord signs path as name@version without storing it.
func publishNoRecord(t *testing.T, st *Store, path, name, version string, priv ed25519.PrivateKey) (Release, *signing.Envelope) {
	t.Helper()
	p, err := Prepare(context.Background(), path, st.TempDir(), PublishOptions{Name: name, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	env, err := Sign(p.Release, path, PublishOptions{Keys: []ed25519.PrivateKey{priv}})
	if err != nil {
		t.Fatal(err)
	}
	return p.Release, env
}

// putRaw replaces the envelope stored for rel, as an attacker with disk access would.
func putRaw(t *testing.T, st *Store, rel Release, env *signing.Envelope) {
	t.Helper()
	if err := st.PutRelease(rel, env); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "input")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A name@version names one set of bytes: a second digest is refused, naming
// both; the same bytes again are fine.
func TestSecondDigestForAVersionIsRefused(t *testing.T) {
	st := openStore(t)
	_, priv := newKey(t)
	first, _ := publish(t, st, staticWhale(t), "api", "1.0.0", priv)
	b, err := os.ReadFile(staticWhale(t))
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "api")
	if err := os.WriteFile(other, append(b, "other bytes"...), 0o755); err != nil {
		t.Fatal(err)
	}
	_, _, err = Publish(context.Background(), st, other, PublishOptions{Name: "api", Version: "1.0.0", Keys: []ed25519.PrivateKey{priv}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), first.Digest) {
		t.Fatalf("second digest for api@1.0.0: %v; want ErrInvalid naming sha256:%s", err, first.Digest)
	}
	got, _, _ := st.Release(first.Ref())
	if got.Digest != first.Digest {
		t.Errorf("the stored release changed to %s", got.Digest)
	}
	if !strings.Contains(err.Error(), "second digest sha256:") {
		t.Errorf("the refusal does not name the second digest: %v", err)
	}
	if _, _, err := Publish(context.Background(), st, staticWhale(t), PublishOptions{Name: "api", Version: "1.0.0", Keys: []ed25519.PrivateKey{priv}}); err != nil {
		t.Errorf("the same bytes again: %v", err)
	}
}
