package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/internal/poll"
	"ballena.dev/internal/testbin"
	"ballena.dev/launcher"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// node is a daemon serving its local API on a temporary data dir, listening on
// loopback only, with a client for its socket.
type node struct {
	dir string
	d   *Daemon
	cl  *localapi.Client
}

func startNode(t *testing.T, cfg Config) *node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon run: %v", err)
		}
	})
	var cl *localapi.Client
	poll.Until(t, 20*time.Second, "the local API socket", func() bool {
		cl, err = localapi.Dial(cfg.DataDir)
		return err == nil
	})
	return &node{dir: cfg.DataDir, d: d, cl: cl}
}

func testConfig(t *testing.T) Config {
	dir := t.TempDir()
	return Config{
		DataDir: filepath.Join(dir, "data"),
		Swarm:   swarm.NodeConfig{Listen: []string{"/ip4/127.0.0.1/tcp/0"}},
		Stdout:  &testWriter{t},
	}
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }

// signed signs the sample whale as name@1.0.0 with a fresh key, the way the CLI
// does before it hands a file to the daemon, and writes a policy trusting it.
func signed(t *testing.T, dir, name string) (path string, env *signing.Envelope, policy string) {
	t.Helper()
	keyPath, _, _, err := signing.WriteKeyPair(dir, "release")
	if err != nil {
		t.Fatal(err)
	}
	key, err := signing.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, name)
	whale, err := os.ReadFile(testbin.Build(t, "../../testdata/hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, whale, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := artifact.PublishOptions{Name: name, Version: "1.0.0", Keys: []ed25519.PrivateKey{key}, SourceRepo: "x", SourceCommit: "y"}
	p, err := artifact.Prepare(context.Background(), path, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Cleanup()
	if env, err = artifact.Sign(p.Release, path, opts); err != nil {
		t.Fatal(err)
	}
	policy = filepath.Join(dir, "trust.yaml")
	if err := os.WriteFile(policy, []byte("keys:\n  - path: release.pub\n    names: [\""+name+"\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, env, policy
}

// TestLocalAPI drives a real node over its socket, as the CLI does: publish,
// list, inspect, verify, remove and gc, and the error codes the CLI turns into
// exit codes.
func TestLocalAPI(t *testing.T) {
	work := t.TempDir()
	path, env, policy := signed(t, work, "hello")
	// The node's own policy trusts the key for another name only: its launcher
	// refuses to start hello.
	otherPolicy := filepath.Join(work, "other.yaml")
	if err := os.WriteFile(otherPolicy, []byte("keys:\n  - path: release.pub\n    names: [\"other\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.TrustPath = otherPolicy
	n := startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var rel artifact.Release
	if err := n.cl.Do(ctx, http.MethodPost, "/v1/artifacts", localapi.PublishRequest{Path: path, Envelope: env}, &rel); err != nil {
		t.Fatalf("publish: %v", err)
	}
	var rels []artifact.Release
	if err := n.cl.Do(ctx, http.MethodGet, "/v1/artifacts", nil, &rels); err != nil || len(rels) != 1 || rels[0].Digest != rel.Digest {
		t.Fatalf("list: %v %+v", err, rels)
	}
	var rw localapi.ReleaseWithEnvelope
	if err := n.cl.Do(ctx, http.MethodGet, "/v1/artifacts/hello@1.0.0", nil, &rw); err != nil || rw.Envelope == nil || rw.Release.Digest != rel.Digest {
		t.Fatalf("inspect: %v %+v", err, rw)
	}
	var vr localapi.VerifyResult
	if err := n.cl.Do(ctx, http.MethodPost, "/v1/artifacts/hello@1.0.0/verify", localapi.VerifyRequest{Trust: policy}, &vr); err != nil || len(vr.KeyIDs) != 1 {
		t.Fatalf("verify: %v %+v", err, vr)
	}
	var st swarm.Status
	if err := n.cl.Do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil || st.ID != n.d.ID() {
		t.Fatalf("status: %v %+v", err, st)
	}
	var ta localapi.TorrentAnswer
	if err := n.cl.Do(ctx, http.MethodGet, "/v1/torrent/hello@1.0.0", nil, &ta); err != nil || len(ta.Torrent) == 0 {
		t.Fatalf("torrent: %v", err)
	}

	// Each failure carries the code the CLI maps to an exit code.
	for _, tc := range []struct {
		name, method, path string
		body               any
		code               string
	}{
		{"inspect missing", http.MethodGet, "/v1/artifacts/nope@1.0.0", nil, CodeNotFound},
		{"bad ref", http.MethodGet, "/v1/artifacts/NOPE", nil, CodeUsage},
		{"verify out of scope", http.MethodPost, "/v1/artifacts/hello@1.0.0/verify", localapi.VerifyRequest{Trust: otherPolicy}, CodeVerify},
		{"verify without policy", http.MethodPost, "/v1/artifacts/hello@1.0.0/verify", localapi.VerifyRequest{Trust: filepath.Join(work, "none.yaml")}, CodeUsage},
		{"publish garbage", http.MethodPost, "/v1/artifacts", map[string]string{"path": path}, CodeUsage},
		{"start missing artifact", http.MethodPost, "/v1/tasks", launcher.TaskSpec{Artifact: "nope@1.0.0"}, CodeNotFound},
		{"start refused by policy", http.MethodPost, "/v1/tasks", launcher.TaskSpec{Artifact: "hello@1.0.0"}, CodeVerify},
		{"bad task spec", http.MethodPost, "/v1/tasks", launcher.TaskSpec{Artifact: "hello@1.0.0", Restart: "sometimes"}, CodeUsage},
		{"unknown task", http.MethodGet, "/v1/tasks/nope", nil, CodeNotFound},
		{"bad stop", http.MethodPost, "/v1/tasks/nope/stop", launcher.StopRequest{Signal: "SIGNOPE"}, CodeUsage},
	} {
		err := n.cl.Do(ctx, tc.method, tc.path, tc.body, nil)
		var le *localapi.Error
		if !errors.As(err, &le) || le.Code != tc.code {
			t.Errorf("%s: %v, want code %q", tc.name, err, tc.code)
		}
	}

	if err := n.cl.Do(ctx, http.MethodDelete, "/v1/artifacts/hello@1.0.0", nil, nil); err != nil {
		t.Fatalf("rm: %v", err)
	}
	// An abandoned partial download, as a kill -9 leaves one: gc takes it too.
	partial := filepath.Join(cfg.DataDir, "tmp", "bt-"+strings.Repeat("ab", 32))
	if err := os.MkdirAll(partial, 0o700); err != nil {
		t.Fatal(err)
	}
	var removed []string
	if err := n.cl.Do(ctx, http.MethodPost, "/v1/gc", nil, &removed); err != nil || len(removed) != 2 ||
		removed[0] != rel.Digest || removed[1] != strings.Repeat("ab", 32) {
		t.Fatalf("gc: %v %v, want the blob %s and the partial download removed", err, removed, rel.Digest)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Fatalf("gc left the partial download: %v", err)
	}
}

// TestConfigErrorsAreUsage: a bad config stops New before anything starts, as
// a usage error the CLI reports with exit code 2.
func TestConfigErrorsAreUsage(t *testing.T) {
	cfg := testConfig(t)
	cfg.TrustPath, cfg.TrustRequired = filepath.Join(t.TempDir(), "missing.yaml"), true
	if _, err := New(context.Background(), cfg); Code(err) != CodeUsage {
		t.Errorf("missing required trust policy: %v (code %q), want a usage error", err, Code(err))
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "node.key")); err == nil {
		t.Error("the node started (made its key) before refusing its config")
	}
	cfg = testConfig(t)
	cfg.Placement = &AgentConfig{Server: "https://127.0.0.1:1"}
	if _, err := New(context.Background(), cfg); Code(err) != CodeUsage {
		t.Errorf("placement without a join token: %v, want a usage error", err)
	}
}
