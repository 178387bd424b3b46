package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"ballena.dev/swarm/sim"
)

// variant is one run of a scenario.
type variant struct {
	Label string
	Cfg   sim.Config
}

// scenario is a group of runs drawn on one completion plot.
type scenario struct {
	Name, Title string
	Variants    []variant
}

const (
	gbit = 125e6 // bytes per second in 1 Gb/s
	gib  = 1 << 30
)

func scenarios() []scenario {
	fleet := func(n int) sim.Config {
		return sim.Config{Peers: n, Size: gib, Up: gbit, Down: gbit, Latency: 250e-6, Rand: 1}
	}
	var out []scenario
	// Validation: the bench's sizes and caps (make bench-swarm), loopback latency.
	val := scenario{Name: "validation", Title: "bench sizes: 256 MiB, 16 MiB/s caps"}
	for _, n := range []int{4, 8, 16} {
		val.Variants = append(val.Variants, variant{fmt.Sprintf("N=%d", n),
			sim.Config{Peers: n, Size: 256 * mib, Up: 16 * mib, Down: 16 * mib, Latency: 50e-6, Rand: 1}})
	}
	out = append(out, val)
	// Kraken's published case: 3 GB to 2,600 hosts at 300 MB/s.
	out = append(out, scenario{Name: "kraken", Title: "3 GB to 2,600 hosts at 300 MB/s", Variants: []variant{
		{"Ballena policy", sim.Config{Peers: 2600, Size: 3e9, Up: 300e6, Down: 300e6, Latency: 250e-6, Rand: 1}},
	}})
	out = append(out, scenario{Name: "fleet10k", Title: "10,000 peers, 1 GiB, 1 Gb/s", Variants: []variant{
		{"10,000 peers", fleet(10000)},
	}})
	// Churn at 1,000 peers: 10% leave between 20% and 80% of the bound; the
	// seed dies once half the peers finished, or at half the bound.
	b := sim.Bound(gib, gbit, gbit, gbit, 1000)
	base := fleet(1000)
	leave := base
	leave.LeaveFrac, leave.LeaveFrom, leave.LeaveTo = 0.1, 0.2*b, 0.8*b
	deadDone := leave
	deadDone.SeedDeathDone = 0.5
	deadHalf := leave
	deadHalf.SeedDeath = 0.5 * b
	twoDead := deadHalf
	twoDead.Seeds = 2
	out = append(out, scenario{Name: "churn", Title: "1,000 peers, 1 GiB, 1 Gb/s, churn", Variants: []variant{
		{"no churn", base},
		{"10% leave", leave},
		{"10% leave, seed dies at 50% done", deadDone},
		{"10% leave, seed dies at 0.5x bound", deadHalf},
		{"10% leave, 2 seeds die at 0.5x bound", twoDead},
	}})
	// Racks: 2,000 peers in 50 racks, 4:1 oversubscribed uplinks.
	blind := fleet(2000)
	blind.Racks, blind.Oversub = 50, 4
	aware := blind
	aware.RackAware = true
	out = append(out, scenario{Name: "racks", Title: "2,000 peers, 50 racks, 4:1 uplinks, 1 GiB, 1 Gb/s", Variants: []variant{
		{"rack-blind", blind},
		{"rack-aware", aware},
	}})
	return out
}

// row is one run's figures, as the README table shows them.
type row struct {
	Scenario, Label string
	Peers           int
	Bound           float64
	P50, P99, Max   float64
	Finished, Left  int
	Incomplete      int
	SeedCopies      float64
	WastedPct       float64
	CrossRackGiB    float64
	Wall            float64
	Finish          []float64 `json:"finish_seconds"`
}

