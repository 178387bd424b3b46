package launcher

import (
	"context"
	"testing"
	"time"

	"ballena.dev/internal/metricstest"
	"ballena.dev/placement"

	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/internal/poll"
)

// TestMetricsCount: starts, restarts, an OOM kill and tasks by state, as the
// launcher's registered metrics show them after real runs.
func TestMetricsCount(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *Config) { c.Metrics = reg })
	ref := e.publishTask()

	e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"exit", "0"}}).ID)
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"exit", "4"}, Restart: RestartOnFailure})
	poll.Until(t, 20*time.Second, "2 restarts", func() bool {
		g, _ := e.l.Get(tk.ID)
		return g.Restarts >= 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tk, err := e.l.Stop(ctx, tk.ID, 0, time.Second)
	if err != nil || tk.State != StateStopped {
		t.Fatalf("stop: %v, state %s", err, tk.State)
	}
	e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"hog"}, MemoryBytes: 32 << 20}).ID)

	got := metricstest.Gather(t, reg)
	restarts := float64(tk.Restarts)
	for name, want := range map[string]float64{
		"ballena_launcher_starts_total":                  3,
		"ballena_launcher_restarts_total":                restarts,
		"ballena_launcher_oom_kills_total":               1,
		"ballena_launcher_tasks{state=exited}":           1,
		"ballena_launcher_tasks{state=stopped}":          1,
		"ballena_launcher_tasks{state=oom}":              1,
		"ballena_launcher_tasks{state=running}":          0,
		"ballena_launcher_launch_duration_seconds":       3,
		"ballena_launcher_verification_duration_seconds": 3 + restarts,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}

// TestMetricsHealth: running tasks by health, failed checks and unhealthy
// kills, as promtool accepts them.
func TestMetricsHealth(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *Config) { c.Metrics = reg })
	ref := e.publishTask()
	good := e.start(TaskSpec{Artifact: ref, Args: []string{"http", "ok"},
		Health: &HealthSpec{Check: passingCheck(placement.Check{HTTP: "/healthz", PortEnv: "PORT"})}})
	sick := e.start(TaskSpec{Artifact: ref, Args: []string{"http", "sick"},
		Health: &HealthSpec{Check: fastCheck(placement.Check{HTTP: "/healthz", PortEnv: "PORT"})}})
	// Its first check is an hour away: it stays starting.
	e.start(TaskSpec{Artifact: ref, Args: []string{"serve"},
		Health: &HealthSpec{Check: &placement.Check{HTTP: "/healthz", Port: 9, Interval: time.Hour, Timeout: time.Second, Failures: 1}}})
	e.await(good.ID, "health", healthIs(placement.HealthHealthy))
	e.wait(sick.ID)

	got := metricstest.Gather(t, reg)
	for name, want := range map[string]float64{
		"ballena_launcher_task_health{health=healthy}":   1,
		"ballena_launcher_task_health{health=starting}":  1,
		"ballena_launcher_task_health{health=unhealthy}": 0,
		"ballena_launcher_unhealthy_kills_total":         1,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	// The sick task's two; the good one's, if it was slow to listen.
	if v := got["ballena_launcher_health_check_failures_total"]; v < 2 {
		t.Errorf("ballena_launcher_health_check_failures_total = %v, want at least 2", v)
	}
	metricstest.Promtool(t, "launcher", metricstest.Text(t, reg))
}
