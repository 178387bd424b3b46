package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"ballena.dev/internal/metricstest"
	"ballena.dev/internal/poll"
	"ballena.dev/internal/testnet"
	"ballena.dev/signing"
)

// TestNodeServesRegistry: `ballena node --registry-listen` serves a release
// published through the CLI, directly and as a mirror by --registry-map,
// counts the requests in its metrics, and `ballena registry config
// containerd` writes the hosts.toml that points containerd at it.
func TestNodeServesRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	dir := t.TempDir()
	nodeDir := filepath.Join(dir, "node")
	regAddr, metricsAddr := testnet.FreeAddr(t), testnet.FreeAddr(t)
	if code, _, msg := run(t, nodeDir, "key", "generate", "--dir", dir, "release"); code != 0 {
		t.Fatal(msg)
	}
	policy := fmt.Sprintf("keys:\n  - path: %s\n    names: [\"web\"]\n", filepath.Join(dir, "release.pub"))
	if err := os.MkdirAll(nodeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nodeDir, "trust.yaml"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	node := startNodeAt(t, "registrynode", nodeDir, "--registry-listen", regAddr,
		"--registry-map", "registry.example.com/team/=", "--metrics-listen", metricsAddr)
	tarPath := filepath.Join(dir, "web.tar")
	writeImageTar(t, tarPath)
	if out, err := exec.Command(ballenaBinary(t), "publish", "--data", nodeDir, "--key", filepath.Join(dir, "release.key"),
		"--name", "web", "--version", "2.0.0", tarPath).CombinedOutput(); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + regAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("Docker-Content-Digest")
	}
	code, digest := get("/v2/web/manifests/2.0.0")
	if code != 200 || !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("direct: %d %q", code, digest)
	}
	if code, d := get("/v2/team/web/manifests/2.0.0?ns=registry.example.com"); code != 200 || d != digest {
		t.Fatalf("mirror: %d %q", code, d)
	}
	if code, _ := get("/v2/team/web/manifests/2.0.0?ns=elsewhere.example.com"); code != 404 {
		t.Fatalf("unmapped mirror request: %d", code)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ballena_registry_requests_total{code="200"} 2`, `ballena_registry_requests_total{code="404"} 1`} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Fatalf("node metrics lack %s", want)
		}
	}
	metricstest.Promtool(t, "node", metrics)

	// A second node that never held the release serves it from the mesh.
	secondDir := filepath.Join(dir, "second")
	if err := os.MkdirAll(secondDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secondDir, "trust.yaml"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	secondAddr := testnet.FreeAddr(t)
	startNodeAt(t, "registrynode2", secondDir, "--bootstrap", node.addr, "--registry-listen", secondAddr)
	resp2, err := http.Get("http://" + secondAddr + "/v2/web/manifests/2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != 200 || resp2.Header.Get("Docker-Content-Digest") != digest {
		t.Fatalf("from the mesh: %d %q, want 200 %s", resp2.StatusCode, resp2.Header.Get("Docker-Content-Digest"), digest)
	}
	if code, out, msg := run(t, secondDir, "ls", "--json"); code != 0 || !strings.Contains(out, `"web"`) {
		t.Fatalf("the second node does not hold the release it served from the mesh: %d %s %s", code, out, msg)
	}

	// The key revoked in trust.yaml and SIGHUP: the registry follows the
	// node's policy at once.
	pub, err := signing.LoadPublicKey(filepath.Join(dir, "release.pub"))
	if err != nil {
		t.Fatal(err)
	}
	revoked := policy + fmt.Sprintf("revoked: [%q]\n", signing.KeyID(pub))
	if err := os.WriteFile(filepath.Join(nodeDir, "trust.yaml"), []byte(revoked), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := node.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the registry refusing the revoked key's release", func() bool {
		code, _ := get("/v2/web/manifests/2.0.0")
		return code == 404
	})

	hosts := filepath.Join(dir, "certs.d")
	code, out, msg := run(t, nodeDir, "registry", "config", "containerd", "--out", hosts,
		"--registry", "registry.example.com", "--registry", "docker.io", "--mirror", "http://"+regAddr, "--json")
	if code != 0 {
		t.Fatal(msg)
	}
	var ans struct{ Files []string }
	if err := json.Unmarshal([]byte(out), &ans); err != nil || len(ans.Files) != 2 {
		t.Fatalf("--json: %v %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(hosts, "registry.example.com", "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`server = "https://registry.example.com"`, `[host."http://` + regAddr + `"]`, `capabilities = ["pull", "resolve"]`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("hosts.toml lacks %s:\n%s", want, b)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(hosts, "docker.io", "hosts.toml")); !strings.Contains(string(b), `server = "https://registry-1.docker.io"`) {
		t.Fatalf("docker.io hosts.toml:\n%s", b)
	}
}

// TestRegistryFlagsRefused: bad registry flags stop the command with a usage
// error before anything starts or is written.
func TestRegistryFlagsRefused(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "--registry-listen", "127.0.0.1:0", "--registry-map", "nonsense"}, "UPSTREAM/PREFIX=NAMEPREFIX"},
		{[]string{"node", "--registry-map", "registry.example.com/team/="}, "needs --registry-listen"},
		{[]string{"node", "--registry-listen", "5000"}, "want HOST:PORT"},
		{[]string{"registry", "config", "containerd", "--out", filepath.Join(dir, "h"), "--mirror", "ftp://x"}, "want http://HOST:PORT"},
		{[]string{"registry", "config", "containerd", "--out", filepath.Join(dir, "h"), "--registry", "https://registry.example.com/x"}, "no scheme, no path"},
	} {
		args := c.args
		if args[0] == "node" {
			args = append(args, "--listen", "/ip4/127.0.0.1/tcp/0")
		}
		code, _, msg := run(t, filepath.Join(dir, "data"), args...)
		if code != 2 || !strings.Contains(msg, c.want) {
			t.Errorf("%v: exit %d %q, want 2 and %q", c.args, code, msg, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "h")); !os.IsNotExist(err) {
		t.Errorf("a refused config command wrote files: %v", err)
	}
}
