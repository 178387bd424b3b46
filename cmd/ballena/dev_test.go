package main

import (
	"bufio"
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
	"ballena.dev/launcher"
	"ballena.dev/placement"
)

// TestDevRunsTheSampleJob is `make run` as a test: `ballena dev` as a real
// process, a key, the sample whale published through the node, a job of two
// tasks placed, verified and started in cgroups, both answering; then SIGTERM
// stops the cluster and its tasks.
func TestDevRunsTheSampleJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: tasks run in cgroups and namespaces")
	}
	bin := ballenaBinary(t)
	dir := t.TempDir()
	devDir := filepath.Join(dir, "dev")
	metricsAddr := testnet.FreeAddr(t)
	cmd := exec.Command(bin, "dev", "--dir", devDir, "--api-listen", "127.0.0.1:0", "--metrics-listen", metricsAddr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	stderr.buf = &bytes.Buffer{}
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("dev stderr:\n%s", stderr.String())
		}
	})
	// The export line points the other commands at the server: its URL and the CA
	// it made for itself.
	exports := make(chan map[string]string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "export "); ok {
				env := map[string]string{}
				for _, kv := range strings.Fields(rest) {
					k, v, _ := strings.Cut(kv, "=")
					env[k] = v
				}
				exports <- env
			}
		}
	}()
	var url, caPath string
	select {
	case env := <-exports:
		url, caPath = env["BALLENA_SERVER"], env["BALLENA_CA"]
		if !strings.HasPrefix(url, "https://") || caPath != filepath.Join(devDir, "server", "ca.pem") {
			t.Fatalf("export line: %v", env)
		}
	case err := <-done:
		t.Fatalf("dev exited at start: %v\n%s", err, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("dev printed no server URL in 60s\n%s", stderr.String())
	}
	nodeDir := filepath.Join(devDir, "node")
	poll.Until(t, 20*time.Second, "the node's local API", func() bool {
		_, err := os.Stat(filepath.Join(nodeDir, "ballena.sock"))
		return err == nil
	})
	token, err := os.ReadFile(filepath.Join(devDir, "server", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) string {
		t.Helper()
		c := exec.Command(bin, append([]string{"--data", nodeDir}, args...)...)
		c.Dir = dir
		c.Env = append(os.Environ(), "BALLENA_SERVER="+url, "BALLENA_CA="+caPath, "BALLENA_TOKEN="+strings.TrimSpace(string(token)))
		b, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("ballena %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	cli("key", "generate", "--dir", dir, "release")
	policy := fmt.Sprintf("keys:\n  - path: %s\n    names: [\"hello\"]\n", filepath.Join(dir, "release.pub"))
	if err := os.WriteFile(filepath.Join(nodeDir, "trust.yaml"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	cli("publish", "--key", filepath.Join(dir, "release.key"), "--name", "hello", "--version", "1.0.0", sampleWhale(t))
	base := 20000 + os.Getpid()%20000
	job := fmt.Sprintf("name: hello\nartifact: hello@1.0.0\ncount: 2\nresources: {cpu: 100m, memory: 64MiB, pids: 64}\npriority: prod\nargs: [--port-base, \"%d\"]\n", base)
	if err := os.WriteFile(filepath.Join(dir, "hello.yaml"), []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	cli("job", "run", "hello.yaml")
	poll.Until(t, 60*time.Second, "2 running tasks", func() bool {
		var st placement.JobStatus
		return json.Unmarshal([]byte(cli("job", "status", "--json", "hello")), &st) == nil && st.Summary["running"] == 2
	})
	for i := 0; i < 2; i++ {
		var body string
		poll.Until(t, 20*time.Second, fmt.Sprintf("task %d answering", i), func() bool {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", base+i))
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
			return resp.StatusCode == 200
		})
		if !strings.Contains(body, fmt.Sprintf("task %d of job hello", i)) {
			t.Errorf("port %d answered %q", base+i, body)
		}
	}
	var tasks []launcher.Task
	if err := json.Unmarshal([]byte(cli("ps", "--json")), &tasks); err != nil || len(tasks) != 2 {
		t.Fatalf("ps: %v %+v", err, tasks)
	}
	// One metrics endpoint with both the server's and the node's families.
	raw, fams := scrape(t, "http://"+metricsAddr+"/metrics")
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ballena_placement_jobs", nil, 1},
		{"ballena_placement_tasks", []string{"state", "placed", "band", "prod"}, 2},
		{"ballena_raft_leader", nil, 1},
		{"ballena_launcher_starts_total", nil, 2},
		{"ballena_launcher_tasks", []string{"state", "running"}, 2},
		{"ballena_swarm_releases_held", nil, 1},
	} {
		if v := metricValue(fams, c.name, c.labels...); v != c.want {
			t.Errorf("dev metrics: %s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	metricstest.Promtool(t, "dev endpoint", raw)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dev exited with %v after SIGTERM", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("dev did not stop within 60s of SIGTERM")
	}
	for _, tk := range tasks {
		if syscall.Kill(tk.PID, 0) == nil {
			t.Errorf("task %s (pid %d) outlived `ballena dev`", tk.ID, tk.PID)
		}
	}
}
