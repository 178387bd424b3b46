// Package registry serves the releases a node holds as a read-only OCI
// registry (the distribution API's pull side), so that containerd, Docker and
// Kubernetes pull Ballena's signed images, directly or with the node as a
// mirror of an upstream registry.
//
// It serves only verified content: a release is served only while its
// envelope verifies against the node's trust policy (scope, revocation,
// expiry, no rollback), its file hashes to the signed digest, and every
// manifest and blob hashes to its own digest as it is sent. Anything else,
// refused or simply unknown, answers 404, so that containerd falls back to
// the upstream registry; the reason of a refusal goes to the node's log.
//
// Names and tags: `/v2/api/manifests/1.4.0` is the release api@1.4.0. In
// mirror mode containerd adds `?ns=<upstream host>`, and a Mapping turns the
// upstream reference into a release name. A release the store lacks is
// fetched from the mesh (Config.Fetch) when a client first asks for its
// manifest by tag, with the same trust checks; clients asking at once share
// one fetch. Blobs reach the client only after the whole release verified:
// the manifest that containerd asks for first lies at the end of the stored
// tarball, so streaming pieces as they verify would save little.
//
// Which manifest: an image published from an OCI layout is served as the
// manifest or index it was published as (artifact.OCIRefFile), so its digest
// is the upstream one; a docker-save input as the Docker schema 2 manifest
// go-containerregistry derives from the tarball.
//
// Files: registry.go routes requests and answers; image.go reads a stored
// tarball into manifests and blob offsets; releases.go verifies
// releases and fetches them from the mesh; mirror.go maps upstream names;
// hosts.go writes containerd's hosts.toml.
package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// Config is what a Server needs. Store and Policy are required.
type Config struct {
	Store *artifact.Store
	// Policy returns the node's current trust policy (it changes on SIGHUP).
	Policy func() *signing.Policy
	// Fetch brings a release the store lacks from the mesh, verified against
	// the same policy (swarm.Node.Fetch), and calls found once holders were
	// found and the download runs; nil serves only what the store holds.
	Fetch func(ctx context.Context, ref artifact.Ref, found func()) (artifact.Release, error)
	// ResolveTimeout bounds the wait for the mesh to name a holder of the
	// release; after it the client gets 404 and containerd turns to the
	// upstream registry. Default 5 seconds.
	ResolveTimeout time.Duration
	// FetchTimeout bounds one whole fetch from the mesh; default 5 minutes.
	FetchTimeout time.Duration
	// Map turns mirror requests (containerd's ?ns=, or Docker's registry-mirrors
	// for docker.io) into release names; unmapped mirror requests answer 404.
	Map []Mapping
	// Metrics, when set, gets ballena_registry_requests_total by code and
	// ballena_registry_fetches_total.
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	Now     func() time.Time // for tests; default time.Now
}

// Server is the registry. It is an http.Handler.
type Server struct {
	cfg      Config
	log      *slog.Logger
	requests *prometheus.CounterVec
	fetches  prometheus.Counter

	mu       sync.Mutex
	images   map[string]*indexing // by release digest
	inflight map[artifact.Ref]*fetchCall
	logged   map[string]time.Time // refusals logged, by release and reason
}

// New checks cfg and makes a Server; Serve or ServeHTTP answers requests.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Policy == nil {
		return nil, errors.New("registry: a store and a trust policy are needed")
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 5 * time.Minute
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("room", "registry"),
		images: map[string]*indexing{}, inflight: map[artifact.Ref]*fetchCall{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballena_registry_requests_total",
			Help: "Requests to the node's OCI registry, by HTTP status code.",
		}, []string{"code"}),
		fetches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_registry_fetches_total",
			Help: "Releases the registry fetched from the mesh because a client asked for one the store lacked.",
		}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{s.requests, s.fetches} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("registry: metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Serve answers on ln until ctx ends. Plain HTTP: containerd and Docker reach
// it on loopback or the node's own network (see the README).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("registry: %w", err)
	}
	return nil
}

// Error codes of the distribution spec.
const (
	codeNameUnknown     = "NAME_UNKNOWN"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeNameInvalid     = "NAME_INVALID"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeUnsupported     = "UNSUPPORTED"
)

