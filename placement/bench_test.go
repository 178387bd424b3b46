package placement

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The benchmark runs the scheduler in memory (a Cell, as the server holds it)
// without badger or HTTP: it measures placement decisions, not disk syncs.

type benchMachine struct {
	cap    Resources
	labels map[string]string
}

func benchCluster(seed uint64, machines, jobs, tasksPerJob int) ([]benchMachine, []*Job) {
	rng := rand.New(rand.NewPCG(seed, 1))
	shapes := []struct {
		share float64
		cpu   int64
		mem   int64
	}{
		{0.4, 16000, 64 * gib},
		{0.3, 32000, 128 * gib},
		{0.2, 8000, 64 * gib},  // memory-heavy
		{0.1, 48000, 96 * gib}, // cpu-heavy
	}
	ms := make([]benchMachine, machines)
	for i := range ms {
		x := rng.Float64()
		s := shapes[len(shapes)-1]
		for _, sh := range shapes {
			if x < sh.share {
				s = sh
				break
			}
			x -= sh.share
		}
		ms[i] = benchMachine{cap: Resources{CPU: s.cpu, Memory: s.mem},
			labels: map[string]string{"rack": fmt.Sprintf("r%03d", i/50), "zone": fmt.Sprintf("z%d", i%4)}}
	}
	cpus := []int64{250, 500, 1000, 2000, 4000, 8000}
	mems := []int64{512 << 20, 1 * gib, 2 * gib, 4 * gib, 8 * gib, 16 * gib, 32 * gib}
	js := make([]*Job, jobs)
	for i := range js {
		// Correlated sizes: cpu and memory indexes stay close, with some skew.
		ci := rng.IntN(len(cpus))
		mi := min(max(ci+rng.IntN(3)-1+rng.IntN(2), 0), len(mems)-1)
		j := &Job{Name: fmt.Sprintf("job-%04d", i), Artifact: fmt.Sprintf("app%d@1.0.0", i%50), Count: tasksPerJob,
			Resources: Resources{CPU: cpus[ci], Memory: mems[mi]}, Priority: BandProd}
		if rng.Float64() < 0.25 {
			j.Priority = BandBatch
		}
		switch r := rng.Float64(); {
		case r < 0.2:
			j.Spread = "rack"
		case r < 0.3:
			j.Constraints = []Constraint{{Label: "zone", Op: OpIn, Values: []string{"z0", "z1", "z2"}}}
		}
		js[i] = j
	}
	return ms, js
}

type benchResult struct {
	placed             int
	elapsed            time.Duration
	memUtil, cpuUtil   float64 // when the first task did not fit
	finalMem, finalCPU float64
	preempted          int
	spreadSkew         float64       // spread jobs: most tasks in one rack over an even share
	cpu                time.Duration // process cpu time (user+sys) during the run
}

func runScheduler(ms []benchMachine, jobs []*Job) benchResult {
	c := NewCell(DefaultBatchShare, nil, 42)
	for i, m := range ms {
		c.index++
		c.registerNode(fmt.Sprintf("m%05d", i), &NodeRegistration{Capacity: m.cap, Labels: m.labels})
	}
	var res benchResult
	first := true
	cpu0 := cpuTime()
	start := time.Now()
	for _, j0 := range jobs {
		j := *j0
		c.index++
		j.Version, j.CreateIndex = 1, c.index
		c.putJob(&j)
		ev := c.evaluate(j.Name, "job-register")
		res.placed += ev.Placed
		res.preempted += ev.Preempted
		if first {
			for _, p := range ev.Pending {
				if len(p.Reason) >= 11 && p.Reason[:11] == "batch share" {
					continue
				}
				first = false
				res.memUtil = float64(c.used.Memory) / float64(c.capacity.Memory)
				res.cpuUtil = float64(c.used.CPU) / float64(c.capacity.CPU)
				break
			}
		}
		for _, e := range c.retryPending("job-register") {
			res.placed += e.Placed
		}
	}
	res.elapsed = time.Since(start)
	res.cpu = cpuTime() - cpu0
	// Spread quality: for jobs spread over racks, the most tasks any rack holds,
	// over the least an even spread would put there.
	var skew float64
	var spreadJobs int
	for _, js := range c.jobs {
		if js.Spread == "" || len(js.live) == 0 {
			continue
		}
		per := map[string]int{}
		most := 0
		for _, a := range js.live {
			r := c.byID[a.NodeID].Labels[js.Spread]
			per[r]++
			most = max(most, per[r])
		}
		even := (len(js.live) + len(c.labelValues[js.Spread]) - 1) / len(c.labelValues[js.Spread])
		skew += float64(most) / float64(even)
		spreadJobs++
	}
	if spreadJobs > 0 {
		res.spreadSkew = skew / float64(spreadJobs)
	}
	res.finalMem = float64(c.used.Memory) / float64(c.capacity.Memory)
	res.finalCPU = float64(c.used.CPU) / float64(c.capacity.CPU)
	return res
}

