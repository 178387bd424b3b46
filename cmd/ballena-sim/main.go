// Command ballena-sim runs the swarm simulator (package swarm/sim): one spread
// from flags, or the README's named scenarios with their plots.
//
//	ballena-sim -n 10000 -size 1024 -up 125 [-racks 50 -oversub 4 -rack-aware]
//	ballena-sim -scenarios -out swarm/sim
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"ballena.dev/swarm/sim"
)

const mib = 1 << 20

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ballena-sim:", err)
		os.Exit(1)
	}
}

func run() error {
	var c sim.Config
	flag.IntVar(&c.Peers, "n", 16, "leechers")
	flag.IntVar(&c.Seeds, "seeds", 1, "seeds")
	size := flag.Float64("size", 256, "artifact size, MiB")
	piece := flag.Int64("piece", 0, "piece length in bytes; 0: what publish picks")
	up := flag.Float64("up", 16, "every peer's upload, MiB/s")
	down := flag.Float64("down", 0, "every peer's download, MiB/s; 0: same as -up")
	seedUp := flag.Float64("seed-up", 0, "the seed's upload, MiB/s; 0: same as -up")
	lat := flag.Duration("latency", 100*time.Microsecond, "one-way link latency")
	start := flag.Duration("start", 0, "when the peers start fetching")
	spread := flag.Duration("join-spread", 0, "peers start uniformly over this long")
	flag.IntVar(&c.Racks, "racks", 0, "racks; 0: none")
	flag.Float64Var(&c.Oversub, "oversub", 1, "rack uplink oversubscription")
	flag.BoolVar(&c.RackAware, "rack-aware", false, "peers prefer their own rack")
	flag.BoolVar(&c.NoSuperSeed, "no-super-seed", false, "seeds advertise everything")
	flag.IntVar(&c.Conns, "conns", 0, "peers each peer dials; 0: 25")
	flag.IntVar(&c.UpSlots, "up-slots", 0, "concurrent uploads per peer; 0: 4")
	flag.IntVar(&c.DownSlots, "down-slots", 0, "concurrent downloads per peer; 0: 4")
	flag.Float64Var(&c.LeaveFrac, "leave", 0, "fraction of leechers that leave")
	leaveFrom := flag.Float64("leave-from", 0.2, "leavers go from this fraction of the bound")
	leaveTo := flag.Float64("leave-to", 0.8, "... to this fraction of the bound")
	seedDeath := flag.Float64("seed-death", 0, "the seeds die at this fraction of the bound; 0: never")
	flag.Float64Var(&c.SeedDeathDone, "seed-death-done", 0, "the seeds die once this fraction of leechers finished")
	flag.Uint64Var(&c.Rand, "seed", 1, "random seed")
	jsonOut := flag.Bool("json", false, "print the result as JSON")
	scen := flag.Bool("scenarios", false, "run the README's scenarios and write their plots")
	out := flag.String("out", "swarm/sim", "where -scenarios writes README figures")
	only := flag.String("only", "", "with -scenarios: run only the scenario of this name")
	flag.Parse()
	if *scen {
		return runScenarios(*out, *only)
	}
	c.Size = int64(*size * mib)
	c.PieceLength = *piece
	c.Up = *up * mib
	c.Down = c.Up
	if *down > 0 {
		c.Down = *down * mib
	}
	c.SeedUp = *seedUp * mib
	c.Latency = lat.Seconds()
	c.StartDelay = start.Seconds()
	c.JoinSpread = spread.Seconds()
	us := c.SeedUp
	if us == 0 {
		us = c.Up
	}
	b := sim.Bound(float64(c.Size), us*float64(max(c.Seeds, 1)), c.Up, c.Down, c.Peers)
	c.LeaveFrom, c.LeaveTo = *leaveFrom*b, *leaveTo*b
	c.SeedDeath = *seedDeath * b
	r, err := sim.Run(c)
	if err != nil {
		return err
	}
	if *jsonOut {
		return json.NewEncoder(os.Stdout).Encode(summary(r))
	}
	printResult(r)
	return nil
}

func printResult(r *sim.Result) {
	s := summary(r)
	fmt.Printf("%d peers, %d pieces of %d KiB: bound %.2fs; p50 %.2fs (%.3f×) p99 %.2fs (%.3f×) max %.2fs (%.3f×)\n",
		r.Config.Peers, r.Pieces, r.Config.PieceLength>>10, r.Bound, s.P50, s.P50/r.Bound, s.P99, s.P99/r.Bound, s.Max, s.Max/r.Bound)
	fmt.Printf("  finished %d, incomplete %d, left %d; seed copies %.3f, seed order broken %d (early repeats %d); wasted %.1f MiB (%.2f%%); cross-rack %.1f MiB\n",
		len(r.Finish), r.Incomplete, r.Left, r.SeedCopies(), r.SeedOrderBroken, r.SeedEarlyRepeats, float64(r.Wasted)/mib,
		100*float64(r.Wasted)/float64(max(r.Delivered, 1)), float64(r.CrossRack)/mib)
	fmt.Printf("  %d stalls; %d events in %.1fs of real time\n", r.Stalls, r.Events, r.WallSecond)
}

type summaryJSON struct {
	Peers           int     `json:"peers"`
	Pieces          int     `json:"pieces"`
	Bound           float64 `json:"bound_seconds"`
	P50             float64 `json:"p50_seconds"`
	P99             float64 `json:"p99_seconds"`
	Max             float64 `json:"max_seconds"`
	Finished        int     `json:"finished"`
	Incomplete      int     `json:"incomplete"`
	Left            int     `json:"left"`
	SeedCopies      float64 `json:"seed_copies"`
	SeedOrderBroken int     `json:"seed_order_broken"`
	WastedMiB       float64 `json:"wasted_mib"`
	CrossRackMiB    float64 `json:"cross_rack_mib"`
	Events          int64   `json:"events"`
	Wall            float64 `json:"wall_seconds"`
}

func summary(r *sim.Result) summaryJSON {
	return summaryJSON{
		Peers: r.Config.Peers, Pieces: r.Pieces, Bound: r.Bound,
		P50: r.Percentile(50), P99: r.Percentile(99), Max: r.Percentile(100),
		Finished: len(r.Finish), Incomplete: r.Incomplete, Left: r.Left,
		SeedCopies: r.SeedCopies(), SeedOrderBroken: r.SeedOrderBroken,
		WastedMiB: float64(r.Wasted) / mib, CrossRackMiB: float64(r.CrossRack) / mib,
		Events: r.Events, Wall: r.WallSecond,
	}
}