// ServeHTTP routes a request of the distribution API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	defer func() {
		s.requests.WithLabelValues(strconv.Itoa(rec.code)).Inc()
		s.log.Debug("registry request", "method", r.Method, "path", r.URL.Path, "ns", r.URL.Query().Get("ns"), "code", rec.code)
	}()
	w = rec
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	p := r.URL.Path
	if p != "/v2" && !strings.HasPrefix(p, "/v2/") {
		writeError(w, http.StatusNotFound, codeUnsupported, "not an OCI distribution API path (they start with /v2/)")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, codeUnsupported, "this registry is read-only: publish with `ballena publish`")
		return
	}
	if p == "/v2" || p == "/v2/" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			io.WriteString(w, "{}")
		}
		return
	}
	rest := strings.TrimPrefix(p, "/v2/")
	parts := strings.Split(rest, "/")
	n := len(parts)
	switch {
	case n >= 3 && parts[n-2] == "tags" && parts[n-1] == "list":
		s.tags(w, r, strings.Join(parts[:n-2], "/"))
	case n >= 3 && parts[n-2] == "manifests":
		s.manifest(w, r, strings.Join(parts[:n-2], "/"), parts[n-1])
	case n >= 3 && parts[n-2] == "blobs":
		s.blob(w, r, strings.Join(parts[:n-2], "/"), parts[n-1])
	default:
		writeError(w, http.StatusNotFound, codeUnsupported, "unknown path: this registry serves manifests, blobs and tags/list")
	}
}

// manifest answers /v2/<name>/manifests/<tag|digest>.
func (s *Server) manifest(w http.ResponseWriter, r *http.Request, repo, reference string) {
	name, ok := s.releaseName(repo, r.URL.Query().Get("ns"))
	if !ok {
		writeError(w, http.StatusNotFound, codeNameUnknown, fmt.Sprintf("%s is not mapped to a release here", repo))
		return
	}
	var img *image
	digest := reference
	if strings.HasPrefix(reference, "sha256:") {
		if !validDigest(reference) {
			writeError(w, http.StatusBadRequest, codeDigestInvalid, "a digest is sha256: and 64 lower-case hex digits")
			return
		}
		img, _ = s.findImage(r.Context(), name, func(im *image) bool { _, ok := im.manifests[reference]; return ok })
	} else {
		// A tag that is no version (latest) names no release: 404 at once,
		// without asking the mesh, so containerd falls back without a wait.
		ref, err := artifact.ParseRef(name + "@" + reference)
		if err != nil {
			img = nil
		} else if img, err = s.release(r.Context(), ref, true); err != nil {
			img = nil
		} else {
			digest = img.tag
		}
	}
	if img == nil {
		writeError(w, http.StatusNotFound, codeManifestUnknown, fmt.Sprintf("manifest %s:%s is not served here", repo, reference))
		return
	}
	doc := img.manifests[digest]
	// Checked again as it is sent: what leaves is what the digest names.
	if sum := sha256.Sum256(doc.data); "sha256:"+hex.EncodeToString(sum[:]) != digest {
		s.log.Error("manifest in memory no longer matches its digest; not served", "repo", repo, "reference", reference)
		writeError(w, http.StatusNotFound, codeManifestUnknown, "manifest unknown")
		return
	}
	h := w.Header()
	h.Set("Content-Type", string(doc.mediaType))
	h.Set("Docker-Content-Digest", digest)
	h.Set("Content-Length", strconv.Itoa(len(doc.data)))
	h.Set("ETag", `"`+digest+`"`)
	if r.Method == http.MethodGet {
		w.Write(doc.data)
	}
}