// firstFitDecreasing is the offline baseline: every task known up front, sorted by
// size (its larger share of the average machine), each put on the first machine
// that holds it. A max-tree over free cpu and memory prunes the search; constraints
// are honoured, spread and the batch share are not.
func firstFitDecreasing(ms []benchMachine, jobs []*Job) (memUtil, cpuUtil float64) {
	var capSum Resources
	for _, m := range ms {
		capSum = capSum.Add(m.cap)
	}
	avgC, avgM := float64(capSum.CPU)/float64(len(ms)), float64(capSum.Memory)/float64(len(ms))
	type task struct{ j *Job }
	tasks := make([]*Job, 0, len(jobs)*100)
	for _, j := range jobs {
		for range j.Count {
			tasks = append(tasks, j)
		}
	}
	size := func(j *Job) float64 {
		return max(float64(j.Resources.CPU)/avgC, float64(j.Resources.Memory)/avgM)
	}
	sort.SliceStable(tasks, func(a, b int) bool { return size(tasks[a]) > size(tasks[b]) })

	n := 1
	for n < len(ms) {
		n *= 2
	}
	free := make([]Resources, len(ms))
	maxC := make([]int64, 2*n)
	maxM := make([]int64, 2*n)
	for i, m := range ms {
		free[i] = m.cap
		maxC[n+i], maxM[n+i] = m.cap.CPU, m.cap.Memory
	}
	for i := n - 1; i >= 1; i-- {
		maxC[i], maxM[i] = max(maxC[2*i], maxC[2*i+1]), max(maxM[2*i], maxM[2*i+1])
	}
	var used Resources
	var find func(node int, j *Job) int
	find = func(node int, j *Job) int {
		if maxC[node] < j.Resources.CPU || maxM[node] < j.Resources.Memory {
			return -1
		}
		if node >= n {
			i := node - n
			if i >= len(ms) || !j.Resources.Fits(free[i]) {
				return -1
			}
			for _, c := range j.Constraints {
				if !c.holds(ms[i].labels) {
					return -1
				}
			}
			return i
		}
		if i := find(2*node, j); i >= 0 {
			return i
		}
		return find(2*node+1, j)
	}
	for _, j := range tasks {
		i := find(1, j)
		if i < 0 {
			break
		}
		free[i] = free[i].Sub(j.Resources)
		used = used.Add(j.Resources)
		node := n + i
		maxC[node], maxM[node] = free[i].CPU, free[i].Memory
		for node /= 2; node >= 1; node /= 2 {
			maxC[node], maxM[node] = max(maxC[2*node], maxC[2*node+1]), max(maxM[2*node], maxM[2*node+1])
		}
	}
	return float64(used.Memory) / float64(capSum.Memory), float64(used.CPU) / float64(capSum.CPU)
}

