package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ballena.dev/placement"
)

func TestServerJobNodesCLI(t *testing.T) {
	dir := t.TempDir()
	// ballena server, in-process, on a free loopback port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
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
	url := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url + "/v1/status")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not answer within 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // waiting for a port to open has no event to await
	}
	tokPath := filepath.Join(dir, "admin.token")
	if fi, err := os.Stat(tokPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v %v", fi, err)
	}
	join, err := placement.ReadToken(filepath.Join(dir, "join.token"))
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	node, err := placement.NewNodeClient(url, join, key)
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
		{"no server", []string{"nodes", "--server", "http://127.0.0.1:1"}, exitUnavailable, "placement server"},
		{"unknown node", append(append([]string{"node", "drain"}, srv...), "12D3KooWnope"), exitNotFound, "no node"},
	} {
		code, _, msg := run(t, dir, tc.args...)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: exit %d %q, want %d containing %q", tc.name, code, msg, tc.code, tc.msg)
		}
	}
}
