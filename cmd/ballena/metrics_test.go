package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"ballena.dev/internal/metricstest"
	"ballena.dev/internal/poll"
	"ballena.dev/internal/testnet"
	"ballena.dev/placement"
)

// TestMetricsEndpoints: a real server and a real node, each with
// --metrics-listen; a release published, a job placed on the node and (as root)
// its task started. Both endpoints then show the key families with values that
// follow from that work, and both pass `promtool check metrics`.
func TestMetricsEndpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and a node")
	}
	root := os.Geteuid() == 0
	dir := t.TempDir()
	srvDir := filepath.Join(dir, "server")
	url, srvMetrics := metricsServer(t, srvDir)
	if !strings.HasPrefix(srvMetrics, "http://127.0.0.1:") {
		t.Fatalf("server metrics URL %q", srvMetrics)
	}

	nodeDir := filepath.Join(dir, "node")
	nodeAddr := testnet.FreeAddr(t)
	startNodeAt(t, "metricsnode", nodeDir, "--server", url, "--ca", filepath.Join(srvDir, "ca.pem"),
		"--join-token-file", filepath.Join(srvDir, "join.token"), "--metrics-listen", nodeAddr)
	nodeMetrics := "http://" + nodeAddr + "/metrics"
	if code, _, msg := run(t, nodeDir, "key", "generate", "--dir", dir, "release"); code != 0 {
		t.Fatal(msg)
	}
	policy := fmt.Sprintf("keys:\n  - path: %s\n    names: [\"hello\"]\n", filepath.Join(dir, "release.pub"))
	if err := os.WriteFile(filepath.Join(nodeDir, "trust.yaml"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(ballenaBinary(t), "publish", "--data", nodeDir, "--key", filepath.Join(dir, "release.key"),
		"--name", "hello", "--version", "1.0.0", sampleWhale(t)).CombinedOutput(); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	srv := []string{"--server", url, "--ca", filepath.Join(srvDir, "ca.pem"), "--token-file", filepath.Join(srvDir, "admin.token")}
	poll.Until(t, 30*time.Second, "the node ready in the cell", func() bool {
		_, fams := scrape(t, srvMetrics)
		return metricValue(fams, "ballena_placement_nodes", "state", "ready") == 1
	})
	jobFile := filepath.Join(dir, "hello.yaml")
	base := 23000 + os.Getpid()%20000
	if err := os.WriteFile(jobFile, []byte(fmt.Sprintf("name: hello\nartifact: hello@1.0.0\ncount: 1\n"+
		"resources: {cpu: 100m, memory: 64MiB, pids: 64}\npriority: prod\nargs: [--port-base, %q]\n", fmt.Sprint(base))), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, msg := run(t, dir, append(append([]string{"job", "run"}, srv...), jobFile)...); code != 0 {
		t.Fatalf("job run: %d %s %s", code, out, msg)
	}
	if root {
		poll.Until(t, 60*time.Second, "the task running on the node", func() bool {
			_, fams := scrape(t, nodeMetrics)
			return metricValue(fams, "ballena_launcher_tasks", "state", "running") == 1
		})
	}

	// The server: the job, its task placed in the prod band, the node ready,
	// the placement and its Raft entry timed, this server the leader. Without
	// root the task fails to start and may be placed again.
	placedMin, placedMax := 1.0, 1.0
	if !root {
		placedMin, placedMax = 0, 1e9
	}
	raw, fams := scrape(t, srvMetrics)
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
		max    float64
	}{
		{"ballena_placement_jobs", nil, 1, 1},
		{"ballena_placement_tasks", []string{"state", "placed", "band", "prod"}, placedMin, 1},
		{"ballena_placement_tasks", []string{"state", "pending", "band", "batch"}, 0, 0},
		{"ballena_placement_nodes", []string{"state", "ready"}, 1, 1},
		{"ballena_placement_nodes", []string{"state", "down"}, 0, 0},
		{"ballena_placement_pending_evaluations", nil, 0, 0},
		{"ballena_placement_placements_total", nil, 1, placedMax},
		{"ballena_placement_preemptions_total", nil, 0, 0},
		{"ballena_placement_latency_seconds", nil, 1, placedMax}, // observations
		{"ballena_raft_leader", nil, 1, 1},
		{"ballena_raft_commit_index", nil, 2, 1e9},
		{"ballena_raft_apply_duration_seconds", nil, 2, 1e9},
		{"go_goroutines", nil, 1, 1e9},
		{"process_resident_memory_bytes", nil, 1, 1e12},
	} {
		if v := metricValue(fams, c.name, c.labels...); v < c.min || v > c.max {
			t.Errorf("server %s%v = %v, want in [%v, %v]", c.name, c.labels, v, c.min, c.max)
		}
	}
	// The server's garbage collector target, unless the environment sets one.
	if _, set := os.LookupEnv("GOGC"); !set {
		if v := metricValue(fams, "go_gc_gogc_percent"); v != placement.ServerGCPercent {
			t.Errorf("server go_gc_gogc_percent = %v, want %d (placement.ServerGCPercent)", v, placement.ServerGCPercent)
		}
	}
	metricstest.Promtool(t, "server", raw)

	// The node: the release held, the task (as root) started after a
	// verification, the swarm's counters there.
	raw, fams = scrape(t, nodeMetrics)
	checks := []struct {
		name   string
		labels []string
		min    float64
		max    float64
	}{
		{"ballena_swarm_releases_held", nil, 1, 1},
		{"ballena_swarm_peers", nil, 0, 1e9},
		{"ballena_swarm_sent_bytes_total", nil, 0, 1e12},
		{"ballena_swarm_received_bytes_total", nil, 0, 1e12},
		{"ballena_swarm_pieces_verified_total", nil, 0, 1e9},
		{"ballena_swarm_pieces_failed_total", nil, 0, 0},
		{"ballena_swarm_transfers", []string{"state", "seeding"}, 1, 1},
		{"ballena_swarm_transfers", []string{"state", "downloading"}, 0, 0},
		{"ballena_launcher_restarts_total", nil, 0, 0},
		{"ballena_launcher_oom_kills_total", nil, 0, 0},
		{"go_goroutines", nil, 1, 1e9},
		{"process_resident_memory_bytes", nil, 1, 1e12},
	}
	if root {
		checks = append(checks, []struct {
			name   string
			labels []string
			min    float64
			max    float64
		}{
			{"ballena_launcher_starts_total", nil, 1, 1},
			{"ballena_launcher_tasks", []string{"state", "running"}, 1, 1},
			{"ballena_launcher_launch_duration_seconds", nil, 1, 1},
			{"ballena_launcher_verification_duration_seconds", nil, 1, 1e9},
		}...)
	} else {
		checks = append(checks, []struct {
			name   string
			labels []string
			min    float64
			max    float64
		}{{"ballena_launcher_starts_total", nil, 0, 1e9}, {"ballena_launcher_tasks", []string{"state", "running"}, 0, 1e9}}...)
	}
	for _, c := range checks {
		if v := metricValue(fams, c.name, c.labels...); v < c.min || v > c.max {
			t.Errorf("node %s%v = %v, want in [%v, %v]", c.name, c.labels, v, c.min, c.max)
		}
	}
	metricstest.Promtool(t, "node", raw)
}

// metricsServer runs `ballena server --metrics-listen` in-process on loopback
// and returns its API URL and its metrics URL.
func metricsServer(t *testing.T, dir string) (apiURL, metricsURL string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		app := newApp()
		app.Writer, app.ErrWriter = pw, io.Discard
		done <- runApp(ctx, app, []string{"ballena", "server", "--data", dir, "--listen", "127.0.0.1:0",
			"--raft-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"})
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	type urls struct{ api, metrics string }
	got := make(chan urls, 1)
	go func() {
		var u urls
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "metrics "); ok {
				u.metrics = rest
			}
			if rest, ok := strings.CutPrefix(sc.Text(), "placement server listening on "); ok {
				u.api = strings.Fields(rest)[0]
				got <- u
			}
		}
		close(got)
		io.Copy(io.Discard, pr)
	}()
	select {
	case u, ok := <-got:
		if !ok {
			t.Fatal("server exited before listening")
		}
		return u.api, u.metrics
	case <-time.After(30 * time.Second):
		t.Fatal("server did not listen within 30s")
	}
	return "", ""
}

// scrape fetches a metrics endpoint and parses it.
func scrape(t *testing.T, url string) ([]byte, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s %v", url, resp.Status, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape %s: content type %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parse the scrape of %s: %v", url, err)
	}
	return raw, fams
}

// metricValue is the value of the family's sample with these label pairs (the
// observation count of a histogram); -1 when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.Label {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return -1
}