// BenchmarkPlace100kOn10k places 1,000 jobs x 100 tasks (mixed sizes, 25% batch
// jobs, some spread over racks, some constrained to zones) on 10,000 machines.
func BenchmarkPlace100kOn10k(b *testing.B) {
	ms, jobs := benchCluster(7, 10000, 1000, 100)
	ffdMem, ffdCPU := firstFitDecreasing(ms, jobs)
	b.ResetTimer()
	var res benchResult
	for range b.N {
		res = runScheduler(ms, jobs)
	}
	b.ReportMetric(float64(res.placed)/res.elapsed.Seconds(), "placements/s")
	// On a shared machine wall time varies with the neighbours; cpu time less so.
	b.ReportMetric(float64(res.placed)/res.cpu.Seconds(), "placements/cpu-s")
	b.ReportMetric(res.memUtil, "mem-util")
	b.ReportMetric(res.cpuUtil, "cpu-util")
	b.ReportMetric(ffdMem, "ffd-mem-util")
	b.ReportMetric(ffdCPU, "ffd-cpu-util")
	b.ReportMetric(res.finalMem, "final-mem-util")
	b.ReportMetric(res.finalCPU, "final-cpu-util")
	b.ReportMetric(float64(res.placed), "placed")
	b.ReportMetric(float64(res.preempted), "preempted")
	b.ReportMetric(res.spreadSkew, "spread-skew")
}

