package artifact

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkVerify1GiB measures the check before every launch on a 1 GiB blob:
// re-hash (sha256) plus envelope and policy verification. MB/s is the figure.
func BenchmarkVerify1GiB(b *testing.B) {
	if testing.Short() {
		b.Skip("writes 1 GiB")
	}
	st := openStore(b)
	pub, priv := newKey(b)
	in := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(in)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for i := 0; i < 1024; i++ {
		chunk[0] = byte(i)
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	rel, _, err := Publish(context.Background(), st, in, PublishOptions{Name: "big", Version: "1.0.0", Kind: KindWhale, Keys: keys(priv)})
	if err == nil {
		b.Fatal("a non-ELF file published as a whale")
	}
	// The benchmark measures verification, not ELF checks: sign the raw bytes.
	p := &Prepared{Path: in, Release: Release{Name: "big", Version: "1.0.0", Kind: KindWhale}}
	d, n, err := hashFile(context.Background(), in)
	if err != nil {
		b.Fatal(err)
	}
	p.Release.Digest, p.Release.Size = d, n
	env, err := Sign(p.Release, in, PublishOptions{Keys: keys(priv)})
	if err != nil {
		b.Fatal(err)
	}
	if rel, err = st.Import(context.Background(), in, env); err != nil {
		b.Fatal(err)
	}
	pol := policyFor(pub)
	b.SetBytes(rel.Size)
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := st.Verify(context.Background(), rel.Ref(), pol, VerifyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
