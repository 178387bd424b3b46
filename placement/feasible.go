package placement

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// A feasibility check says whether a machine can take one more task of a job,
// as a plan sees the machine (what the cell holds plus what the plan has put on
// it). Checks are small and run in order, cheapest and most selective first;
// explain reuses them to say why a task is pending.
type feasibilityCheck struct {
	name string
	ok   func(p *planState, n *nodeState) bool
	why  func(js *jobState) string
}

var feasibilityChecks = []feasibilityCheck{
	{"status", func(_ *planState, n *nodeState) bool { return n.Status == NodeReady },
		func(*jobState) string { return "down" }},
	{"drain", func(_ *planState, n *nodeState) bool { return !n.Drain },
		func(*jobState) string { return "draining" }},
	{"cpu", func(p *planState, n *nodeState) bool { return p.js.Resources.CPU <= p.freeOn(n).CPU },
		func(js *jobState) string { return fmt.Sprintf("lacking %dm cpu", js.Resources.CPU) }},
	{"memory", func(p *planState, n *nodeState) bool { return p.js.Resources.Memory <= p.freeOn(n).Memory },
		func(js *jobState) string { return "lacking " + FormatSize(js.Resources.Memory) + " memory" }},
	{"pids", pidsFit,
		func(js *jobState) string { return fmt.Sprintf("lacking %d pids", js.Resources.PIDs) }},
	{"constraints", func(p *planState, n *nodeState) bool { return constraintsHold(n, p.js) },
		func(js *jobState) string { return "filtered by constraints" }},
	{"distinct_hosts", func(p *planState, n *nodeState) bool { return !p.js.DistinctHosts || p.jobTasksOn(n) == 0 },
		func(*jobState) string { return "already running a task of this job (distinct_hosts)" }},
}

func pidsFit(p *planState, n *nodeState) bool {
	r := p.js.Resources
	return r.PIDs == 0 || n.Capacity.PIDs == 0 || r.PIDs <= p.freeOn(n).PIDs
}

func constraintsHold(n *nodeState, js *jobState) bool {
	for _, c := range js.Constraints {
		if !c.holds(n.Labels) {
			return false
		}
	}
	return true
}

func (c Constraint) holds(labels map[string]string) bool {
	v, ok := labels[c.Label]
	switch c.Op {
	case OpEquals:
		return ok && v == c.Values[0]
	case OpNotEquals:
		return !ok || v != c.Values[0]
	case OpIn:
		return ok && contains(c.Values, v)
	case OpNotIn:
		return !ok || !contains(c.Values, v)
	}
	return false
}

// feasible runs every check.
func feasible(p *planState, n *nodeState) bool {
	for i := range feasibilityChecks {
		if !feasibilityChecks[i].ok(p, n) {
			return false
		}
	}
	return true
}

// explain says why no machine takes a task: how many machines each check
// turned away, e.g. "0/12 machines fit: 7 lacking 4GiB memory, 5 filtered by constraints".
func (p *planState) explain() string {
	c, js := p.c, p.js
	counts := map[string]int{}
	for _, n := range c.nodes {
		for _, fc := range feasibilityChecks {
			if !fc.ok(p, n) {
				counts[fc.why(js)]++
				break
			}
		}
	}
	if len(c.nodes) == 0 {
		return "no machines registered"
	}
	reasons := make([]string, 0, len(counts))
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		reasons = append(reasons, fmt.Sprintf("%d %s", counts[k], k))
	}
	sort.SliceStable(reasons, func(i, j int) bool { return leadingInt(reasons[i]) > leadingInt(reasons[j]) })
	return fmt.Sprintf("0/%d machines fit: %s", len(c.nodes), strings.Join(reasons, ", "))
}

func leadingInt(s string) int {
	var n int
	fmt.Sscanf(s, "%d", &n)
	return n
}
