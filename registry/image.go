package registry

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"ballena.dev/artifact"
	"ballena.dev/internal/ctxio"
)

// image is what the registry serves of one stored release: the manifest it
// derives from the docker-save tarball, and where each blob lies in that
// tarball. Every blob of a tarball made by go-containerregistry (the form
// `ballena publish` stores) is one tar entry, so a blob is a byte range of the
// release's file, served without copying and with Range for free.
type image struct {
	tag       string              // the digest of the manifest or index a tag names
	manifests map[string]document // by digest: the tag's, and each platform's of an index
	blobs     map[string]blob     // by "sha256:<hex>"
	file      fileID              // the release's file when it was indexed
}

// document is a manifest or an index, kept in memory.
type document struct {
	data      []byte
	mediaType types.MediaType
}

// blob is one blob of an image: a section of the release's tarball.
type blob struct {
	off, size int64
	mediaType types.MediaType
	data      []byte // the config, kept in memory (small)
}

// fileID tells whether a file changed since it was read: a release file
// replaced or rewritten in place gets indexed (and hashed) again.
type fileID struct {
	dev, ino uint64
	size     int64
	mtimeNS  int64
}

func statID(p string) (fileID, error) {
	st, err := os.Stat(p)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{size: st.Size(), mtimeNS: st.ModTime().UnixNano()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(sys.Dev), sys.Ino
	}
	return id, nil
}

// entry is one regular file of the tarball: where its bytes lie and their sha256.
type entry struct {
	off, size int64
	digest    string // "sha256:<hex>"
	head      []byte // the first bytes, to tell gzip and zstd from plain tar
	data      []byte // the whole file when it is JSON (see jsonKeeper)
}

// smallFile is the most a JSON file of a stored tarball (manifest.json, a
// config, a manifest or index) may hold in memory.
const smallFile = 4 << 20

