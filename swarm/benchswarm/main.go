// Command benchswarm measures how fast one seed and N leechers, each a separate
// process capped at U MiB/s up and down, spread one F MiB artifact, against the
// fluid lower bound T = max(F/Us, F/D, N·F/(Us + N·U)) (Kumar & Ross 2006) and
// against N downloads from one plain HTTP server capped at Us.
//
//	go run ./swarm/benchswarm -n 16 -size 256 -cap 16 [-json]
//
// Each node process runs a swarm.Engine on its own libp2p host on loopback and
// learns every other node's address up front, as the mesh (DHT and gossip)
// would tell it. The bench measures where the bytes go: how many bytes the seed
// sent, each leecher's finish time, CPU seconds per GiB delivered.
//
//	main.go          flags, the run, the table
//	engines.go       the swarm.Engine run: one node process per peer
//	node.go          the parent's handle on a node process
//	nodeproc.go      the node process itself ("benchswarm node")
//	ballena.go       the same swarm through real ballena node daemons
//	blob.go          the artifact under test
//	httpbaseline.go  N downloads from one capped HTTP server
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

const mib = 1 << 20

func main() {
	if len(os.Args) > 1 && os.Args[1] == "node" {
		if err := runNode(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "benchswarm node:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchswarm:", err)
		os.Exit(1)
	}
}

type result struct {
	N             int       `json:"n"`
	SizeMiB       int       `json:"size_mib"`
	CapMiBs       float64   `json:"cap_mib_s"`
	PieceLength   int64     `json:"piece_length"`
	Seconds       float64   `json:"seconds"`
	BoundSeconds  float64   `json:"bound_seconds"`
	Ratio         float64   `json:"ratio"`
	HTTPSeconds   float64   `json:"http_seconds"`
	HTTPScaled    bool      `json:"http_scaled,omitempty"`
	HTTPRatio     float64   `json:"http_ratio"`
	SeedSentMiB   float64   `json:"seed_sent_mib"`
	SeedCopies    float64   `json:"seed_copies"`
	CPUSeconds    float64   `json:"cpu_seconds"`
	CPUPerGiB     float64   `json:"cpu_seconds_per_gib"`
	FinishSeconds []float64 `json:"leecher_finish_seconds"`
	FirstByteSecs float64   `json:"first_finish_seconds"`
	WastedMiB     float64   `json:"leechers_received_beyond_size_mib"`
	CPUCores      int       `json:"cpu_cores"`
	// CPU seconds of the nodes over seconds × cores: near 1, the machine, not
	// the swarm, set the time, and the ratio says little about the protocol.
	CPUBusy        float64 `json:"cpu_busy"`
	SetupSeconds   float64 `json:"setup_seconds"`
	HTTPMeasuredAt int     `json:"http_measured_size_mib,omitempty"`
	// Per leecher, sorted: seconds of its download in which nothing arrived,
	// and in which it held verified pieces but sent nothing (250 ms steps).
	DownloadIdle []float64 `json:"leecher_download_idle_seconds"`
	UploadIdle   []float64 `json:"leecher_upload_idle_seconds"`
}

