package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"ballena.dev/internal/poll"
	"ballena.dev/internal/testnet"
)

// TestReleaseStoryInTheLogs: every step of a release's life logs its digest
// (and, once there is a task, the task's ID) as slog attributes, so that one
// grep for the digest over the nodes' logs follows it: published and
// announced on one node; fetched and verified, then (as root) verified for a
// task, started and ended on another.
func TestReleaseStoryInTheLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two nodes")
	}
	dir := t.TempDir()
	if code, _, msg := run(t, dir, "key", "generate", "--dir", dir, "release"); code != 0 {
		t.Fatal(msg)
	}
	policy := fmt.Sprintf("keys:\n  - path: %s\n    names: [\"hello\"]\n", filepath.Join(dir, "release.pub"))
	var data []string
	for _, n := range []string{"a", "b"} {
		d := filepath.Join(dir, n)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "trust.yaml"), []byte(policy), 0o600); err != nil {
			t.Fatal(err)
		}
		data = append(data, d)
	}
	a := startNodeAt(t, "storya", data[0])
	b := startNodeAt(t, "storyb", data[1], "--bootstrap", a.addr)
	whale := sampleWhale(t)
	digest := sha256Of(t, whale)
	bin := ballenaBinary(t)
	cli := func(p *daemonProc, args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"--data", p.data}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ballena %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	cli(a, "publish", "--key", filepath.Join(dir, "release.key"), "--name", "hello", "--version", "1.0.0", whale)
	cli(b, "fetch", "hello@1.0.0")

	type step struct {
		p    *daemonProc
		msg  string
		task string
	}
	steps := []step{
		{a, "release published", ""},
		{a, "release announced", ""},
		{b, "release fetched and verified", ""},
	}
	if os.Geteuid() == 0 {
		task := cli(b, "run", "-d", "hello@1.0.0", "--memory", "64MiB", "--", "--listen", testnet.FreeAddr(t))
		cli(b, "stop", task, "--timeout", "5s")
		steps = append(steps, step{b, "release verified", task}, step{b, "task started", task}, step{b, "task ended", task})
	} else {
		t.Log("not root: the task steps (verify for a start, start, exit) are not run")
	}
	// The last step is logged as the task ends, which stop waits for; the log
	// reaches stderr a moment later.
	poll.Until(t, 10*time.Second, "every step in the logs", func() bool {
		for _, s := range steps {
			if findLogLine(s.p.stderr(), s.msg, digest, s.task) == "" {
				return false
			}
		}
		return true
	})
	// One grep for the digest over both logs finds every step, in order on each node.
	var grepped []string
	for _, p := range []*daemonProc{a, b} {
		for _, line := range strings.Split(p.stderr(), "\n") {
			if strings.Contains(line, "digest="+digest) {
				grepped = append(grepped, line)
			}
		}
	}
	for _, s := range steps {
		if findLogLine(strings.Join(grepped, "\n"), s.msg, digest, s.task) == "" {
			t.Errorf("grep %s: no %q line (task %q)", digest[:12], s.msg, s.task)
		}
	}
	if t.Failed() {
		t.Logf("grep:\n%s", strings.Join(grepped, "\n"))
	}
}

// findLogLine is the first line of log (slog's text format) with this message,
// digest and, when given, task.
func findLogLine(log, msg, digest, task string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, fmt.Sprintf("msg=%q", msg)) && strings.Contains(line, "digest="+digest) &&
			(task == "" || strings.Contains(line, "task="+task)) {
			return line
		}
	}
	return ""
}