// indexImage reads the docker-save tarball at p in one pass: the whole file
// must hash to wantDigest (the signed release digest), and every file in it is
// hashed on the way, so each blob's digest is checked before it is ever served.
// It then builds the image's manifest the way go-containerregistry's tarball
// package does (Docker schema 2), so the manifest digest is the one `crane`
// and `docker save | docker load` agree on for a compressed tarball.
func indexImage(ctx context.Context, p, wantDigest string) (*image, error) {
	id, err := statID(p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	whole := sha256.New()
	cr := &countingReader{r: io.TeeReader(ctxio.Reader(ctx, f), whole)}
	tr := tar.NewReader(cr)
	entries := map[string]entry{}
	links := map[string]string{}
	buf := make([]byte, 256<<10)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read tarball: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		switch h.Typeflag {
		case tar.TypeSymlink, tar.TypeLink:
			target := h.Linkname
			if h.Typeflag == tar.TypeSymlink {
				target = path.Join(path.Dir(name), target)
			}
			links[name] = path.Clean(strings.TrimPrefix(target, "./"))
			continue
		case tar.TypeReg:
		default:
			continue
		}
		e := entry{off: cr.n, size: h.Size}
		hh := sha256.New()
		small := &jsonKeeper{limit: smallFile}
		n, err := io.CopyBuffer(io.MultiWriter(hh, small), tr, buf)
		if err != nil {
			return nil, fmt.Errorf("read %s in tarball: %w", name, err)
		}
		if n != h.Size {
			return nil, fmt.Errorf("%s in tarball: %d bytes, header says %d", name, n, h.Size)
		}
		e.digest = "sha256:" + hex.EncodeToString(hh.Sum(nil))
		e.head, e.data = small.head, small.json()
		entries[name] = e
	}
	if _, err := io.CopyBuffer(io.Discard, cr, buf); err != nil { // tar padding after the end
		return nil, fmt.Errorf("read tarball: %w", err)
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != wantDigest {
		return nil, fmt.Errorf("the release file's sha256 is %s, the signed release says %s (tampered with or corrupt; `ballena gc` and fetch it again)",
			short(got), short(wantDigest))
	}
	byDigest := map[string]entry{}
	for _, e := range entries {
		byDigest[e.digest] = e
	}
	lookup := func(name string) (entry, bool) {
		name = path.Clean(strings.TrimPrefix(name, "./"))
		for range 8 { // a chain of links, bounded
			if e, ok := entries[name]; ok {
				return e, true
			}
			t, ok := links[name]
			if !ok {
				return entry{}, false
			}
			name = t
		}
		return entry{}, false
	}
	var img *image
	if re, ok := lookup(artifact.OCIRefFile); ok && re.data != nil {
		img, err = buildFromRef(re.data, byDigest)
	} else {
		img, err = buildImage(lookup)
	}
	if err != nil {
		return nil, err
	}
	img.file = id
	return img, nil
}

// buildImage reads manifest.json through lookup and derives the manifest.
func buildImage(lookup func(string) (entry, bool)) (*image, error) {
	me, ok := lookup("manifest.json")
	if !ok || me.data == nil {
		return nil, errors.New("no manifest.json: not a docker-save tarball")
	}
	var tm tarball.Manifest
	err := json.Unmarshal(me.data, &tm)
	if err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	if len(tm) != 1 {
		return nil, fmt.Errorf("manifest.json lists %d images; a release holds exactly one", len(tm))
	}
	d := tm[0]
	if len(d.LayerSources) > 0 {
		return nil, errors.New("the image has foreign layers, which this registry does not serve")
	}
	ce, ok := lookup(d.Config)
	if !ok || ce.data == nil {
		return nil, fmt.Errorf("config %s is missing from the tarball", d.Config)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(ce.data, &cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", d.Config, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(d.Layers) {
		return nil, fmt.Errorf("manifest.json names %d layers, the config %d", len(d.Layers), len(cfg.RootFS.DiffIDs))
	}
	// Docker schema 2, as go-containerregistry writes it, unless a layer is
	// zstd, which only the OCI media types can say.
	oci := false
	layers := make([]entry, len(d.Layers))
	for i, l := range d.Layers {
		e, ok := lookup(l)
		if !ok {
			return nil, fmt.Errorf("layer %s is missing from the tarball", l)
		}
		layers[i] = e
		oci = oci || compression(e.head) == "zstd"
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.DockerManifestSchema2,
		Config: v1.Descriptor{MediaType: types.DockerConfigJSON}}
	if oci {
		m.MediaType, m.Config.MediaType = types.OCIManifestSchema1, types.OCIConfigJSON
	}
	img := &image{manifests: map[string]document{}, blobs: map[string]blob{}}
	if m.Config.Digest, err = v1.NewHash(ce.digest); err != nil {
		return nil, err
	}
	m.Config.Size = ce.size
	img.blobs[ce.digest] = blob{off: ce.off, size: ce.size, mediaType: m.Config.MediaType, data: ce.data}
	for _, e := range layers {
		mt := layerType(compression(e.head), oci)
		h, err := v1.NewHash(e.digest)
		if err != nil {
			return nil, err
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: mt, Size: e.size, Digest: h})
		img.blobs[e.digest] = blob{off: e.off, size: e.size, mediaType: mt}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(raw)
	img.tag = "sha256:" + hex.EncodeToString(sum[:])
	img.manifests[img.tag] = document{data: raw, mediaType: m.MediaType}
	return img, nil
}

// buildFromRef serves the manifest or index an image was published as (see
// artifact.OCIRefFile): every manifest, index, config and layer it reaches
// must be in the tarball, as hashed.
func buildFromRef(refJSON []byte, byDigest map[string]entry) (*image, error) {
	var ref v1.Descriptor
	if err := json.Unmarshal(refJSON, &ref); err != nil {
		return nil, fmt.Errorf("%s: %w", artifact.OCIRefFile, err)
	}
	img := &image{tag: ref.Digest.String(), manifests: map[string]document{}, blobs: map[string]blob{}}
	find := func(d v1.Descriptor) (entry, error) {
		e, ok := byDigest[d.Digest.String()]
		if !ok {
			return entry{}, fmt.Errorf("%s named by the published reference is not in the tarball", d.Digest)
		}
		if e.size != d.Size {
			return entry{}, fmt.Errorf("%s holds %d bytes, its descriptor says %d", d.Digest, e.size, d.Size)
		}
		return e, nil
	}
	var walk func(d v1.Descriptor, depth int) error
	walk = func(d v1.Descriptor, depth int) error {
		if depth > 4 {
			return errors.New("the published index nests too deeply")
		}
		e, err := find(d)
		if err != nil {
			return err
		}
		if !d.MediaType.IsIndex() && !d.MediaType.IsImage() {
			b := blob{off: e.off, size: e.size, mediaType: d.MediaType}
			if d.MediaType.IsConfig() || strings.HasSuffix(string(d.MediaType), "+json") {
				b.data = e.data // small JSON, served from memory
			}
			img.blobs[e.digest] = b
			return nil
		}
		if e.data == nil {
			return fmt.Errorf("manifest %s is too big", d.Digest)
		}
		img.manifests[e.digest] = document{data: e.data, mediaType: d.MediaType}
		if d.MediaType.IsIndex() {
			var idx v1.IndexManifest
			if err := json.Unmarshal(e.data, &idx); err != nil {
				return fmt.Errorf("index %s: %w", d.Digest, err)
			}
			for _, c := range idx.Manifests {
				if err := walk(c, depth+1); err != nil {
					return err
				}
			}
			return nil
		}
		var m v1.Manifest
		if err := json.Unmarshal(e.data, &m); err != nil {
			return fmt.Errorf("manifest %s: %w", d.Digest, err)
		}
		cfg := m.Config
		if cfg.MediaType == "" {
			cfg.MediaType = types.OCIConfigJSON
		}
		if err := walk(cfg, depth+1); err != nil {
			return err
		}
		for _, l := range m.Layers {
			if len(l.URLs) > 0 {
				continue // a foreign layer: the client fetches it from its URLs
			}
			if err := walk(l, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if !ref.MediaType.IsIndex() && !ref.MediaType.IsImage() {
		return nil, fmt.Errorf("%s names a %q, not a manifest or index", artifact.OCIRefFile, ref.MediaType)
	}
	if err := walk(ref, 0); err != nil {
		return nil, err
	}
	return img, nil
}

// compression tells a layer's compression from its first bytes.
func compression(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return "gzip"
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	}
	return ""
}

func layerType(comp string, oci bool) types.MediaType {
	switch {
	case oci && comp == "gzip":
		return types.OCILayer
	case oci && comp == "zstd":
		return types.OCILayerZStd
	case oci:
		return types.OCIUncompressedLayer
	case comp == "gzip":
		return types.DockerLayer
	}
	return types.DockerUncompressedLayer // docker save writes layers uncompressed
}

// jsonKeeper keeps the first bytes of a file, and the whole file when it is
// JSON (manifest.json, a manifest, index or config: it starts with '{' or
// '[') of at most limit
// bytes. Layers are never held in memory.
type jsonKeeper struct {
	limit int64
	head  []byte
	buf   bytes.Buffer
	drop  bool
}

func (k *jsonKeeper) Write(p []byte) (int, error) {
	if len(k.head) < 8 {
		k.head = append(k.head, p[:min(len(p), 8-len(k.head))]...)
		if k.head[0] != '{' && k.head[0] != '[' {
			k.drop = true
		}
	}
	if !k.drop {
		if int64(k.buf.Len()+len(p)) > k.limit {
			k.drop = true
			k.buf = bytes.Buffer{}
		} else {
			k.buf.Write(p)
		}
	}
	return len(p), nil
}

func (k *jsonKeeper) json() []byte {
	if k.drop {
		return nil
	}
	return k.buf.Bytes()
}

// countingReader counts the bytes read through it: the offset of each tar
// entry's data, since tar.Reader reads exactly the header blocks before it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func short(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		return d[:12]
	}
	return d
}
