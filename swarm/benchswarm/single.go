package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ballena.dev/artifact"
)

// The single-stream mode (-single): one seed node and one leecher node, both
// `ballena node` daemons on loopback with no caps, move one blob, with and
// without a fleet PSK. Each role's CPU is read from /proc over the fetch alone
// (publishing is not counted). Beside them, in the same run: one plain HTTP
// server, aria2c fetching the same blob from the seed's --bt-listen, and
// libtorrent (python3-libtorrent) seed to leecher when it is installed.

// roleFigures is what one side of a transfer spent.
type roleFigures struct {
	CPU     float64 `json:"cpu_seconds"`
	PerGiB  float64 `json:"cpu_seconds_per_gib"`
	PeakRSS int64   `json:"peak_rss_bytes,omitempty"`
	// Read and write system calls (from /proc/PID/io) per MiB moved.
	SyscallsPerMiB float64 `json:"syscalls_per_mib,omitempty"`
}

// singleRow is one line of the single-stream table.
type singleRow struct {
	Name    string      `json:"name"`
	Seconds float64     `json:"seconds"`
	MiBs    float64     `json:"mib_per_second"`
	Seed    roleFigures `json:"seed"`
	Leecher roleFigures `json:"leecher"`
	Note    string      `json:"note,omitempty"`
}

func (r singleRow) totalPerGiB() float64 { return r.Seed.PerGiB + r.Leecher.PerGiB }

// singleOpts are the -single mode's flags.
type singleOpts struct {
	bin      string
	work     string
	size     int64
	perfDir  string // perf record each node process during the fetch into this dir
	perfStat bool   // perf stat (counts) instead of perf record
	aria     bool
	libt     bool
	http     bool
	psk      string // "both", "on", "off"
}

