package artifact

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// OCIRefFile is the entry of a stored image tarball that keeps the descriptor
// of the manifest or index an image was published as, when it came as an OCI
// layout or oci-archive: the tarball is still the docker-save of the image for
// this platform (what the launcher runs), and after it come the manifests,
// indexes and the other platforms' blobs it lacks, as blobs/sha256/<hex>. A
// node's registry serves that manifest or index, so the image keeps the digest
// it had upstream and a multi-platform index is served as an index. The whole
// tarball is what the release's signed digest covers.
const OCIRefFile = "ballena-oci-ref.json"

// maxIndexBytes bounds a manifest or index read while walking a layout.
const maxIndexBytes = 4 << 20

// appendOCIRef appends to the docker-save tarball f (just written and
// closed by tar) the OCI reference of the layout in dir: every blob reachable
// from its index.json that img (the docker-save part) does not hold, then
// OCIRefFile. A layout whose index.json lists one entry is published as that
// entry; one that lists several (one per platform) as index.json itself.
func appendOCIRef(f *os.File, dir string, img v1.Image) error {
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return err
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(raw, &idx); err != nil {
		return fmt.Errorf("index.json: %w", err)
	}
	have := map[v1.Hash]bool{}
	if cfg, err := img.ConfigName(); err == nil {
		have[cfg] = true
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		have[d] = true
	}
	var (
		ref    v1.Descriptor
		order  []v1.Hash
		inline = map[v1.Hash][]byte{} // blobs not in the layout's blobs/ (index.json)
	)
	add := func(h v1.Hash) {
		if !have[h] {
			have[h] = true
			order = append(order, h)
		}
	}
	var walk func(d v1.Descriptor, depth int) error
	walk = func(d v1.Descriptor, depth int) error {
		if depth > 4 {
			return errors.New("image index nests too deeply")
		}
		add(d.Digest)
		if !d.MediaType.IsIndex() && !d.MediaType.IsImage() {
			return nil // a config or layer: stored, not read
		}
		b, ok := inline[d.Digest]
		if !ok {
			if b, err = readLayoutBlob(dir, d.Digest, maxIndexBytes); err != nil {
				return err
			}
		}
		if d.MediaType.IsIndex() {
			var child v1.IndexManifest
			if err := json.Unmarshal(b, &child); err != nil {
				return fmt.Errorf("index %s: %w", d.Digest, err)
			}
			for _, c := range child.Manifests {
				if err := walk(c, depth+1); err != nil {
					return err
				}
			}
			return nil
		}
		var m v1.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("manifest %s: %w", d.Digest, err)
		}
		add(m.Config.Digest)
		for _, l := range m.Layers {
			if len(l.URLs) == 0 { // a foreign layer lives elsewhere
				add(l.Digest)
			}
		}
		return nil
	}
	if len(idx.Manifests) == 1 {
		ref = idx.Manifests[0]
	} else {
		sum := sha256.Sum256(raw)
		ref = v1.Descriptor{MediaType: types.OCIImageIndex, Size: int64(len(raw)),
			Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}}
		inline[ref.Digest] = raw
	}
	if err := walk(ref, 0); err != nil {
		return err
	}
	refJSON, err := json.Marshal(ref)
	if err != nil {
		return err
	}

	// Append after the tarball's end-of-archive blocks, which tar writes last.
	st, err := f.Stat()
	if err != nil {
		return err
	}
	end := make([]byte, 1024)
	if st.Size() < 1024 {
		return errors.New("tarball too short")
	}
	if _, err := f.ReadAt(end, st.Size()-1024); err != nil {
		return err
	}
	if !bytes.Equal(end, make([]byte, 1024)) {
		return errors.New("tarball does not end with end-of-archive blocks")
	}
	if _, err := f.Seek(st.Size()-1024, io.SeekStart); err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	for _, h := range order {
		name := "blobs/sha256/" + h.Hex
		if b, ok := inline[h]; ok {
			if err := writeEntry(tw, name, bytes.NewReader(b), int64(len(b)), h); err != nil {
				return err
			}
			continue
		}
		if h.Algorithm != "sha256" || !ValidDigest(h.Hex) {
			return fmt.Errorf("blob %s: only sha256 digests are stored", h)
		}
		bf, err := os.Open(filepath.Join(dir, "blobs", "sha256", h.Hex))
		if err != nil {
			return fmt.Errorf("blob %s named by the layout: %w", h, err)
		}
		bst, err := bf.Stat()
		if err == nil {
			err = writeEntry(tw, name, bf, bst.Size(), h)
		}
		bf.Close()
		if err != nil {
			return err
		}
	}
	if err := writeEntry(tw, OCIRefFile, bytes.NewReader(refJSON), int64(len(refJSON)), v1.Hash{}); err != nil {
		return err
	}
	return tw.Close()
}

// writeEntry copies r into tw as a regular file, checking its digest unless want is zero.
func writeEntry(tw *tar.Writer, name string, r io.Reader, size int64, want v1.Hash) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tw, h), io.LimitReader(r, size)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if want.Hex != "" && hex.EncodeToString(h.Sum(nil)) != want.Hex {
		return Tagged(ErrInvalid, "blob %s of the layout does not match its digest", want)
	}
	return nil
}

func readLayoutBlob(dir string, h v1.Hash, limit int64) ([]byte, error) {
	if h.Algorithm != "sha256" || !ValidDigest(h.Hex) {
		return nil, fmt.Errorf("blob %s: only sha256 digests are read", h)
	}
	f, err := os.Open(filepath.Join(dir, "blobs", "sha256", h.Hex))
	if err != nil {
		return nil, fmt.Errorf("blob %s named by the layout: %w", h, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("blob %s: a manifest or index over %d bytes", h, limit)
	}
	if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != h.Hex {
		return nil, Tagged(ErrInvalid, "blob %s of the layout does not match its digest", h)
	}
	return b, nil
}