// blob answers /v2/<name>/blobs/<digest>, with Range.
func (s *Server) blob(w http.ResponseWriter, r *http.Request, repo, digest string) {
	if !validDigest(digest) {
		writeError(w, http.StatusBadRequest, codeDigestInvalid, "a digest is sha256: and 64 lower-case hex digits")
		return
	}
	name, ok := s.releaseName(repo, r.URL.Query().Get("ns"))
	if !ok {
		writeError(w, http.StatusNotFound, codeNameUnknown, fmt.Sprintf("%s is not mapped to a release here", repo))
		return
	}
	img, relDigest := s.findImage(r.Context(), name, func(im *image) bool {
		_, ok := im.blobs[digest]
		return ok
	})
	if img == nil {
		writeError(w, http.StatusNotFound, codeBlobUnknown, fmt.Sprintf("blob %s is not served here", short(digest)))
		return
	}
	b := img.blobs[digest]
	h := w.Header()
	h.Set("Content-Type", string(b.mediaType))
	h.Set("Docker-Content-Digest", digest)
	h.Set("ETag", `"`+digest+`"`)
	h.Set("Cache-Control", "max-age=31536000")
	if b.data != nil { // the config, in memory, checked like the manifest
		if sum := sha256.Sum256(b.data); "sha256:"+hex.EncodeToString(sum[:]) != digest {
			s.log.Error("config in memory no longer matches its digest; not served", "digest", digest)
			writeError(w, http.StatusNotFound, codeBlobUnknown, "blob unknown")
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b.data))
		return
	}
	f, err := os.Open(s.cfg.Store.BlobPath(relDigest))
	if err != nil {
		s.log.Error("release file gone", "digest", relDigest, "err", err)
		writeError(w, http.StatusNotFound, codeBlobUnknown, "blob unknown")
		return
	}
	defer f.Close()
	sec := io.NewSectionReader(f, b.off, b.size)
	if r.Method == http.MethodHead {
		h.Set("Content-Length", strconv.FormatInt(b.size, 10))
		h.Set("Accept-Ranges", "bytes")
		return
	}
	if r.Header.Get("Range") != "" {
		// A part cannot be checked on its own: hash the whole blob first.
		if err := checkSection(r.Context(), sec, digest); err != nil {
			s.log.Error("blob does not match its digest; not served", "digest", digest, "release", relDigest, "err", err)
			writeError(w, http.StatusNotFound, codeBlobUnknown, "blob unknown")
			return
		}
		http.ServeContent(w, r, "", time.Time{}, sec)
		return
	}
	h.Set("Content-Length", strconv.FormatInt(b.size, 10))
	h.Set("Accept-Ranges", "bytes")
	if err := sendVerified(w, sec, digest); err != nil {
		// Headers are out: cut the connection so the client sees a short body,
		// never a whole blob that fails its digest.
		s.log.Error("blob failed its digest while sent; connection cut", "digest", digest, "release", relDigest, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// tags answers /v2/<name>/tags/list: the versions of name that verify now.
func (s *Server) tags(w http.ResponseWriter, r *http.Request, repo string) {
	name, ok := s.releaseName(repo, r.URL.Query().Get("ns"))
	if !ok {
		writeError(w, http.StatusNotFound, codeNameUnknown, fmt.Sprintf("%s is not mapped to a release here", repo))
		return
	}
	rels, err := s.cfg.Store.Releases()
	if err != nil {
		s.log.Error("list releases", "err", err)
		writeError(w, http.StatusNotFound, codeNameUnknown, "name unknown")
		return
	}
	tags := []string{}
	for _, rel := range rels {
		if rel.Name != name || rel.Kind != artifact.KindOCI {
			continue
		}
		if _, err := s.verifyRecord(rel.Ref()); err != nil {
			continue
		}
		tags = append(tags, rel.Version)
	}
	if len(tags) == 0 {
		writeError(w, http.StatusNotFound, codeNameUnknown, fmt.Sprintf("no release of %s is served here", repo))
		return
	}
	sort.Strings(tags)
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if nq := q.Get("n"); nq != "" {
		if k, err := strconv.Atoi(nq); err == nil && k >= 0 && k < len(tags) {
			tags = tags[:k]
			w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?n=%d&last=%s>; rel="next"`, repo, k, tags[len(tags)-1]))
		}
	}
	body, _ := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{repo, tags})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

// checkSection hashes a whole blob and compares it with its digest.
func checkSection(ctx context.Context, sec *io.SectionReader, digest string) error {
	h := sha256.New()
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	if _, err := io.CopyBuffer(h, io.NewSectionReader(sec, 0, sec.Size()), *buf); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("its sha256 is now %s", short(got))
	}
	return ctx.Err()
}

// bufPool holds copy buffers: on these VMs a fresh buffer per request costs
// more than the copy.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// sendVerified streams a blob to w while hashing it, and holds back the last
// chunk until the whole blob matched its digest: a client never receives all
// of a blob that fails it.
func sendVerified(w io.Writer, sec *io.SectionReader, digest string) error {
	a, b := bufPool.Get().(*[]byte), bufPool.Get().(*[]byte)
	defer bufPool.Put(a)
	defer bufPool.Put(b)
	cur, held := *a, (*b)[:0]
	h := sha256.New()
	r := io.NewSectionReader(sec, 0, sec.Size())
	for {
		n, err := io.ReadFull(r, cur[:cap(cur)])
		if n > 0 {
			h.Write(cur[:n])
			if len(held) > 0 {
				if _, werr := w.Write(held); werr != nil {
					return nil // the client left
				}
			}
			held, cur = cur[:n], held[:cap(held)]
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("its sha256 is now %s", short(got))
	}
	if len(held) > 0 {
		w.Write(held)
	}
	return nil
}

func validDigest(d string) bool {
	hexpart, ok := strings.CutPrefix(d, "sha256:")
	return ok && artifact.ValidDigest(hexpart)
}

// writeError answers in the distribution spec's error format.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// statusRecorder keeps the status code for the metrics.
type statusRecorder struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.code, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(p)
}

// ReadFrom keeps sendfile-style copies possible through the recorder.
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	s.wrote = true
	return io.Copy(s.ResponseWriter, r)
}
