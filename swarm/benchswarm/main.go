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
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"golang.org/x/time/rate"

	"ballena.dev/artifact"
	"ballena.dev/swarm"
	"ballena.dev/swarm/internal/dirstore"
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
	flag.Parse()

	work, err := os.MkdirTemp("", "benchswarm-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(work)
	}
	capB := int64(*capMiB * mib)
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

// swarmRun is what one swarm run measured.
type swarmRun struct {
	rel      artifact.Release
	seedBlob string    // the blob, for the HTTP baseline
	finish   []float64 // seconds from start until each leecher held the verified blob
	setup    float64
	cpu      float64   // CPU seconds of all node processes
	seedSent int64     // piece bytes the seed uploaded
	received int64     // piece bytes all leechers received
	idleDown []float64 // per leecher: seconds of its download with nothing arriving
	idleUp   []float64 // per leecher: seconds of its download with verified pieces and nothing sent
}

// runEngines runs the seed and leechers as processes of this program, each a
// swarm.Engine on its own libp2p host.
func runEngines(ctx context.Context, work string, n int, F, capB int64) (swarmRun, error) {
	var sw swarmRun
	setup := time.Now()
	seedDir := filepath.Join(work, "seed")
	blob, rel, err := makeBlob(seedDir, F)
	if err != nil {
		return sw, err
	}
	sw.rel, sw.seedBlob = rel, blob
	self, err := os.Executable()
	if err != nil {
		return sw, err
	}
	nodes := make([]*node, n+1)
	var wg sync.WaitGroup
	var startErr error
	var mu sync.Mutex
	for i := range nodes {
		dir := seedDir
		if i > 0 {
			dir = filepath.Join(work, fmt.Sprintf("leech%02d", i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd, err := startNode(ctx, self, dir, capB)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				startErr = errors.Join(startErr, err)
			}
			nodes[i] = nd
		}()
	}
	wg.Wait()
	defer func() {
		for _, nd := range nodes {
			if nd != nil {
				nd.stop()
			}
		}
	}()
	if startErr != nil {
		return sw, startErr
	}
	seed := nodes[0]
	if err := seed.call(cmd{Op: "seed", Rel: rel}); err != nil {
		return sw, err
	}
	var all []peer.AddrInfo
	for _, nd := range nodes {
		all = append(all, nd.ai)
	}
	for _, nd := range nodes {
		if err := nd.call(cmd{Op: "peers", Rel: rel, Peers: all}); err != nil {
			return sw, err
		}
	}
	sw.setup = time.Since(setup).Seconds()
	start := time.Now()
	for _, nd := range nodes[1:] {
		nd.send(cmd{Op: "download", Rel: rel})
	}
	for _, nd := range nodes[1:] {
		m, err := nd.wait(ctx, func(m msg) bool { return m.Done != nil })
		if err != nil {
			return sw, fmt.Errorf("leecher %s: %w", nd.dir, err)
		}
		if m.Done.Err != "" {
			return sw, fmt.Errorf("leecher %s: %s", nd.dir, m.Done.Err)
		}
		sw.finish = append(sw.finish, m.Done.At.Sub(start).Seconds())
		sw.received += m.Done.Read
		sw.idleDown = append(sw.idleDown, m.Done.IdleDown)
		sw.idleUp = append(sw.idleUp, m.Done.IdleUp)
	}
	fmt.Fprintf(os.Stderr, "benchswarm: swarm done in %.1fs; now the HTTP baseline\n", slices.Max(sw.finish))
	st, err := seed.stats()
	if err != nil {
		return sw, err
	}
	sw.seedSent = st.Uploaded
	for _, nd := range nodes {
		c, err := nd.exit()
		if err != nil {
			return sw, err
		}
		sw.cpu += c
	}
	for _, nd := range nodes[1:] {
		if err := verifyBlob(filepath.Join(nd.dir, "blobs", rel.Digest), rel.Digest); err != nil {
			return sw, err
		}
	}
	return sw, nil
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
	v = slices.Clone(v)
	sort.Float64s(v)
	return v
}

// median of a sorted, non-empty slice.
func median(v []float64) float64 { return v[len(v)/2] }

// makeBlob writes F random bytes as the seed's blob and returns its release.
func makeBlob(dir string, F int64) (string, artifact.Release, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o700); err != nil {
		return "", artifact.Release{}, err
	}
	tmp := filepath.Join(dir, "blob.tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return "", artifact.Release{}, err
	}
	var seed [32]byte
	rand.Read(seed[:])
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), chachaReader{mrand.NewChaCha8(seed)}, F); err != nil {
		f.Close()
		return "", artifact.Release{}, err
	}
	if err := f.Close(); err != nil {
		return "", artifact.Release{}, err
	}
	digest := hex.EncodeToString(h.Sum(nil))
	blob := filepath.Join(dir, "blobs", digest)
	if err := os.Rename(tmp, blob); err != nil {
		return "", artifact.Release{}, err
	}
	info, err := artifact.TorrentInfo(blob, digest)
	if err != nil {
		return "", artifact.Release{}, err
	}
	b, err := bencode.Marshal(info)
	if err != nil {
		return "", artifact.Release{}, err
	}
	return blob, artifact.Release{
		Name: "bench", Version: "1.0.0", Kind: artifact.KindWhale,
		Digest: digest, Size: F, PieceLength: info.PieceLength,
		InfoHash: metainfo.HashBytes(b).HexString(), PublishedAt: time.Now(),
	}, nil
}