func runScenarios(out, only string) error {
	var rows []row
	for _, sc := range scenarios() {
		if only != "" && sc.Name != only {
			continue
		}
		var runs []row
		for _, v := range sc.Variants {
			fmt.Fprintf(os.Stderr, "%s / %s ...\n", sc.Name, v.Label)
			r, err := sim.Run(v.Cfg)
			if err != nil {
				return fmt.Errorf("%s/%s: %w", sc.Name, v.Label, err)
			}
			rw := row{Scenario: sc.Name, Label: v.Label, Peers: v.Cfg.Peers, Bound: r.Bound,
				P50: finite(r.Percentile(50)), P99: finite(r.Percentile(99)), Max: finite(r.Percentile(100)),
				Finished: len(r.Finish), Left: r.Left, Incomplete: r.Incomplete,
				SeedCopies: r.SeedCopies(), WastedPct: 100 * float64(r.Wasted) / float64(max(r.Delivered, 1)),
				CrossRackGiB: float64(r.CrossRack) / gib, Wall: r.WallSecond, Finish: r.Finish}
			fmt.Fprintf(os.Stderr, "  bound %.2fs p50 %.3fx p99 %.3fx max %.3fx (-1: never), finished %d left %d incomplete %d, seed copies %.3f, wasted %.2f%%, cross-rack %.1f GiB, %.0fs\n",
				rw.Bound, rw.P50/rw.Bound, rw.P99/rw.Bound, rw.Max/rw.Bound, rw.Finished, rw.Left, rw.Incomplete, rw.SeedCopies, rw.WastedPct, rw.CrossRackGiB, rw.Wall)
			runs = append(runs, rw)
		}
		if err := plotCDF(filepath.Join(out, "cdf-"+sc.Name+".png"), sc.Title, runs); err != nil {
			return err
		}
		rows = append(rows, runs...)
	}
	// One results file per scenario, so that one can be run again alone.
	for _, sc := range scenarios() {
		var mine []row
		for _, r := range rows {
			if r.Scenario == sc.Name {
				mine = append(mine, r)
			}
		}
		if len(mine) == 0 {
			continue
		}
		b, err := json.MarshalIndent(mine, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, "results-"+sc.Name+".json"), append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	// The bars and the table cover every scenario with results on disk.
	var all []row
	for _, sc := range scenarios() {
		b, err := os.ReadFile(filepath.Join(out, "results-"+sc.Name+".json"))
		if err != nil {
			continue
		}
		var rs []row
		if err := json.Unmarshal(b, &rs); err != nil {
			return fmt.Errorf("results of %s: %w", sc.Name, err)
		}
		all = append(all, rs...)
	}
	if err := plotBars(filepath.Join(out, "seed-waste.png"), all); err != nil {
		return err
	}
	printMarkdown(all)
	return nil
}

func printMarkdown(rows []row) {
	fmt.Println("| scenario | run | peers | bound s | p50 (×bound) | p99 (×bound) | last (×bound) | finished / left / stuck | seed copies | wasted | cross-rack GiB | wall s |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %d | %.2f | %s | %s | %s | %d / %d / %d | %.3f | %.2f%% | %.1f | %.0f |\n",
			r.Scenario, r.Label, r.Peers, r.Bound, ratio(r.P50, r.Bound), ratio(r.P99, r.Bound), ratio(r.Max, r.Bound),
			r.Finished, r.Left, r.Incomplete, r.SeedCopies, r.WastedPct, r.CrossRackGiB, r.Wall)
	}
}

// finite is t, or -1 for a percentile some peers never reached (JSON has no Inf).
func finite(t float64) float64 {
	if math.IsInf(t, 0) || math.IsNaN(t) {
		return -1
	}
	return t
}

func ratio(t, b float64) string {
	if t < 0 {
		return "never"
	}
	return fmt.Sprintf("%.2f s (%.3f)", t, t/b)
}

// plotCDF draws the fraction of peers done against time over the bound.
func plotCDF(path, title string, runs []row) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "time / fluid bound"
	p.Y.Label.Text = "fraction of peers done"
	p.Y.Min, p.Y.Max = 0, 1
	xmin, xmax := 1.0, 1.0
	for _, r := range runs {
		if len(r.Finish) > 0 {
			xmin = min(xmin, r.Finish[0]/r.Bound)
		}
	}
	xmin = max(0, math.Floor(xmin*10)/10-0.1)
	for i, r := range runs {
		total := float64(r.Finished + r.Incomplete + r.Left)
		// A step up at every finish.
		pts := make(plotter.XYs, 0, 2*len(r.Finish)+1)
		pts = append(pts, plotter.XY{X: xmin, Y: 0})
		for k, t := range r.Finish {
			pts = append(pts, plotter.XY{X: t / r.Bound, Y: float64(k) / total}, plotter.XY{X: t / r.Bound, Y: float64(k+1) / total})
			xmax = max(xmax, t/r.Bound)
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		l.Dashes = plotutil.Dashes(i)
		p.Add(l)
		p.Legend.Add(r.Label, l)
	}
	bound, err := plotter.NewLine(plotter.XYs{{X: 1, Y: 0}, {X: 1, Y: 1}})
	if err != nil {
		return err
	}
	bound.Color = color.Gray{Y: 128}
	bound.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(bound)
	p.Legend.Add("fluid bound", bound)
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(10)
	p.X.Min, p.X.Max = xmin, math.Ceil(xmax*10+0.5)/10
	p.Add(plotter.NewGrid())
	return p.Save(6*vg.Inch, 4*vg.Inch, path)
}

// plotBars draws, per run, the seed's copies and the wasted bytes.
func plotBars(path string, rows []row) error {
	p := plot.New()
	p.Title.Text = "seed copies sent and bytes wasted (% of delivered)"
	var copies, waste plotter.Values
	var names []string
	for _, r := range rows {
		copies = append(copies, r.SeedCopies)
		waste = append(waste, r.WastedPct)
		names = append(names, strings.ReplaceAll(r.Scenario+"\n"+r.Label, ", ", ",\n"))
	}
	w := vg.Points(10)
	a, err := plotter.NewBarChart(copies, w)
	if err != nil {
		return err
	}
	a.Color = plotutil.Color(0)
	a.Offset = -w / 2
	b, err := plotter.NewBarChart(waste, w)
	if err != nil {
		return err
	}
	b.Color = plotutil.Color(1)
	b.Offset = w / 2
	p.Add(a, b, plotter.NewGrid())
	top := 0.0
	for i := range copies {
		top = max(top, copies[i], waste[i])
	}
	p.Y.Min, p.Y.Max = 0, top*1.25 // room for the legend
	p.Legend.Add("seed copies", a)
	p.Legend.Add("wasted %", b)
	p.Legend.Top = true
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = math.Pi / 2.5
	p.X.Tick.Label.XAlign = -0.9
	p.X.Tick.Label.Font.Size = vg.Points(7)
	return p.Save(9*vg.Inch, 5*vg.Inch, path)
}