// BenchmarkServerSubmit measures the full path: a job file's worth of tasks
// submitted over HTTP on loopback, scheduled, and committed to badger with synced
// writes before the answer. 100 jobs x 100 tasks on 1,000 machines.
func BenchmarkServerSubmit(b *testing.B) {
	ms, jobs := benchCluster(11, 1000, 100, 100)
	var placed int
	var elapsed time.Duration
	for range b.N {
		b.StopTimer()
		dir := b.TempDir()
		s, err := Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.update(func(c *Cell) error {
			for i, m := range ms {
				c.registerNode(fmt.Sprintf("m%05d", i), &NodeRegistration{Capacity: m.cap, Labels: m.labels})
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		hs := httptest.NewServer(s.Handler())
		cl, _ := NewClient(hs.URL, testAdmin)
		b.StartTimer()
		start := time.Now()
		for _, j := range jobs {
			resp, err := cl.SubmitJob(context.Background(), j)
			if err != nil {
				b.Fatal(err)
			}
			for _, ev := range resp.Evaluations {
				placed += ev.Placed
			}
		}
		elapsed += time.Since(start)
		b.StopTimer()
		hs.Close()
		s.Close()
	}
	b.ReportMetric(float64(placed)/elapsed.Seconds(), "placements/s")
	b.ReportMetric(float64(len(jobs)*b.N)/elapsed.Seconds(), "jobs/s")
}

// cpuTime is the process's user+system cpu time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// placeThrough runs the 100k x 10k scenario through a server's write path:
// machines registered in ten operations, then the 1,000 jobs submitted by
// workers concurrent writers, each submission one operation committed through
// Raft (group-committed with the others in flight) before it returns.
func placeThrough(b *testing.B, s *Server, ms []benchMachine, jobs []*Job, workers int) (placed int, elapsed time.Duration) {
	b.Helper()
	for chunk := 0; chunk < len(ms); chunk += 1000 {
		if err := s.update(func(c *Cell) error {
			for i := chunk; i < min(chunk+1000, len(ms)); i++ {
				c.registerNode(fmt.Sprintf("m%05d", i), &NodeRegistration{Capacity: ms[i].cap, Labels: ms[i].labels})
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	next := make(chan *Job)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for j0 := range next {
				j := *j0
				var n int
				resp, err := s.submit(context.Background(), func(c *Cell) (*Job, error) {
					_, err := c.submitJob(&j, nil)
					return &j, err
				})
				if err != nil {
					b.Error(err)
				} else {
					for _, ev := range resp.Evaluations {
						n += ev.Placed
					}
				}
				mu.Lock()
				placed += n
				mu.Unlock()
			}
		})
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	st := s.Stats()
	b.Logf("plans %d, replans %d, entries %d, operations %d", st.Plans, st.Replans, st.Entries, st.Operations)
	return placed, time.Since(start)
}

// cellProfile starts a CPU profile of the cell's measured run, written to
// $PLACEMENT_CELL_PROFILE if set: -cpuprofile also takes in the single server,
// startup and closing (badger's flushes and compactions on Close).
func cellProfile(b *testing.B) (stop func()) {
	path := os.Getenv("PLACEMENT_CELL_PROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// benchWriters is how many clients submit jobs at once in the cell benchmark.
var benchWriters = 16

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// BenchmarkCellPlace100kOn10k is BenchmarkPlace100kOn10k through the write
// path: once on a cell of one (Raft in process, badger), once on a cell of three
// servers in this process (Raft over mutual TLS on loopback). Placements/s
// counts until the leader acknowledged the last submission; "all applied" until
// every server holds it; placements/cpu-s divides by the process's CPU time
// (all three servers for the cell), steadier than wall time on a shared machine.
// Memory is the Go heap in use after a GC: for the cell, the whole process's
// over three. Both run with the garbage collector's target `ballena server`
// sets (ServerGCPercent), unless GOGC is set.
func BenchmarkCellPlace100kOn10k(b *testing.B) {
	ms, jobs := benchCluster(7, 10000, 1000, 100)
	quiet := slog.New(slog.DiscardHandler)
	defer UseServerGC()() // as `ballena server` runs
	for range b.N {
		base := heapInUse()
		single, err := Open(Options{Dir: b.TempDir(), AdminToken: testAdmin, JoinToken: testJoin, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		// Labels tell the two runs apart in a CPU profile (pprof -tagfocus
		// phase=cell): the servers' goroutines inherit them.
		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("phase", "single")))
		cpu0 := cpuTime()
		placed1, el1 := placeThrough(b, single, ms, jobs, benchWriters)
		cpu1 := cpuTime() - cpu0
		st1 := single.Stats()
		mem1 := heapInUse() - base
		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("phase", "teardown")))
		single.Close()
		single = nil
		base = heapInUse()

		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("phase", "cell")))
		tc := startRaftCellWith(b, 3, func(cc *CellConfig) { cc.Timeout = time.Second })
		for _, m := range tc.members {
			m.srv.log = quiet
		}
		lead := tc.leader()
		st0 := lead.srv.Stats()
		stopProfile := cellProfile(b)
		t0 := time.Now()
		cpu0 = cpuTime()
		placed3, el3 := placeThrough(b, lead.srv, ms, jobs, benchWriters)
		st3 := lead.srv.Stats()
		want := lead.srv.Index()
		for _, m := range tc.members {
			for m.srv.Index() < want {
				time.Sleep(time.Millisecond) // benchmark only: the followers' apply has no event to await here
			}
		}
		elAll := time.Since(t0)
		cpu3 := cpuTime() - cpu0
		stopProfile()
		mem3 := (heapInUse() - base) / 3
		entries3 := st3.Entries - st0.Entries
		b.ReportMetric(float64(placed1)/el1.Seconds(), "single-placements/s")
		b.ReportMetric(float64(st1.Entries)/el1.Seconds(), "single-entries/s")
		b.ReportMetric(float64(mem1)/(1<<20), "single-MiB")
		b.ReportMetric(float64(placed3)/el3.Seconds(), "cell3-placements/s")
		b.ReportMetric(float64(entries3)/el3.Seconds(), "cell3-entries/s")
		b.ReportMetric(float64(mem3)/(1<<20), "cell3-MiB/server")
		b.Logf("100k tasks on 10k machines, %d concurrent writers:\n"+
			"                 placements/s  placements/cpu-s  raft entries/s  ops/entry  heap MiB/server\n"+
			"  single server  %12.0f  %16.0f  %14.0f  %9.1f  %15.0f\n"+
			"  3-server cell  %12.0f  %16.0f  %14.0f  %9.1f  %15.0f\n"+
			"  (cell: %d placed in %v at the leader; all three applied after %v)", benchWriters,
			float64(placed1)/el1.Seconds(), float64(placed1)/cpu1.Seconds(), float64(st1.Entries)/el1.Seconds(), float64(st1.Operations)/float64(max(st1.Entries, 1)), float64(mem1)/(1<<20),
			float64(placed3)/el3.Seconds(), float64(placed3)/cpu3.Seconds(), float64(entries3)/el3.Seconds(), float64(st3.Operations-st0.Operations)/float64(max(entries3, 1)), float64(mem3)/(1<<20),
			placed3, el3.Round(time.Millisecond), elAll.Round(time.Millisecond))
		// Closing (badger flushes and compacts) is outside the measured part.
		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("phase", "teardown")))
		for _, m := range tc.members {
			tc.stop(m)
		}
		pprof.SetGoroutineLabels(context.Background())
	}
}