type chachaReader struct{ c *mrand.ChaCha8 }

func (r chachaReader) Read(p []byte) (int, error) { return r.c.Read(p) }

func verifyBlob(path, digest string) error {
	got, err := dirstore.SHA256File(path)
	if err != nil {
		return fmt.Errorf("leecher has no blob: %w", err)
	}
	if got != digest {
		return fmt.Errorf("%s has sha256 %s, want %s", path, got, digest)
	}
	return nil
}

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

// httpBaseline times n clients, each capped at down, fetching size bytes of
// path from one HTTP server whose total upload is capped at up.
func httpBaseline(ctx context.Context, path string, size int64, n int, up, down int64) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	limit := rate.NewLimiter(rate.Limit(up), 256<<10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Length", fmt.Sprint(size))
		io.Copy(limitedWriter{r.Context(), w, limit}, io.LimitReader(f, size))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	start := time.Now()
	errs := make(chan error, n)
	for range n {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			dl := rate.NewLimiter(rate.Limit(down), 256<<10)
			got, err := io.Copy(io.Discard, limitedReader{ctx, resp.Body, dl})
			if err == nil && got != size {
				err = fmt.Errorf("got %d of %d bytes", got, size)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			return 0, err
		}
	}
	return time.Since(start).Seconds(), nil
}

type limitedWriter struct {
	ctx context.Context
	w   io.Writer
	l   *rate.Limiter
}

func (w limitedWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), 64<<10)
		if err := w.l.WaitN(w.ctx, c); err != nil {
			return n, err
		}
		m, err := w.w.Write(p[:c])
		n += m
		if err != nil {
			return n, err
		}
		p = p[c:]
	}
	return n, nil
}

type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (r limitedReader) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.WaitN(r.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// The node process and the orchestrator speak JSON lines over stdin and stdout.

type cmd struct {
	Op    string           `json:"op"`
	Rel   artifact.Release `json:"rel"`
	Peers []peer.AddrInfo  `json:"peers,omitempty"`
}

type msg struct {
	Ready *peer.AddrInfo `json:"ready,omitempty"`
	OK    string         `json:"ok,omitempty"`
	Err   string         `json:"err,omitempty"`
	Done  *struct {
		Err      string    `json:"err"`
		Read     int64     `json:"read"`
		IdleDown float64   `json:"idleDown"`
		IdleUp   float64   `json:"idleUp"`
		At       time.Time `json:"-"`
	} `json:"done,omitempty"`
	Stats *nodeStats `json:"stats,omitempty"`
}

type nodeStats struct {
	Uploaded   int64 `json:"uploaded"`
	Downloaded int64 `json:"downloaded"`
}

type node struct {
	dir  string
	cmd  *exec.Cmd
	in   io.WriteCloser
	msgs chan msg
	ai   peer.AddrInfo
}

func startNode(ctx context.Context, self, dir string, capB int64) (*node, error) {
	c := exec.Command(self, "node", "-dir", dir, "-up", fmt.Sprint(capB), "-down", fmt.Sprint(capB))
	c.Stderr = os.Stderr
	in, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	nd := &node{dir: dir, cmd: c, in: in, msgs: make(chan msg, 64)}
	go func() {
		defer close(nd.msgs)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var m msg
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				if m.Done != nil {
					m.Done.At = time.Now()
				}
				nd.msgs <- m
			}
		}
	}()
	m, err := nd.wait(ctx, func(m msg) bool { return m.Ready != nil })
	if err != nil {
		nd.stop()
		return nil, fmt.Errorf("node %s: %w", dir, err)
	}
	nd.ai = *m.Ready
	return nd, nil
}

