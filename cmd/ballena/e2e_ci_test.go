package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"ballena.dev/placement"
)

// ciRelease runs README's release script, as written, from a CI runner on the
// server's host: it builds the service, signs it, pushes it to the fleet with
// --wait-replicas 3, runs the job and waits until it is healthy. Three
// releases: the first, a good update that rolls over fully, and a build whose
// health check fails, which stops at its canary and is reverted, the script
// exiting 1. Sampled all along: never more than max_parallel tasks down, never
// more than the canary on the bad version.
func (e *e2e) ciRelease() {
	t := e.t
	scripts := readmeFences(t, "### A release script for the CI runner", "sh")
	jobs := readmeFences(t, "### A release script for the CI runner", "yaml")
	if len(scripts) != 1 || len(jobs) != 1 {
		t.Fatalf("README: %d release scripts and %d job files under the CI section, want one of each", len(scripts), len(jobs))
	}
	dir := e.path("ci")
	files := map[string]string{"release.sh": scripts[0], "deploy/api.yaml": jobs[0],
		"go.mod": "module example.com/api\n\ngo 1.26\n"}
	hello, err := os.ReadFile("../../testdata/hello/main.go")
	if err != nil {
		t.Fatal(err)
	}
	files["cmd/api/main.go"] = string(hello)
	// A build with -tags unhealthy fails its health check (GOFLAGS, below).
	files["cmd/api/unhealthy.go"] = "//go:build unhealthy\n\npackage main\n\nfunc init() { healthz = \"fail\" }\n"
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The runner's PATH has ballena and go; its secrets come as the script says.
	binDir := filepath.Join(dir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(e.bin, filepath.Join(binDir, "ballena")); err != nil {
		t.Fatal(err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(e.path("admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"PATH="+binDir+":"+filepath.Dir(goBin)+":"+os.Getenv("PATH"),
		"GOTOOLCHAIN=local", "GOPROXY=off", "GOFLAGS=",
		"BALLENA_DATA="+filepath.Join(dir, "runner-data"),
		"SIGNING_KEY="+e.path("release.key"),
		"FLEET_PSK="+e.path("fleet.psk"),
		"FLEET_BOOTSTRAP="+e.nodes[0].addr,
		"BALLENA_SERVER="+e.server,
		"BALLENA_CA="+filepath.Join(e.path("server"), "ca.pem"),
		"BALLENA_TOKEN="+strings.TrimSpace(string(token)))
	release := func(version string, extraEnv ...string) (int, string, time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := e.net.Hosts[e2eServerHost].Command(ctx, "sh", "release.sh", version)
		cmd.Dir, cmd.Env = dir, append(env, extraEnv...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), out.String(), took
		}
		if err != nil {
			t.Fatalf("release.sh %s: %v", version, err)
		}
		return 0, out.String(), took
	}

	code, out, took := release("1.0.0")
	if code != 0 {
		t.Fatalf("release.sh 1.0.0: exit %d\n%s", code, out)
	}
	mustContain(t, out, "replicas confirmed", "job api version 1: rollout successful, 4 tasks healthy")
	t.Logf("e2e: README release script, first release api@1.0.0: exit 0 after %.1fs", took.Seconds())
	st := e.waitHealthy("api", 1)

	// A good update rolls over fully; at no sample are more than
	// max_parallel (1) of the 4 tasks down.
	watch := e.watchJob("api", func(st *placement.JobStatus) string {
		if up := upTasks(st, nil); up < 3 {
			return fmt.Sprintf("%d of 4 tasks running during the update to 1.1.0", up)
		}
		return ""
	})
	code, out, took = release("1.1.0")
	watch()
	if code != 0 {
		t.Fatalf("release.sh 1.1.0: exit %d\n%s", code, out)
	}
	st = e.waitHealthy("api", 2)
	t.Logf("e2e: README release script, update to api@1.1.0 (canary, then one at a time, each healthy for 5s): exit 0 after %.1fs", took.Seconds())
	held := e.downloaded()

	// A build whose /healthz fails: its canary turns unhealthy, the rollout
	// fails, auto_revert goes back to version 2, and the script fails.
	watch = e.watchJob("api", func(st *placement.JobStatus) string {
		bad := 0
		for _, ts := range st.Tasks {
			if ts.Version == 3 && ts.Desired == placement.DesiredRun && ts.ClientStatus == placement.ClientRunning {
				bad++
			}
		}
		if old := upTasks(st, func(v uint64) bool { return v != 3 }); old < 3 || bad > 1 {
			return fmt.Sprintf("%d tasks of the good version and %d of the bad one run during the bad release", old, bad)
		}
		return ""
	})
	code, out, took = release("1.2.0", "GOFLAGS=-tags=unhealthy")
	watch()
	if code != 1 {
		t.Fatalf("release.sh 1.2.0 (unhealthy build): exit %d, want 1\n%s", code, out)
	}
	mustContain(t, out, "the rollout of version 3 failed", "unhealthy", "went back to version 2 as version 4")
	t.Logf("e2e: README release script, unhealthy api@1.2.0: exit 1 after %.1fs: %s", took.Seconds(), lastLine(out))
	st = e.waitHealthy("api", 4)
	for _, ts := range st.Tasks {
		if ts.Version != 2 && ts.Version != 4 {
			t.Errorf("after the revert task %d runs version %d", ts.Index, ts.Version)
		}
	}
	// Reverting fetched nothing: every node already held api@1.1.0.
	for node, before := range held {
		for digest, n := range before {
			if after := e.downloaded()[node][digest]; after > n {
				t.Errorf("node %s downloaded %d more bytes of %.12s for the revert", node, after-n, digest)
			}
		}
	}
	hist := e.admin("job", "history", "api")
	for _, want := range []string{"4 (current)", "api@1.1.0", "failed", "auto_revert from version 3 to version 2", "unhealthy: health check failed"} {
		if !strings.Contains(hist, want) {
			t.Errorf("job history lacks %q:\n%s", want, hist)
		}
	}
	e.admin("job", "stop", "api")
	e.push64()
}

// push64 measures a push from the runner to the fleet: a 64 MiB whale,
// signed apart, published with --wait-replicas 3, the runner's uplink capped
// like every node's. Logged, not asserted beyond success: timings are
// measurements.
func (e *e2e) push64() {
	t := e.t
	api := e.whale("api-big", e2eBig)
	e.cli(nil, "sign", "--key", e.path("release.key"), "--name", "api-big", "--version", "1.0.0", api)
	h := e.net.Hosts[e2eServerHost]
	start := time.Now()
	out := e.cli(h, "--data", e.path("runner64"), "publish", "--envelope", api+".dsse.json", api,
		"--bootstrap", e.nodes[0].addr, "--psk", e.path("fleet.psk"), "--upload-limit", fmt.Sprint(e2eCap),
		"--wait-replicas", "3", "--timeout", "2m", "--json")
	took := time.Since(start)
	var res pushResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Replicas) < 3 {
		t.Fatalf("publish --wait-replicas 3 --json: %v: %s", err, out)
	}
	bound := fluidBound(e2eBig, e2eCap, e2eCap, e2eCap, 3)
	t.Logf("e2e: push of %s from a runner to the %d-node fleet, every link %s/s: --wait-replicas 3 exit 0 after %.2fs "+
		"(fluid bound for 3 copies %.2fs); the runner sent %s (%.2f copies)",
		mib(e2eBig), e2eNodes, mib(e2eCap), took.Seconds(), bound.Seconds(), mib(res.BytesSent), float64(res.BytesSent)/float64(e2eBig))
}

// upTasks counts the job's tasks running as wanted, of the versions ok
// accepts (nil: any).
func upTasks(st *placement.JobStatus, ok func(uint64) bool) int {
	n := 0
	for _, ts := range st.Tasks {
		if ts.Desired == placement.DesiredRun && ts.ClientStatus == placement.ClientRunning && (ok == nil || ok(ts.Version)) {
			n++
		}
	}
	return n
}

// waitHealthy waits until the job is at version v, its rollout successful and
// every task healthy.
func (e *e2e) waitHealthy(job string, v uint64) *placement.JobStatus {
	e.t.Helper()
	var st *placement.JobStatus
	e.waitFor(fmt.Sprintf("job %s version %d rolled out and healthy", job, v), func() (bool, string) {
		var err error
		if st, err = e.jobStatus(job); err != nil {
			return false, err.Error()
		}
		r := st.Rollout
		if st.Job.Version != v || r == nil || r.Status != placement.DeploySuccessful {
			return false, describeJob(st)
		}
		for _, ts := range st.Tasks {
			if ts.Health != placement.HealthHealthy {
				return false, describeJob(st)
			}
		}
		return true, ""
	})
	return st
}

// watchJob samples the job's status until the returned stop is called, and
// fails the test with the first complaint bad makes.
func (e *e2e) watchJob(job string, bad func(*placement.JobStatus) string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var complaint string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if st, err := e.jobStatus(job); err == nil {
				if c := bad(st); c != "" && complaint == "" {
					complaint = c + ": " + describeJob(st)
				}
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		if complaint != "" {
			e.t.Fatal(complaint)
		}
	}
}

// downloaded is every node's received bytes per digest.
func (e *e2e) downloaded() map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	for _, n := range e.nodes {
		s, err := e.status(n)
		if err != nil {
			e.t.Fatalf("status of %s: %v", n.host.Name, err)
		}
		out[n.host.Name] = map[string]int64{}
		for _, tr := range s.Transfers {
			out[n.host.Name][tr.Digest] = tr.BytesDownloaded
		}
	}
	return out
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
