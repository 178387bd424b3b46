package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ballena.dev/placement"
)

// TestEventsCommand: `ballena events --follow --job J --json --count N`
// against a real server prints the ready line, then J's changes (and no other
// job's) as JSON lines, and exits 0 after N events; without --follow it is a
// usage error.
func TestEventsCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	dir := t.TempDir()
	srvDir := filepath.Join(dir, "server")
	apiURL := uiTestServer(t, srvDir)
	srv := []string{"--server", apiURL, "--ca", filepath.Join(srvDir, "ca.pem"), "--token-file", filepath.Join(srvDir, "admin.token")}

	if code, _, msg := run(t, dir, "events"); code != exitUsage || !strings.Contains(msg, "--follow") {
		t.Fatalf("events without --follow: exit %d %q", code, msg)
	}

	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		app := newApp()
		app.Writer, app.ErrWriter = pw, io.Discard
		done <- runApp(context.Background(), app, append([]string{"ballena", "events", "--data", dir, "--follow", "--job", "api", "--json", "--count", "2"}, srv...))
		pw.Close()
	}()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() (placement.Event, bool) {
		select {
		case l, ok := <-lines:
			if !ok {
				return placement.Event{}, false
			}
			var e placement.Event
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("not a JSON event: %q", l)
			}
			return e, true
		case <-time.After(30 * time.Second):
			t.Fatal("no event line within 30s")
		}
		return placement.Event{}, false
	}
	if e, _ := next(); e.Type != placement.EventReady {
		t.Fatalf("first line: %+v, want the ready event", e)
	}
	for _, name := range []string{"web", "api"} {
		jobFile := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(jobFile, []byte("name: "+name+"\nartifact: "+name+"@1.0.0\ncount: 1\nresources: {cpu: 100m, memory: 64MiB}\npriority: prod\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if code, out, msg := run(t, dir, append(append([]string{"job", "run"}, srv...), jobFile)...); code != 0 {
			t.Fatalf("job run: %s %s", out, msg)
		}
	}
	var got []string
	for {
		e, ok := next()
		if !ok {
			break
		}
		if e.Job != "api" {
			t.Fatalf("event of job %q on api's stream: %+v", e.Job, e)
		}
		got = append(got, e.Type+": "+e.Summary)
	}
	if err := <-done; err != nil {
		t.Fatalf("events: %v", err)
	}
	// No machine: the job registers and its task waits for room.
	if len(got) != 2 || got[0] != "job: job api v1: 1 × api@1.0.0 (prod); rollout of v1 running" || !strings.HasPrefix(got[1], "task: task api[0] pending") {
		t.Fatalf("events:\n%s", strings.Join(got, "\n"))
	}
}
