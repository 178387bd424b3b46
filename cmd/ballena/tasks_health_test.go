package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/cgtest"
	"ballena.dev/internal/poll"
	"ballena.dev/launcher"
	"ballena.dev/placement"
)

// ps and inspect show a task's health and verdict (the agent's tasks carry
// a check; here a launcher on the data dir starts one the same way).
func TestPsShowsTaskHealth(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: tasks run in new namespaces and cgroups")
	}
	f := newFixture(t)
	parent := fmt.Sprintf("ballena-clihealth-%d", os.Getpid())
	t.Cleanup(func() { cgtest.RemoveParent(parent) })
	trust := f.write(t, "trust.yaml", "keys:\n  - path: release.pub\n    names: [\"api\"]\n")
	cg := "--cgroup-parent=" + parent

	st, err := artifact.Open(f.data)
	if err != nil {
		t.Fatal(err)
	}
	l, err := launcher.New(launcher.Config{DataDir: f.data, DB: st.DB(), CgroupParent: parent, WarmShims: -1,
		Verifier: &launcher.StoreVerifier{Store: st, PolicyPath: trust}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	check := &placement.Check{HTTP: "/healthz", PortEnv: "PORT", Interval: 50 * time.Millisecond, Timeout: 2 * time.Second, Failures: 40}
	tk, err := l.Start(context.Background(), launcher.TaskSpec{Artifact: "api@1.4.0",
		Health: &launcher.HealthSpec{Check: check, MinHealthyTime: 100 * time.Millisecond, HealthyDeadline: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "the verdict", func() bool {
		got, err := l.Get(tk.ID)
		return err == nil && got.Healthy != nil
	})
	l.Close() // the task runs on; ps adopts it
	st.Close()
	t.Cleanup(func() { run(t, f.data, "stop", tk.ID, "--timeout", "5s", cg) })

	_, out, _ := run(t, f.data, "ps", cg)
	mustContain(t, out, "HEALTH", tk.ID, "healthy, verdict ok")
	code, out, msg := run(t, f.data, "ps", "--json", cg)
	var ts []launcher.Task
	if code != 0 || json.Unmarshal([]byte(out), &ts) != nil || len(ts) != 1 {
		t.Fatalf("ps --json: exit %d (%s): %s", code, msg, out)
	}
	if ts[0].Health != placement.HealthHealthy || ts[0].Healthy == nil || !*ts[0].Healthy {
		t.Errorf("ps --json: health %q healthy %v", ts[0].Health, ts[0].Healthy)
	}
	port, _ := strings.CutPrefix(envOf(ts[0], "PORT"), "PORT=")
	_, out, _ = run(t, f.data, "inspect", tk.ID, cg)
	mustContain(t, out, "health:", "healthy for", "verdict true", "check:",
		"GET http://127.0.0.1:"+port+"/healthz every 50ms, timeout 2s, unhealthy after 40 failures")
}

func envOf(t launcher.Task, key string) string {
	for _, kv := range t.Spec.Env {
		if strings.HasPrefix(kv, key+"=") {
			return kv
		}
	}
	return ""
}
