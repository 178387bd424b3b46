package placement

import "math"

// A scorer rates a feasible machine for one more task of a job; the ranked score
// is the weighted sum. Higher is better.
type scorer struct {
	name   string
	weight float64
	score  func(p *planState, n *nodeState) float64
}

var scorers = []scorer{
	{"binpack", 1, binpackScore},
	{"spread", 1, spreadScore},
	{"artifact", 0.25, artifactScore},
}

func (p *planState) rank(n *nodeState) float64 {
	var s float64
	for i := range scorers {
		s += scorers[i].weight * scorers[i].score(p, n)
	}
	return s
}

// binpackScore packs tightly without stranding: it rewards how full the machine
// would be, penalizes leaving cpu and memory unbalanced, and penalizes leftovers
// too small for any task we know of, since whatever remains of the other resource
// beside them can then never be used.
func binpackScore(p *planState, n *nodeState) float64 {
	capC, capM := float64(n.Capacity.CPU), float64(n.Capacity.Memory)
	if capC <= 0 || capM <= 0 {
		return 0
	}
	free := p.freeOn(n)
	freeC := free.CPU - p.js.Resources.CPU
	freeM := free.Memory - p.js.Resources.Memory
	uc, um := 1-float64(freeC)/capC, 1-float64(freeM)/capM
	s := (uc+um)/2 - 0.25*math.Abs(uc-um)
	if min := p.c.minReq; min.CPU > 0 {
		switch {
		case freeC > 0 && freeC < min.CPU && freeM >= min.Memory:
			s -= 0.5 * float64(freeM) / capM
		case freeM > 0 && freeM < min.Memory && freeC >= min.CPU:
			s -= 0.5 * float64(freeC) / capC
		}
	}
	return s
}

// spreadScore favours label values (e.g. racks) that hold fewer of the job's tasks
// than an even share.
func spreadScore(p *planState, n *nodeState) float64 {
	js := p.js
	if js.Spread == "" {
		return 0
	}
	values := len(p.c.labelValues[js.Spread])
	if _, ok := n.Labels[js.Spread]; !ok {
		values++ // unlabelled machines count as one more value
	}
	if values <= 1 {
		return 0
	}
	even := float64(p.liveTasks()+1) / float64(values)
	cur := float64(p.spreadOf(n.Labels[js.Spread]))
	return math.Max(-1, (even-cur)/even)
}

// artifactScore prefers machines that already hold the artifact: no transfer,
// faster start.
func artifactScore(p *planState, n *nodeState) float64 {
	js := p.js
	if n.held[js.Artifact] || (js.Digest != "" && n.held["sha256:"+js.Digest]) {
		return 1
	}
	return 0
}

// refreshMinRequest recomputes the smallest cpu and memory any running job asks
// for per task, if jobs changed since. It runs under the write lock before any
// planning that may follow (planners only read the cell), once per operation
// rather than once per job changed.
func (c *Cell) refreshMinRequest() {
	if c.minReqValid {
		return
	}
	var m Resources
	for _, js := range c.jobs {
		if js.Stopped {
			continue
		}
		if m.CPU == 0 || js.Resources.CPU < m.CPU {
			m.CPU = js.Resources.CPU
		}
		if m.Memory == 0 || js.Resources.Memory < m.Memory {
			m.Memory = js.Resources.Memory
		}
	}
	c.minReq, c.minReqValid = m, true
}