func run() error {
	n := flag.Int("n", 16, "leechers")
	size := flag.Int("size", 256, "artifact size in MiB")
	capMiB := flag.Float64("cap", 16, "upload and download cap of every node, MiB/s")
	jsonOut := flag.Bool("json", false, "print one JSON object")
	httpDiv := flag.Int("http-div", 8, "run the HTTP baseline on size/DIV MiB and scale its time (it is bandwidth-bound); 1 runs it whole")
	timeout := flag.Duration("timeout", 150*time.Second, "give up on the swarm run after this long")
	keep := flag.Bool("keep", false, "keep the work dir")
	ballena := flag.String("ballena", "", "run every node as `ballena node` from this binary (publish and fetch through its CLI); default: engine processes of this program")
	single := flag.Bool("single", false, "one seed → one leecher `ballena node` (needs -ballena), no caps: per-role CPU per GiB and throughput beside HTTP, aria2c and libtorrent; -size is the blob")
	pskMode := flag.String("psk", "both", "with -single: run with a fleet PSK (on), without (off), or both")
	perfDir := flag.String("perf", "", "with -single: perf record each node during the transfer into this dir")
	perfStat := flag.Bool("perf-stat", false, "with -perf: perf stat (context switches, faults, system calls by kind) instead of perf record")
	others := flag.Bool("others", true, "with -single: also run one HTTP server, aria2c and libtorrent (when installed)")
	flag.Parse()

	work, err := os.MkdirTemp("", "benchswarm-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(work)
	}
	capB := int64(*capMiB * mib)
	if *single {
		if *ballena == "" {
			return fmt.Errorf("-single needs -ballena BIN")
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		F := int64(*size) * mib
		rows, err := runSingle(ctx, singleOpts{bin: *ballena, work: work, size: F, perfDir: *perfDir, perfStat: *perfStat,
			aria: *others, libt: *others, http: *others, psk: *pskMode})
		if *jsonOut {
			json.NewEncoder(os.Stdout).Encode(rows)
		} else if len(rows) > 0 {
			printSingle(rows, F)
		}
		return err
	}
	F := int64(*size) * mib
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var sw swarmRun
	if *ballena != "" {
		sw, err = runBallena(ctx, *ballena, work, *n, F, capB)
	} else {
		sw, err = runEngines(ctx, work, *n, F, capB)
	}
	if err != nil {
		return err
	}
	rel, seedDir := sw.rel, sw.seedBlob
	wall := slices.Max(sw.finish)
	finish := slices.Clone(sw.finish)
	sort.Float64s(finish)
	setupSecs := sw.setup
	cpu := sw.cpu
	received := sw.received
	st := nodeStats{Uploaded: sw.seedSent}
	U := float64(capB)
	bound := max(float64(F)/U, float64(F)/U, float64(*n)*float64(F)/(U+float64(*n)*U))
	httpSize := F / int64(*httpDiv)
	hctx, hcancel := context.WithTimeout(context.Background(), 2*time.Duration(float64(*n)*float64(httpSize)/U*float64(time.Second))+30*time.Second)
	defer hcancel()
	httpSecs, err := httpBaseline(hctx, seedDir, httpSize, *n, capB, capB)
	if err != nil {
		return fmt.Errorf("http baseline: %w", err)
	}
	httpSecs *= float64(F) / float64(httpSize)

	res := result{
		N: *n, SizeMiB: *size, CapMiBs: *capMiB, PieceLength: rel.PieceLength,
		Seconds: wall, BoundSeconds: bound, Ratio: wall / bound,
		HTTPSeconds: httpSecs, HTTPScaled: *httpDiv > 1, HTTPRatio: httpSecs / bound,
		SeedSentMiB: float64(st.Uploaded) / mib, SeedCopies: float64(st.Uploaded) / float64(F),
		CPUSeconds: cpu, CPUPerGiB: cpu / (float64(*n) * float64(F) / (1 << 30)),
		FinishSeconds: finish, FirstByteSecs: finish[0],
		WastedMiB: float64(received-int64(*n)*F) / mib,
		CPUCores:  numCPU(), SetupSeconds: setupSecs,
		CPUBusy:      cpu / (wall * float64(numCPU())),
		DownloadIdle: sorted(sw.idleDown), UploadIdle: sorted(sw.idleUp),
	}
	if *httpDiv > 1 {
		res.HTTPMeasuredAt = int(httpSize / mib)
	}
	if *jsonOut {
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	printTable(res)
	return nil
}

func printTable(r result) {
	w := os.Stdout
	fmt.Fprintf(w, "swarm: 1 seed + %d leechers, %d MiB artifact, every node capped at %.0f MiB/s up and down, piece %d KiB\n\n",
		r.N, r.SizeMiB, r.CapMiBs, r.PieceLength>>10)
	fmt.Fprintf(w, "  %-34s %8s\n", "", "seconds")
	fmt.Fprintf(w, "  %-34s %8.1f\n", "swarm, until every leecher verified", r.Seconds)
	fmt.Fprintf(w, "  %-34s %8.1f\n", "fluid lower bound", r.BoundSeconds)
	fmt.Fprintf(w, "  %-34s %8.2f\n", "ratio swarm/bound", r.Ratio)
	scaled := ""
	if r.HTTPScaled {
		scaled = fmt.Sprintf(" (measured at %d MiB, scaled)", r.HTTPMeasuredAt)
	}
	fmt.Fprintf(w, "  %-34s %8.1f%s\n", "one HTTP server capped the same", r.HTTPSeconds, scaled)
	fmt.Fprintf(w, "  %-34s %8.2f\n", "ratio HTTP/bound", r.HTTPRatio)
	fmt.Fprintf(w, "\n  first / median / last leecher done: %.1f / %.1f / %.1f s\n",
		r.FinishSeconds[0], r.FinishSeconds[len(r.FinishSeconds)/2], r.FinishSeconds[len(r.FinishSeconds)-1])
	fmt.Fprintf(w, "  seed sent %.0f MiB (%.2f copies); leechers received %.0f MiB beyond what they needed\n",
		r.SeedSentMiB, r.SeedCopies, r.WastedMiB)
	if len(r.DownloadIdle) > 0 {
		fmt.Fprintf(w, "  leecher idle, median / max: nothing arriving %.2f / %.2f s; holding pieces, sending nothing %.2f / %.2f s\n",
			median(r.DownloadIdle), slices.Max(r.DownloadIdle), median(r.UploadIdle), slices.Max(r.UploadIdle))
	}
	fmt.Fprintf(w, "  CPU %.1f s over all nodes = %.2f s per GiB delivered, on %d cores (%.0f%% busy)\n", r.CPUSeconds, r.CPUPerGiB, r.CPUCores, 100*r.CPUBusy)
	if r.CPUBusy >= 0.9 {
		fmt.Fprintf(w, "  the CPU was saturated: the time measures this machine more than the swarm; compare with the bound at a lower -cap or -n\n")
	}
}

func sorted(v []float64) []float64 {
	return slices.Sorted(slices.Values(v))
}

// median of a sorted, non-empty slice.
func median(v []float64) float64 { return v[len(v)/2] }

func numCPU() int {
	n := 0
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "processor") {
			n++
		}
	}
	return n
}
