package artifact

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// ImageInfo is what the launcher needs from an image's config.
type ImageInfo struct {
	Arch       string
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
}

// OpenImage opens a stored image blob: a single-image docker-save tarball, the
// form every image takes in the store (see PrepareImage).
func OpenImage(blobPath string) (v1.Image, error) {
	img, err := tarball.ImageFromPath(blobPath, nil)
	if err != nil {
		return nil, Tagged(ErrInvalid, "open image %s: %v", blobPath, err)
	}
	return img, nil
}

// PrepareImage validates an image given as an OCI layout directory, an
// oci-archive tarball or a docker-save tarball, and returns the path of a
// docker-save tarball holding its linux/<GOARCH> image: input itself when it
// already is one, else a file written under tmpDir that the caller removes.
func PrepareImage(input, tmpDir string) (path string, info ImageInfo, err error) {
	img, layoutDir, cleanup, err := loadImage(input, tmpDir)
	if err != nil {
		return "", ImageInfo{}, err
	}
	defer cleanup()
	if err := validate.Image(img); err != nil {
		return "", ImageInfo{}, Tagged(ErrInvalid, "image %s is broken: %s", input, firstLine(err))
	}
	info, err = inspectImage(img)
	if err != nil {
		return "", ImageInfo{}, fmt.Errorf("image %s: %w", input, err)
	}
	if layoutDir == "" {
		return input, info, nil
	}
	f, err := os.CreateTemp(tmpDir, "image-*.tar")
	if err != nil {
		return "", ImageInfo{}, err
	}
	defer f.Close()
	tag, _ := name.NewTag("ballena.local/image:latest")
	if err := tarball.Write(tag, img, f); err != nil {
		os.Remove(f.Name())
		return "", ImageInfo{}, fmt.Errorf("image %s: write tarball: %w", input, err)
	}
	if err := appendOCIRef(f, layoutDir, img); err != nil {
		os.Remove(f.Name())
		return "", ImageInfo{}, fmt.Errorf("image %s: keep its OCI reference: %w", input, err)
	}
	return f.Name(), info, nil
}

// loadImage opens input lazily. layoutDir is the OCI layout the image comes
// from, "" for a docker-save tarball; cleanup removes what an oci-archive was
// extracted to, so call it only when done reading img and the layout.
func loadImage(input, tmpDir string) (img v1.Image, layoutDir string, cleanup func(), err error) {
	nop := func() {}
	st, err := os.Stat(input)
	if err != nil {
		return nil, "", nop, err
	}
	if st.IsDir() {
		img, err := imageFromLayout(input)
		return img, input, nop, err
	}
	isOCI, err := tarHasFile(input, "oci-layout")
	if err != nil {
		return nil, "", nop, Tagged(ErrInvalid, "%s is not a readable tarball (%v)", input, err)
	}
	if !isOCI {
		img, err := tarball.ImageFromPath(input, nil)
		if err != nil {
			return nil, "", nop, Tagged(ErrInvalid, "%s is not a valid docker-save tarball: %v", input, err)
		}
		return img, "", nop, nil
	}
	dir, err := os.MkdirTemp(tmpDir, "oci-archive-*")
	if err != nil {
		return nil, "", nop, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := untar(input, dir); err != nil {
		cleanup()
		return nil, "", nop, Tagged(ErrInvalid, "%s is not a valid oci-archive: %v", input, err)
	}
	if img, err = imageFromLayout(dir); err != nil {
		cleanup()
		return nil, "", nop, err
	}
	return img, dir, cleanup, nil
}

func imageFromLayout(dir string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, Tagged(ErrInvalid, "%s is not an OCI layout: %v", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, Tagged(ErrInvalid, "%s: read index.json: %v", dir, err)
	}
	return pickPlatform(idx, 0)
}

// pickPlatform walks an index (nested indexes too) for the image of this platform.
func pickPlatform(idx v1.ImageIndex, depth int) (v1.Image, error) {
	if depth > 4 {
		return nil, Tagged(ErrInvalid, "image index nests too deeply")
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, Tagged(ErrInvalid, "read image index: %v", err)
	}
	var seen []string
	for _, d := range m.Manifests {
		if d.MediaType.IsIndex() {
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, Tagged(ErrInvalid, "read nested index %s: %v", d.Digest, err)
			}
			if img, err := pickPlatform(child, depth+1); err == nil {
				return img, nil
			}
			continue
		}
		if !d.MediaType.IsImage() {
			continue
		}
		if d.Platform != nil {
			seen = append(seen, d.Platform.OS+"/"+d.Platform.Architecture)
			if d.Platform.OS != "linux" || d.Platform.Architecture != runtime.GOARCH {
				continue
			}
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, Tagged(ErrInvalid, "read image %s: %v", d.Digest, err)
		}
		return img, nil
	}
	return nil, Tagged(ErrInvalid, "image index has no linux/%s image (has %s)", runtime.GOARCH, strings.Join(seen, ", "))
}

func inspectImage(img v1.Image) (ImageInfo, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return ImageInfo{}, Tagged(ErrInvalid, "read config: %v", err)
	}
	if cf.OS != "" && cf.OS != "linux" {
		return ImageInfo{}, Tagged(ErrInvalid, "image is for %s, not linux", cf.OS)
	}
	if cf.Architecture != "" && cf.Architecture != runtime.GOARCH {
		return ImageInfo{}, Tagged(ErrInvalid, "image is for %s, this platform is %s", cf.Architecture, runtime.GOARCH)
	}
	info := ImageInfo{Arch: cf.Architecture, Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd,
		Env: cf.Config.Env, WorkingDir: cf.Config.WorkingDir}
	if len(info.Entrypoint) == 0 && len(info.Cmd) == 0 {
		return info, Tagged(ErrInvalid, "image config has neither entrypoint nor cmd: nothing to run")
	}
	return info, nil
}

func tarHasFile(path, want string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if n == 0 {
				return false, errors.New("empty tarball")
			}
			return false, nil
		}
		if err != nil {
			return false, err
		}
		n++
		if strings.TrimPrefix(h.Name, "./") == want {
			return true, nil
		}
	}
}

// untar extracts regular files and directories of an oci-archive, refusing
// anything that would escape dir.
func untar(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		clean := filepath.Clean("/" + h.Name)
		dst := filepath.Join(dir, clean)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("entry %s: unsupported type %c in an oci-archive", h.Name, h.Typeflag)
		}
	}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
