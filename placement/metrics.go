package placement

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. The cell's state (jobs, tasks, machines, waiting jobs, Raft's view)
// is read at scrape time from the server's memory, so it cannot drift from what
// the API shows; only what happens (placements, preemptions, latencies) is
// counted as it happens.

// metrics are the counters and histograms the server updates as it works.
type metrics struct {
	s            *Server
	placeLatency prometheus.Histogram
	placed       prometheus.Counter
	preemptions  prometheus.Counter
	applyLatency prometheus.Histogram
}

func newMetrics(s *Server) *metrics {
	m := &metrics{s: s,
		placeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ballena_placement_latency_seconds",
			Help:    "Time from the request of an evaluation that placed tasks (a job run, a machine joining, a task ending) until its placements were committed.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		placed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_placement_placements_total",
			Help: "Tasks placed on a machine (allocations made), on the leader.",
		}),
		preemptions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballena_placement_preemptions_total",
			Help: "Batch allocations preempted to make room for prod tasks, on the leader.",
		}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ballena_raft_apply_duration_seconds",
			Help:    "Time from handing an entry to Raft until a majority committed it and it was applied.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	return m
}

// register puts the server's metrics in reg.
func (m *metrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.placeLatency, m.placed, m.preemptions, m.applyLatency, stateCollector{m.s})
}

// observe records what an operation's evaluations did, started at start.
func (m *metrics) observe(evals []*Evaluation, start time.Time) {
	placed := 0
	for _, ev := range evals {
		placed += ev.Placed
		if ev.Preempted > 0 {
			m.preemptions.Add(float64(ev.Preempted))
		}
	}
	if placed > 0 {
		m.placed.Add(float64(placed))
		m.placeLatency.Observe(time.Since(start).Seconds())
	}
}

var (
	descJobs = prometheus.NewDesc("ballena_placement_jobs",
		"Jobs the cell holds.", nil, nil)
	descTasks = prometheus.NewDesc("ballena_placement_tasks",
		"Tasks of the cell's jobs by state (pending: waiting for room; placed; done) and priority band.", []string{"state", "band"}, nil)
	descNodes = prometheus.NewDesc("ballena_placement_nodes",
		"Machines of the cell by state (ready, draining, down, revoked).", []string{"state"}, nil)
	descPendingEvals = prometheus.NewDesc("ballena_placement_pending_evaluations",
		"Jobs with tasks waiting for room: each is evaluated again when room appears.", nil, nil)
	descRaftLeader = prometheus.NewDesc("ballena_raft_leader",
		"1 if this server is the cell's Raft leader, else 0.", nil, nil)
	descRaftCommit = prometheus.NewDesc("ballena_raft_commit_index",
		"The last Raft log index this server knows to be committed.", nil, nil)
	descEvals = prometheus.NewDesc("ballena_placement_evaluations",
		"Evaluations on the leader: queued in the broker, or being planned and committed.", []string{"state"}, nil)
	descPlans = prometheus.NewDesc("ballena_placement_plans_total",
		"Plans the leader's plan applier took since this server started.", nil, nil)
	descReplans = prometheus.NewDesc("ballena_placement_replans_total",
		"Evaluations planned again because the plan applier refused part of a plan (its machines changed meanwhile).", nil, nil)
	descRollouts = prometheus.NewDesc("ballena_placement_rollouts",
		"Jobs by the status of their current version's rollout (running, awaiting-promotion, successful, failed, cancelled).", []string{"status"}, nil)
	descTaskHealth = prometheus.NewDesc("ballena_placement_task_health",
		"Running tasks by the health their nodes report (starting, healthy, unhealthy; none: not reported yet).", []string{"health"}, nil)
	descRaftApplied = prometheus.NewDesc("ballena_raft_applied_index",
		"The last Raft log index this server applied to its state.", nil, nil)
)

// stateCollector reads the cell's state at scrape time.
type stateCollector struct{ s *Server }

func (stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJobs, descTasks, descNodes, descPendingEvals, descEvals, descPlans, descReplans,
		descRollouts, descTaskHealth, descRaftLeader, descRaftCommit, descRaftApplied} {
		ch <- d
	}
}

func (sc stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := sc.s
	type key struct{ state, band string }
	tasks := map[key]int{}
	for _, st := range []string{TaskPending, TaskPlaced, TaskDone} {
		for _, b := range []Band{BandProd, BandBatch} {
			tasks[key{st, string(b)}] = 0
		}
	}
	nodes := map[string]int{NodeReady: 0, "draining": 0, NodeDown: 0, "revoked": 0}
	rollouts := map[string]int{DeployRunning: 0, DeployPaused: 0, DeploySuccessful: 0, DeployFailed: 0, DeployCancelled: 0}
	health := map[string]int{"none": 0, HealthStarting: 0, HealthHealthy: 0, HealthUnhealthy: 0}
	s.mu.RLock()
	jobs, pending := len(s.cell.jobs), len(s.cell.pending)
	for _, js := range s.cell.jobs {
		for _, t := range js.tasks {
			tasks[key{t.State, string(js.Priority)}]++
		}
		if d := js.Deployment; d != nil {
			rollouts[d.Status]++
		}
		for _, a := range js.live {
			if a.ClientStatus == ClientRunning {
				h := a.Health
				if h == "" {
					h = "none"
				}
				health[h]++
			}
		}
	}
	for _, n := range s.cell.nodes {
		st := n.Status
		switch {
		case n.Revoked:
			st = "revoked"
		case n.Drain && st == NodeReady:
			st = "draining"
		}
		nodes[st]++
	}
	s.mu.RUnlock()
	ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(jobs))
	for k, v := range tasks {
		ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(v), k.state, k.band)
	}
	for st, v := range nodes {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(v), st)
	}
	for st, v := range rollouts {
		ch <- prometheus.MustNewConstMetric(descRollouts, prometheus.GaugeValue, float64(v), st)
	}
	for h, v := range health {
		ch <- prometheus.MustNewConstMetric(descTaskHealth, prometheus.GaugeValue, float64(v), h)
	}
	ch <- prometheus.MustNewConstMetric(descPendingEvals, prometheus.GaugeValue, float64(pending))
	queued, running := s.broker.stats()
	ch <- prometheus.MustNewConstMetric(descEvals, prometheus.GaugeValue, float64(queued), "queued")
	ch <- prometheus.MustNewConstMetric(descEvals, prometheus.GaugeValue, float64(running), "running")
	st := s.Stats()
	ch <- prometheus.MustNewConstMetric(descPlans, prometheus.CounterValue, float64(st.Plans))
	ch <- prometheus.MustNewConstMetric(descReplans, prometheus.CounterValue, float64(st.Replans))
	select {
	case <-s.raftReady:
	default:
		return // Raft not started yet
	}
	leader := 0.0
	if s.raft.State() == raft.Leader {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descRaftLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descRaftCommit, prometheus.GaugeValue, float64(s.raft.CommitIndex()))
	ch <- prometheus.MustNewConstMetric(descRaftApplied, prometheus.GaugeValue, float64(s.raft.AppliedIndex()))
}