func (nd *node) send(c cmd) {
	b, _ := json.Marshal(c)
	nd.in.Write(append(b, '\n'))
}

func (nd *node) wait(ctx context.Context, ok func(msg) bool) (msg, error) {
	for {
		select {
		case m, open := <-nd.msgs:
			if !open {
				return msg{}, errors.New("node exited")
			}
			if m.Err != "" {
				return m, errors.New(m.Err)
			}
			if ok(m) {
				return m, nil
			}
		case <-ctx.Done():
			return msg{}, ctx.Err()
		}
	}
}

func (nd *node) call(c cmd) error {
	nd.send(c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := nd.wait(ctx, func(m msg) bool { return m.OK == c.Op })
	return err
}

func (nd *node) stats() (nodeStats, error) {
	nd.send(cmd{Op: "stats"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := nd.wait(ctx, func(m msg) bool { return m.Stats != nil })
	if err != nil {
		return nodeStats{}, err
	}
	return *m.Stats, nil
}

// exit ends the node and returns the CPU seconds it used.
func (nd *node) exit() (float64, error) {
	nd.in.Close()
	if err := nd.cmd.Wait(); err != nil {
		return 0, fmt.Errorf("node %s: %w", nd.dir, err)
	}
	ps := nd.cmd.ProcessState
	return (ps.UserTime() + ps.SystemTime()).Seconds(), nil
}

func (nd *node) stop() {
	if nd.cmd.ProcessState == nil {
		nd.cmd.Process.Signal(syscall.SIGKILL)
		nd.cmd.Wait()
	}
}

// runNode is one swarm node: a libp2p host and an engine, driven over stdin.
func runNode(args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	dir := fs.String("dir", "", "node dir")
	up := fs.Int64("up", 0, "upload cap, bytes/s")
	down := fs.Int64("down", 0, "download cap, bytes/s")
	fs.Parse(args)
	if p := os.Getenv("BENCHSWARM_CPUPROFILE"); p != "" {
		f, err := os.Create(filepath.Join(p, filepath.Base(*dir)+".pprof"))
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	h, err := libp2p.New(
		libp2p.NoTransports,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.DisableRelay(),
	)
	if err != nil {
		return err
	}
	defer h.Close()
	st, err := dirstore.New(*dir)
	if err != nil {
		return err
	}
	e, err := swarm.NewEngine(context.Background(), swarm.EngineConfig{
		DataDir: *dir, Host: h, Store: st, UploadLimit: *up, DownloadLimit: *down,
		StallTimeout: time.Minute,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	defer e.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	send := func(m any) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(m)
	}
	send(map[string]any{"ready": peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}})
	totals := func() (up, down int64) {
		for _, ts := range e.Transfers() {
			up += ts.BytesUploaded
			down += ts.BytesDownloaded
		}
		return
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var c cmd
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return err
		}
		switch c.Op {
		case "seed":
			if err := e.Seed(context.Background(), c.Rel); err != nil {
				send(map[string]string{"err": err.Error()})
				continue
			}
			send(map[string]string{"ok": "seed"})
		case "peers":
			var ids []peer.ID
			for _, ai := range c.Peers {
				if ai.ID == h.ID() {
					continue
				}
				h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
				ids = append(ids, ai.ID)
			}
			e.AddPeers(c.Rel.InfoHash, ids)
			send(map[string]string{"ok": "peers"})
		case "download":
			go func() {
				err := e.Download(context.Background(), c.Rel, nil)
				s := ""
				if err != nil {
					s = err.Error()
				}
				done := map[string]any{"err": s}
				for _, ts := range e.Transfers() {
					if ts.Digest == c.Rel.Digest {
						done["read"], done["idleDown"], done["idleUp"] = ts.BytesDownloaded, ts.DownloadIdleSeconds, ts.UploadIdleSeconds
					}
				}
				send(map[string]any{"done": done})
			}()
		case "stats":
			up, down := totals()
			send(map[string]any{"stats": nodeStats{Uploaded: up, Downloaded: down}})
		}
	}
	return sc.Err()
}