func runSingle(ctx context.Context, o singleOpts) ([]singleRow, error) {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return nil, err
	}
	o.bin = bin
	whale := filepath.Join(o.work, "bench")
	if err := makeWhale(bin, whale, o.size); err != nil {
		return nil, err
	}
	var rows []singleRow
	modes := map[string][]bool{"both": {false, true}, "off": {false}, "on": {true}}[o.psk]
	if modes == nil {
		return nil, fmt.Errorf("-psk %q: want both, on or off", o.psk)
	}
	for _, psk := range modes {
		got, err := singleBallena(ctx, o, whale, psk)
		if err != nil {
			return rows, err
		}
		rows = append(rows, got...)
	}
	// The floor runs whatever the flags: it is what the other rows are read
	// against.
	r, err := singleFloor(ctx, whale, o.size)
	if err != nil {
		return rows, fmt.Errorf("floor: %w", err)
	}
	rows = append(rows, r)
	if o.http {
		r, err := singleHTTP(ctx, whale, o.size)
		if err != nil {
			return rows, fmt.Errorf("http: %w", err)
		}
		rows = append(rows, r)
	}
	if o.libt {
		r, err := singleLibtorrent(ctx, o.work, whale, o.size)
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchswarm: libtorrent: %v\n", err)
		} else {
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// daemon is a running `ballena node`.
type daemon struct {
	dir  string
	cmd  *exec.Cmd
	addr string
}

// cliRunner runs ballena commands against data dirs.
type cliRunner struct {
	ctx  context.Context
	bin  string
	work string
}

func (r cliRunner) run(dir string, args ...string) ([]byte, error) {
	c := exec.CommandContext(r.ctx, r.bin, append([]string{"--data", dir}, args...)...)
	c.Dir = r.work
	out, err := c.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out, fmt.Errorf("ballena %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(ee.Stderr)))
		}
		return out, fmt.Errorf("ballena %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

func (r cliRunner) start(dir string, extra ...string) (*daemon, error) {
	args := append([]string{"--data", dir, "--log-level", "warn", "node", "--listen", "/ip4/127.0.0.1/tcp/0",
		"--trust", filepath.Join(r.work, "trust.yaml")}, extra...)
	c := exec.Command(r.bin, args...)
	c.Dir = r.work
	c.Stdout, c.Stderr = io.Discard, os.Stderr
	if err := c.Start(); err != nil {
		return nil, err
	}
	d := &daemon{dir: dir, cmd: c}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := r.run(dir, "status", "--json")
		if err == nil {
			var st struct{ Addrs []string }
			if json.Unmarshal(out, &st) == nil && len(st.Addrs) > 0 {
				d.addr = st.Addrs[0]
				return d, nil
			}
		}
		if time.Now().After(deadline) {
			d.kill()
			return nil, fmt.Errorf("node %s did not come up: %v", dir, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (d *daemon) kill() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Signal(syscall.SIGKILL)
		d.cmd.Wait()
	}
}

// cpu is the process's user+system CPU seconds so far, from /proc.
func (d *daemon) cpu() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// syscalls is the process's read and write system calls so far.
func (d *daemon) syscalls() int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/io", d.cmd.Process.Pid))
	var n int64
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		if k == "syscr" || k == "syscw" {
			x, _ := strconv.ParseInt(v, 10, 64)
			n += x
		}
	}
	return n
}

// peakRSS is the process's VmHWM in bytes.
func (d *daemon) peakRSS() int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func singleBallena(ctx context.Context, o singleOpts, whale string, psk bool) ([]singleRow, error) {
	tag := "nopsk"
	if psk {
		tag = "psk"
	}
	work := filepath.Join(o.work, tag)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return nil, err
	}
	// The next row should not pay for this one's page cache: on a VM that
	// charges for first touches, a run that must find fresh pages for its
	// writes costs more than one that reuses freed ones.
	defer os.RemoveAll(work)
	r := cliRunner{ctx: ctx, bin: o.bin, work: work}
	if _, err := r.run(filepath.Join(work, "keys"), "key", "generate", "--dir", work, "release"); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(work, "trust.yaml"), []byte("keys:\n  - path: release.pub\n    names: [\"bench\"]\n"), 0o644); err != nil {
		return nil, err
	}
	var common []string
	if psk {
		pf := filepath.Join(work, "fleet.psk")
		if _, err := r.run(filepath.Join(work, "keys"), "node", "psk", "generate", pf); err != nil {
			return nil, err
		}
		common = append(common, "--psk", pf)
	}
	btPort, err := freePort()
	if err != nil {
		return nil, err
	}
	seed, err := r.start(filepath.Join(work, "seed"), append(common, "--bt-listen", fmt.Sprintf("127.0.0.1:%d", btPort))...)
	if err != nil {
		return nil, err
	}
	defer seed.kill()
	out, err := r.run(seed.dir, "publish", "--json", "--key", filepath.Join(work, "release.key"), "--name", "bench", "--version", "1.0.0", whale)
	if err != nil {
		return nil, err
	}
	var rel artifact.Release
	if err := json.Unmarshal(out, &rel); err != nil || rel.Digest == "" {
		if err2 := json.Unmarshal(out, &struct{ Release *artifact.Release }{&rel}); err2 != nil || rel.Digest == "" {
			return nil, fmt.Errorf("publish: cannot read its JSON output %q", truncate(out))
		}
	}
	leech, err := r.start(filepath.Join(work, "leech"), append(common, "--bootstrap", seed.addr)...)
	if err != nil {
		return nil, err
	}
	defer leech.kill()
	stopPerf := startPerf(o.perfDir, tag, o.perfStat, map[string]*daemon{"seed": seed, "leecher": leech})
	s0, l0 := seed.cpu(), leech.cpu()
	sc0, lc0 := seed.syscalls(), leech.syscalls()
	start := time.Now()
	_, err = r.run(leech.dir, "fetch", "--json", "bench@1.0.0")
	secs := time.Since(start).Seconds()
	s1, l1 := seed.cpu(), leech.cpu()
	sc1, lc1 := seed.syscalls(), leech.syscalls()
	stopPerf()
	if err != nil {
		return nil, err
	}
	if err := verifyBlob(filepath.Join(leech.dir, "blobs", "sha256", rel.Digest), rel.Digest); err != nil {
		return nil, err
	}
	gib := float64(o.size) / (1 << 30)
	name := "ballena, libp2p (TLS)"
	if psk {
		name = "ballena, libp2p (TLS) + PSK"
	}
	rows := []singleRow{{
		Name: name, Seconds: secs, MiBs: float64(o.size) / mib / secs,
		Seed: roleFigures{CPU: s1 - s0, PerGiB: (s1 - s0) / gib, PeakRSS: seed.peakRSS(),
			SyscallsPerMiB: float64(sc1-sc0) / (gib * 1024)},
		Leecher: roleFigures{CPU: l1 - l0, PerGiB: (l1 - l0) / gib, PeakRSS: leech.peakRSS(),
			SyscallsPerMiB: float64(lc1-lc0) / (gib * 1024)},
	}}
	if o.aria && !psk {
		row, err := singleAria(ctx, r, seed, rel, o.size)
		if err != nil {
			return rows, fmt.Errorf("aria2c: %w", err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// singleAria has aria2c fetch the blob from the seed's plain listener, through
// the .torrent the seed exports.
func singleAria(ctx context.Context, r cliRunner, seed *daemon, rel artifact.Release, size int64) (singleRow, error) {
	aria, err := exec.LookPath("aria2c")
	if err != nil {
		return singleRow{}, err
	}
	tf := filepath.Join(r.work, "bench.torrent")
	if _, err := r.run(seed.dir, "torrent", "bench@1.0.0", "--out", tf); err != nil {
		return singleRow{}, err
	}
	dl := filepath.Join(r.work, "aria")
	port, err := freePort()
	if err != nil {
		return singleRow{}, err
	}
	c := exec.CommandContext(ctx, aria, "--dir", dl, "--seed-time=0", "--enable-dht=false", "--bt-enable-lpd=false",
		"--enable-peer-exchange=false", "--bt-stop-timeout=60", "--listen-port", fmt.Sprint(port),
		"--file-allocation=none", "--console-log-level=warn", "--summary-interval=0", tf)
	s0 := seed.cpu()
	start := time.Now()
	if b, err := c.CombinedOutput(); err != nil {
		return singleRow{}, fmt.Errorf("%v: %s", err, truncate(b))
	}
	secs := time.Since(start).Seconds()
	s1 := seed.cpu()
	if err := verifyBlob(filepath.Join(dl, rel.Digest), rel.Digest); err != nil {
		return singleRow{}, err
	}
	os.RemoveAll(dl)
	gib := float64(size) / (1 << 30)
	lc := (c.ProcessState.UserTime() + c.ProcessState.SystemTime()).Seconds()
	return singleRow{
		Name: "aria2c ← ballena --bt-listen", Seconds: secs, MiBs: float64(size) / mib / secs,
		Seed:    roleFigures{CPU: s1 - s0, PerGiB: (s1 - s0) / gib},
		Leecher: roleFigures{CPU: lc, PerGiB: lc / gib},
		Note:    "plain TCP, no encryption",
	}, nil
}

// singleHTTP serves the blob from one plain HTTP server in this process to
// one client that writes it to a file and hashes it (sha256), as a leecher
// would; the CPU is this process's, both ends together.
func singleHTTP(ctx context.Context, path string, size int64) (singleRow, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return singleRow{}, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, path)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	dst := path + ".http"
	defer os.Remove(dst)
	c0 := selfCPU()
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return singleRow{}, err
	}
	defer resp.Body.Close()
	f, err := os.Create(dst)
	if err != nil {
		return singleRow{}, err
	}
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(f, h), resp.Body, make([]byte, 1<<20))
	f.Close()
	if err == nil && n != size {
		err = fmt.Errorf("got %d of %d bytes", n, size)
	}
	if err != nil {
		return singleRow{}, err
	}
	secs := time.Since(start).Seconds()
	cpu := selfCPU() - c0
	return singleRow{
		Name: "one plain HTTP server", Seconds: secs, MiBs: float64(size) / mib / secs,
		Seed: roleFigures{CPU: cpu, PerGiB: cpu / (float64(size) / (1 << 30))},
		Note: "one process; CPU both ends together (shown under seed); client writes and sha256-hashes",
	}, nil
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startPerf runs `perf record -g` (with stat, `perf stat` of perfStatEvents)
// on each daemon until the returned func is called, writing
// DIR/TAG-ROLE.data; nothing when dir is empty or perf is missing.
func startPerf(dir, tag string, stat bool, ds map[string]*daemon) func() {
	if dir == "" {
		return func() {}
	}
	perf, err := exec.LookPath("perf")
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchswarm: no perf; no profile")
		return func() {}
	}
	os.MkdirAll(dir, 0o755)
	var cmds []*exec.Cmd
	for role, d := range ds {
		args := []string{"record", "-e", "cpu-clock", "-F", "999", "-g"}
		if stat {
			// Counts instead of samples: context switches, faults and
			// system calls are what this VM charges most for.
			args = []string{"stat", "-e", perfStatEvents}
		}
		c := exec.Command(perf, append(args, "-p", fmt.Sprint(d.cmd.Process.Pid),
			"-o", filepath.Join(dir, tag+"-"+role+".data"))...)
		c.Stdout, c.Stderr = io.Discard, io.Discard
		if c.Start() == nil {
			cmds = append(cmds, c)
		}
	}
	time.Sleep(300 * time.Millisecond) // perf attaches before the transfer starts
	return func() {
		for _, c := range cmds {
			c.Process.Signal(syscall.SIGINT)
			c.Wait()
		}
	}
}

const perfStatEvents = "task-clock,context-switches,cpu-migrations,page-faults," +
	"syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_pread64,syscalls:sys_enter_pwrite64," +
	"syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_futex,syscalls:sys_enter_nanosleep"

func printSingle(rows []singleRow, size int64) {
	w := os.Stdout
	fmt.Fprintf(w, "single stream: one seed → one leecher, %d MiB, loopback, no caps\n\n", size/mib)
	fmt.Fprintf(w, "  %-32s %7s %6s  %12s %13s %6s  %8s %9s  %s\n", "", "seconds", "MiB/s", "seed CPU/GiB", "leech CPU/GiB", "sum", "seed RSS", "leech RSS", "syscalls/MiB seed, leech")
	for _, r := range rows {
		rss := func(b int64) string {
			if b == 0 {
				return "-"
			}
			return fmt.Sprintf("%dMiB", b>>20)
		}
		sys := ""
		if r.Seed.SyscallsPerMiB > 0 {
			sys = fmt.Sprintf("%.0f, %.0f", r.Seed.SyscallsPerMiB, r.Leecher.SyscallsPerMiB)
		}
		fmt.Fprintf(w, "  %-32s %7.2f %6.0f  %12.2f %13.2f %6.2f  %8s %9s  %s\n", r.Name, r.Seconds, r.MiBs,
			r.Seed.PerGiB, r.Leecher.PerGiB, r.totalPerGiB(), rss(r.Seed.PeakRSS), rss(r.Leecher.PeakRSS), sys)
	}
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Name, r.Note)
		}
	}
	fmt.Fprintln(w, "  CPU is user+system of each process over the transfer alone, in seconds per GiB moved.")
	var floor float64
	for _, r := range rows {
		if r.Name == floorRow {
			floor = r.totalPerGiB()
		}
	}
	if floor > 0 {
		for _, r := range rows {
			if strings.HasPrefix(r.Name, "ballena, libp2p") {
				fmt.Fprintf(w, "  %s: %.2f× the floor's CPU\n", r.Name, r.totalPerGiB()/floor)
			}
		}
	}
}
