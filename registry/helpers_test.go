package registry

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/artifact"
	"ballena.dev/internal/ocitest"
	"ballena.dev/signing"
)

// env is a store with a publisher key and a registry serving it on loopback.
type env struct {
	t      testing.TB
	dir    string
	st     *artifact.Store
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	policy atomic.Pointer[signing.Policy]
	srv    *Server
	url    string // http://127.0.0.1:PORT
	reg    *prometheus.Registry
	logs   *logBuffer
}

type envOpts struct {
	store *artifact.Store // default a new one
	fetch func(context.Context, artifact.Ref, func()) (artifact.Release, error)
	maps  []string
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), reg: prometheus.NewRegistry(), logs: &logBuffer{}}
	var err error
	if e.pub, e.priv, err = signing.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	e.policy.Store(signing.PolicyForKeys(e.pub))
	e.st = o.store
	if e.st == nil {
		if e.st, err = artifact.Open(filepath.Join(e.dir, "store")); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.st.Close() })
	}
	var maps []Mapping
	for _, s := range o.maps {
		m, err := ParseMapping(s)
		if err != nil {
			t.Fatal(err)
		}
		maps = append(maps, m)
	}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(e.logs, tLog{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.srv, err = New(Config{Store: e.st, Policy: e.policy.Load, Fetch: o.fetch, ResolveTimeout: 2 * time.Second, Map: maps, Metrics: e.reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	e.url = "http://" + ln.Addr().String()
	return e
}

// image is a small linux/amd64 image with two gzip layers (one of them
// random, so that every image is new) as a docker-save tarball.
func testImage(t testing.TB, dir string, randomBytes int) (string, v1.Image) {
	t.Helper()
	noise := make([]byte, randomBytes)
	rand.Read(noise)
	img := ocitest.Image(t, "amd64", v1.Config{Entrypoint: []string{"/bin/hello"}, Env: []string{"A=1"}},
		ocitest.Layer(t, ocitest.Entry{Name: "bin/", Typ: '5', Mode: 0o755}, ocitest.Entry{Name: "bin/hello", Body: "#!/bin/sh\necho hi\n", Mode: 0o755}),
		ocitest.Layer(t, ocitest.Entry{Name: "data/noise", Body: string(noise), Mode: 0o644}))
	p := filepath.Join(dir, "image.tar")
	ocitest.WriteDockerSave(t, p, "ballena.local/image:latest", img)
	return p, img
}

// publish signs the tarball at p as name@version with key and stores it.
func (e *env) publish(p, name, version string, key ed25519.PrivateKey) artifact.Release {
	e.t.Helper()
	rel, _, err := artifact.Publish(context.Background(), e.st, p, artifact.PublishOptions{
		Name: name, Version: version, Kind: artifact.KindOCI, Keys: []ed25519.PrivateKey{key},
		SourceRepo: "test", SourceCommit: "0"})
	if err != nil {
		e.t.Fatal(err)
	}
	return rel
}

// get requests path and returns the answer with its whole body.
func (e *env) do(method, path string, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

type tLog struct{ t testing.TB }

func (w tLog) Write(p []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// logBuffer keeps the registry's log for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), s)
}

var _ = time.Second

// logger writes a room's log into the test's.
func logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLog{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
