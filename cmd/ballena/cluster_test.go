package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"io"

	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ballena.dev/internal/poll"
	"ballena.dev/internal/testnet"
	"ballena.dev/placement/cellca"

	"ballena.dev/placement"
)

func TestServerJobNodesCLI(t *testing.T) {
	dir := t.TempDir()
	// ballena server, in-process, on a free loopback port.
	addr := testnet.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var serverOut bytes.Buffer
	go func() {
		app := newApp()
		app.Writer, app.ErrWriter = &serverOut, &serverOut
		done <- runApp(ctx, app, []string{"ballena", "server", "--data", dir, "--listen", addr, "--node-ttl", "1h"})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	}()
	url := "https://" + addr
	tokPath := filepath.Join(dir, "admin.token")
	// Waiting for a port to open has no event to await.
	poll.Until(t, 30*time.Second, "the server's CA and API", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil && fileExists(filepath.Join(dir, "ca.pem"))
	})
	// A cell of one without cell flags made its own CA and tokens; secrets are 0600.
	for _, f := range []string{"admin.token", "join.token", "ca.key", "tls/key.pem"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	pool, err := cellca.LoadPool(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// The API is HTTPS only, TLS 1.3, with the cell CA's certificate.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12}}}
	if resp, err := hc.Get(url + "/v1/status"); err == nil {
		resp.Body.Close()
		t.Fatal("the API accepted TLS 1.2")
	}
	if resp, err := http.Get("http://" + addr + "/v1/status"); err == nil && resp.StatusCode < 400 {
		resp.Body.Close()
		t.Fatal("the API answered plain HTTP")
	}
	if code, _, msg := run(t, t.TempDir(), "nodes", "--server", url, "--token-file", tokPath); code != exitUnavailable || !strings.Contains(msg, "--ca") {
		t.Errorf("a client without the cell CA: exit %d %q, want %d and a pointer to --ca", code, msg, exitUnavailable)
	}
	join, err := placement.ReadToken(filepath.Join(dir, "join.token"))
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	node, err := placement.NewNodeClient(url, join, key, placement.WithTLS(cellca.ClientConfig(pool)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := node.Register(ctx, placement.NodeRegistration{Labels: map[string]string{"rack": "r1"},
		Capacity: placement.Resources{CPU: 2000, Memory: 4 << 30}}); err != nil {
		t.Fatal(err)
	}

	jobFile := filepath.Join(t.TempDir(), "api.yaml")
	os.WriteFile(jobFile, []byte("name: api\nartifact: api@1.4.0\ncount: 3\nresources:\n  cpu: 1000m\n  memory: 256MiB\n"), 0o644)
	srv := []string{"--server", url, "--token-file", tokPath}

	code, out, msg := run(t, dir, append(append([]string{"job", "run"}, srv...), jobFile)...)
	if code != 0 || !strings.Contains(out, "2 placed, 1 waiting") || !strings.Contains(out, "0/1 machines fit: 1 lacking 1000m cpu") {
		t.Fatalf("job run: %d %q %s", code, out, msg)
	}
	code, out, _ = run(t, dir, append([]string{"job", "status", "api"}, srv...)...)
	if code != 0 || !strings.Contains(out, node.NodeID()) || !strings.Contains(out, "1 waiting") {
		t.Errorf("job status: %d %q", code, out)
	}
	code, out, _ = run(t, dir, append([]string{"nodes"}, srv...)...)
	if code != 0 || !strings.Contains(out, node.NodeID()) || !strings.Contains(out, "2000m/2000m") || !strings.Contains(out, "rack=r1") {
		t.Errorf("nodes: %d %q", code, out)
	}
	code, out, _ = run(t, dir, append(append([]string{"node", "drain"}, srv...), node.NodeID()[:20])...)
	if code != 0 || !strings.Contains(out, "draining") {
		t.Errorf("node drain: %d %q", code, out)
	}
	code, _, _ = run(t, dir, append([]string{"job", "stop"}, append(srv, "api")...)...)
	if code != 0 {
		t.Errorf("job stop: %d", code)
	}
	if code, out, msg := run(t, dir, append([]string{"job", "history", "api"}, srv...)...); code != 0 || !strings.Contains(out, "1 (current)") || !strings.Contains(out, "cancelled") {
		t.Errorf("job history: %d %q %s", code, out, msg)
	}

	wrongTok := filepath.Join(t.TempDir(), "wrong.token")
	os.WriteFile(wrongTok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	// Flags after the job name work too, as the help shows.
	if code, out, msg := run(t, dir, "job", "status", "api", "--json", "--server", url); code != 0 || !strings.Contains(out, `"stopped": true`) {
		t.Errorf("job status api --json: %d %q %s", code, out, msg)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("name: api\nartifact: api@1.4.0\nresources:\n  cpu: 500m\n  memory: 256XB\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"malformed job", append(append([]string{"job", "run"}, srv...), bad), exitUsage, `bad.yaml:5: resources.memory: "256XB" is not a size`},
		{"unknown job", append([]string{"job", "status", "nope"}, srv...), exitNotFound, "not found"},
		{"wrong token", []string{"job", "stop", "--server", url, "--token-file", wrongTok, "api"}, exitFailure, "wrong admin token"},
		{"token file with garbage", []string{"job", "stop", "--server", url, "--token-file", jobFile, "api"}, exitUsage, "more than one printable token"},
		{"no server", []string{"nodes", "--server", "https://127.0.0.1:1"}, exitUnavailable, "placement server"},
		{"http server URL list with garbage", []string{"nodes", "--server", url + ",ftp://x"}, exitUsage, "want https://host:port"},
		{"unknown node", append(append([]string{"node", "drain"}, srv...), "12D3KooWnope"), exitNotFound, "no node"},
		{"promote with no rollout", append([]string{"job", "promote", "api"}, srv...), exitUsage, "no rollout in progress (the last one is cancelled)"},
		{"revert to a version never made", append([]string{"job", "revert", "api", "9"}, srv...), exitNotFound, "job api has no version 9"},
		{"revert to no version", append([]string{"job", "revert", "api", "latest"}, srv...), exitUsage, `"latest" is not a version number`},
		{"wait on a stopped job", append([]string{"job", "wait", "api", "--healthy", "--timeout", "10s"}, srv...), exitFailure, "job api is stopped"},
	} {
		code, _, msg := run(t, dir, tc.args...)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: exit %d %q, want %d containing %q", tc.name, code, msg, tc.code, tc.msg)
		}
	}

	// The cell of one lists itself as its leader, healthy.
	code, out, msg = run(t, dir, "server", "members", "--json", "--server", url)
	var members []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &members) != nil || len(members) != 1 ||
		members[0]["leader"] != true || members[0]["healthy"] != true || members[0]["name"] == "" {
		t.Errorf("server members --json: %d %q %s", code, out, msg)
	}
	// A revoked node can no longer heartbeat, and says so.
	if code, out, msg := run(t, dir, "nodes", "revoke", node.NodeID(), "--server", url); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("nodes revoke: %d %q %s", code, out, msg)
	}
	if _, err := node.Heartbeat(ctx, placement.Heartbeat{}); !placement.IsUnauthorized(err) {
		t.Errorf("heartbeat of a revoked node: %v, want refused", err)
	}
	if _, _, err := node.Register(ctx, placement.NodeRegistration{Capacity: placement.Resources{CPU: 2000, Memory: 4 << 30}}); !placement.IsUnauthorized(err) {
		t.Errorf("registration of a revoked node: %v, want refused", err)
	}
}

func TestCellInitAndCert(t *testing.T) {
	cell := filepath.Join(t.TempDir(), "cell")
	if code, out, msg := run(t, t.TempDir(), "cell", "init", "--out", cell); code != 0 || !strings.Contains(out, "ca.pem") {
		t.Fatalf("cell init: %d %q %s", code, out, msg)
	}
	for f, mode := range map[string]os.FileMode{"ca.pem": 0o644, "ca.key": 0o600, "admin.token": 0o600, "join.token": 0o600} {
		if fi, err := os.Stat(filepath.Join(cell, f)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", f, fi, err, mode)
		}
	}
	if code, _, msg := run(t, t.TempDir(), "cell", "init", "--out", cell); code != exitUsage || !strings.Contains(msg, "already holds a CA") {
		t.Errorf("cell init over a cell: %d %s", code, msg)
	}
	out := filepath.Join(t.TempDir(), "s1-tls")
	if code, _, msg := run(t, t.TempDir(), "cell", "cert", "--cell", cell, "--server", "--name", "s1", "--host", "10.0.0.1", "--out", out); code != 0 {
		t.Fatalf("cell cert: %d %s", code, msg)
	}
	id, err := cellca.LoadIdentity(out, filepath.Join(cell, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "s1" || id.Cert.Leaf.VerifyHostname("10.0.0.1") != nil || id.Cert.Leaf.VerifyHostname("127.0.0.1") != nil {
		t.Errorf("certificate: name %q, hosts %v %v", id.Name, id.Cert.Leaf.IPAddresses, id.Cert.Leaf.DNSNames)
	}
	if fi, err := os.Stat(filepath.Join(out, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem: %v %v", fi, err)
	}
	// A certificate from another CA is not a server of this cell.
	other := filepath.Join(t.TempDir(), "other")
	run(t, t.TempDir(), "cell", "init", "--out", other)
	if _, err := cellca.LoadIdentity(out, filepath.Join(other, "ca.pem")); err == nil {
		t.Error("a certificate of another cell's CA was accepted")
	}
}

// cliServer runs `ballena server` in-process on a free loopback port and returns
// its URL once it listens.
func cliServer(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		app := newApp()
		app.Writer, app.ErrWriter = pw, io.Discard
		done <- runApp(ctx, app, append([]string{"ballena", "server", "--data", dir, "--listen", "127.0.0.1:0",
			"--raft-listen", "127.0.0.1:0"}, extra...))
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "placement server listening on "); ok {
				urls <- strings.Fields(rest)[0]
			}
		}
		close(urls)
		io.Copy(io.Discard, pr) // a line too long for the scanner must not block the server
	}()
	select {
	case u, ok := <-urls:
		if !ok {
			t.Fatal("server exited before listening")
		}
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("server did not listen within 30s")
	}
	return ""
}

// TestServerBackupRestore: `server backup` writes the cell's state; a new cell
// started with `--restore` has it.
func TestServerBackupRestore(t *testing.T) {
	dir := t.TempDir()
	url := cliServer(t, dir)
	jobFile := filepath.Join(t.TempDir(), "api.yaml")
	os.WriteFile(jobFile, []byte("name: api\nartifact: api@1.4.0\ncount: 2\nresources: {cpu: 100m, memory: 64MiB}\n"), 0o644)
	if code, out, msg := run(t, dir, "job", "run", "--server", url, jobFile); code != 0 {
		t.Fatalf("job run: %d %s %s", code, out, msg)
	}
	snap := filepath.Join(t.TempDir(), "cell.snap")
	if code, out, msg := run(t, dir, "server", "backup", "--server", url, snap); code != 0 || !strings.Contains(out, "backup written") {
		t.Fatalf("server backup: %d %s %s", code, out, msg)
	}
	if fi, err := os.Stat(snap); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	dir2 := t.TempDir()
	url2 := cliServer(t, dir2, "--restore", snap)
	code, out, msg := run(t, dir2, "job", "status", "--json", "--server", url2, "api")
	if code != 0 || !strings.Contains(out, `"name": "api"`) {
		t.Fatalf("job status on the restored cell: %d %s %s", code, out, msg)
	}
	// A restore into a data dir that has state is refused.
	if code, _, msg := run(t, t.TempDir(), "server", "--data", dir2, "--listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0", "--restore", snap); code != exitUsage || !strings.Contains(msg, "new data dir") {
		t.Errorf("restore over a cell's state: %d %s", code, msg)
	}
}
