package artifact

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"ballena.dev/internal/ocitest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// testImage is a one-layer image holding /hello with an entrypoint and env.
func testImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	return ocitest.Image(t, arch,
		v1.Config{Entrypoint: []string{"/hello"}, Cmd: []string{"--port", "8080"}, Env: []string{"MODE=prod"}, WorkingDir: "/srv"},
		ocitest.Layer(t, ocitest.Entry{Name: "hello", Body: "#!/hello\n", Mode: 0o755}))
}

func writeDockerSave(t *testing.T, img v1.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "image.tar")
	ocitest.WriteDockerSave(t, p, "example.com/web:2.0.0", img)
	return p
}

// writeLayout writes an OCI layout whose index has an arm64 and an amd64 image.
func writeLayout(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"arm64", "amd64"} {
		if err := p.AppendImage(testImage(t, arch), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// tarDir makes an oci-archive: a tarball of a layout directory.
func tarDir(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.oci.tar")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h, _ := tar.FileInfoHeader(fi, "")
		h.Name = rel
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			_, err = tw.Write(b)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tw.Close()
	f.Close()
	return out
}

func TestPublishImageFormats(t *testing.T) {
	layoutDir := writeLayout(t)
	cases := []struct {
		name  string
		input string
	}{
		{"docker-save", writeDockerSave(t, testImage(t, "amd64"))},
		{"oci-layout", layoutDir},
		{"oci-archive", tarDir(t, layoutDir)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := openStore(t)
			pub, priv := newKey(t)
			rel, _ := publish(t, st, c.input, "web", "2.0.0", priv)
			if rel.Kind != KindOCI || rel.Arch != "amd64" || rel.WorkingDir != "/srv" ||
				len(rel.Entrypoint) != 1 || rel.Entrypoint[0] != "/hello" || len(rel.Env) == 0 || len(rel.Cmd) != 2 {
				t.Fatalf("release did not record the image config: %+v", rel)
			}
			img, err := OpenImage(st.BlobPath(rel.Digest))
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil || cf.Architecture != "amd64" {
				t.Fatalf("stored image is %v (%v), want the amd64 one", cf.Architecture, err)
			}
			if _, _, err := st.Verify(context.Background(), rel.Ref(), policyFor(pub), VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			if left, _ := os.ReadDir(st.TempDir()); len(left) != 0 {
				t.Fatalf("temp files left: %v", left)
			}
		})
	}
}

func TestBrokenImagesRefused(t *testing.T) {
	good := writeDockerSave(t, testImage(t, "amd64"))
	b, _ := os.ReadFile(good)
	truncated := writeFile(t, b[:len(b)/2])
	flipped := append([]byte(nil), b...)
	// Flip a byte inside the last layer's content, past the tar headers.
	flipped[len(flipped)-2048] ^= 0xff
	corrupt := writeFile(t, flipped)
	wrongArch := writeDockerSave(t, testImage(t, "arm64"))
	notTar := writeFile(t, []byte("not a tarball at all, just text"))
	for name, in := range map[string]string{"truncated": truncated, "corrupt layer": corrupt, "wrong arch": wrongArch, "not a tarball": notTar} {
		t.Run(name, func(t *testing.T) {
			st := openStore(t)
			_, priv := newKey(t)
			_, _, err := Publish(context.Background(), st, in, PublishOptions{Name: "web", Version: "1.0.0", Kind: KindOCI, Keys: keys(priv)})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("publish %s = %v, want ErrInvalid", name, err)
			}
			if f := storeFiles(t, st); len(f) != 0 {
				t.Fatalf("files left behind: %v", f)
			}
		})
	}
}

// TestLayoutKeepsReference: an image published from an OCI layout is stored
// as the docker-save of its amd64 image followed by what the layout's index
// reaches (manifests, the other platform's blobs) and the reference; a
// docker-save input gains nothing; a layout blob that does not match its
// digest is refused.
func TestLayoutKeepsReference(t *testing.T) {
	layoutDir := writeLayout(t)
	st := openStore(t)
	_, priv := newKey(t)
	rel, _ := publish(t, st, layoutDir, "web", "2.0.0", priv)
	stored := st.BlobPath(rel.Digest)
	if ok, err := tarHasFile(stored, OCIRefFile); err != nil || !ok {
		t.Fatalf("stored tarball has no %s (%v)", OCIRefFile, err)
	}
	idx, err := os.ReadFile(filepath.Join(layoutDir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(idx)
	indexName := "blobs/sha256/" + hex.EncodeToString(sum[:])
	if ok, _ := tarHasFile(stored, indexName); !ok {
		t.Fatalf("the layout's index.json (two platforms) is not kept as %s", indexName)
	}
	arm, _ := testImage(t, "arm64").Digest()
	if ok, _ := tarHasFile(stored, "blobs/sha256/"+arm.Hex); !ok {
		t.Fatal("the arm64 manifest is not kept")
	}
	if _, err := OpenImage(stored); err != nil {
		t.Fatalf("the launcher's view of the stored image: %v", err)
	}

	docker := writeDockerSave(t, testImage(t, "amd64"))
	rel2, _ := publish(t, st, docker, "plain", "1.0.0", priv)
	if ok, _ := tarHasFile(st.BlobPath(rel2.Digest), OCIRefFile); ok {
		t.Fatal("a docker-save input gained a reference")
	}

	// The arm64 config corrupted on disk (the amd64 image, which is checked
	// whole, does not use it): refused all the same.
	bad := writeLayout(t)
	armCfg, _ := testImage(t, "arm64").ConfigName()
	cfgPath := filepath.Join(bad, "blobs", "sha256", armCfg.Hex)
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(cfgPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Prepare(context.Background(), bad, st.TempDir(), PublishOptions{Name: "bad", Version: "1.0.0"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a corrupt layout: %v, want ErrInvalid", err)
	}
}
