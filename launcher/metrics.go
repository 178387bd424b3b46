package launcher

import (
	"time"

	"ballena.dev/placement"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are what the launcher counts as it works; tasks by state are read
// from its table at scrape time.
type metrics struct {
	starts, restarts, oomKills    prometheus.Counter
	checkFailures, unhealthyKills prometheus.Counter
	launch, verify                prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		starts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_launcher_starts_total",
			Help: "Tasks started (first runs; restarts are counted apart).",
		}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_launcher_restarts_total",
			Help: "Task restarts by their restart policy.",
		}),
		oomKills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_launcher_oom_kills_total",
			Help: "Task runs the kernel killed for exceeding their memory limit.",
		}),
		checkFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_launcher_health_check_failures_total",
			Help: "Health checks of running tasks that failed.",
		}),
		unhealthyKills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_launcher_unhealthy_kills_total",
			Help: "Task runs killed for failing their health check too many times in a row.",
		}),
		launch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ballena_launcher_launch_duration_seconds",
			Help:    "Time to start a task: from the request, through verification, until its process runs in its cgroup.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		verify: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ballena_launcher_verification_duration_seconds",
			Help:    "Time to verify an artifact (signature, policy, digest) before a start or restart.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
}

var (
	descTasks = prometheus.NewDesc("ballena_launcher_tasks",
		"Tasks the launcher holds, by state.", []string{"state"}, nil)
	descHealth = prometheus.NewDesc("ballena_launcher_task_health",
		"Running tasks whose health the launcher tracks, by health.", []string{"health"}, nil)
)

// register puts the launcher's metrics in reg: the counters and histograms,
// and its tasks by state, read at each scrape.
func (l *Launcher) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{l.m.starts, l.m.restarts, l.m.oomKills, l.m.checkFailures, l.m.unhealthyKills, l.m.launch, l.m.verify, taskCollector{l}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

type taskCollector struct{ l *Launcher }

func (taskCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descTasks; ch <- descHealth }

func (tc taskCollector) Collect(ch chan<- prometheus.Metric) {
	n := map[State]int{}
	for _, s := range []State{StateStarting, StateRunning, StateRestarting, StateExited, StateOOM, StateStopped, StateFailed} {
		n[s] = 0
	}
	h := map[string]int{placement.HealthStarting: 0, placement.HealthHealthy: 0, placement.HealthUnhealthy: 0}
	tc.l.mu.Lock()
	for _, e := range tc.l.tasks {
		n[e.t.State]++
		if e.t.State == StateRunning && e.t.Health != "" {
			h[e.t.Health]++
		}
	}
	tc.l.mu.Unlock()
	for s, v := range n {
		ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(v), string(s))
	}
	for s, v := range h {
		ch <- prometheus.MustNewConstMetric(descHealth, prometheus.GaugeValue, float64(v), s)
	}
}

// timedVerify runs verify and records how long it took.
func (l *Launcher) timedVerify(verify func() (Artifact, error)) (Artifact, error) {
	start := time.Now()
	art, err := verify()
	l.m.verify.Observe(time.Since(start).Seconds())
	return art, err
}
