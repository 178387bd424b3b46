package swarm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"ballena.dev/swarm/internal/dirstore"
)

// The fault tests run engines as separate processes (this test binary re-executed
// into TestHelperEngineProcess), so that kill -9 is real.

const helperEnv = "BALLENA_SWARM_ENGINE_HELPER"

type helperConfig struct {
	Dir   string        `json:"dir"`
	Up    int64         `json:"up"`
	Down  int64         `json:"down"`
	Stall time.Duration `json:"stall"`
}

type helperCmd struct {
	Op     string           `json:"op"`
	Rel    artifact.Release `json:"rel"`
	Digest string           `json:"digest,omitempty"`
	Peers  []peer.AddrInfo  `json:"peers,omitempty"`
}

type helperMsg struct {
	Ready    *peer.AddrInfo `json:"ready,omitempty"`
	OK       string         `json:"ok,omitempty"`
	Err      string         `json:"err,omitempty"`
	Progress *struct {
		Have   int64  `json:"have"`
		Total  int64  `json:"total"`
		Read   int64  `json:"read"`
		Pieces string `json:"pieces"`
	} `json:"progress,omitempty"`
	Done *struct {
		Err  string `json:"err"`
		Read int64  `json:"read"`
	} `json:"done,omitempty"`
	Banned []peer.ID `json:"banned,omitempty"`
}

// TestHelperEngineProcess is not a test: it is the body of an engine process.
func TestHelperEngineProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		t.Skip("helper process only")
	}
	var cfg helperConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := runHelper(cfg, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runHelper(cfg helperConfig, in io.Reader, out io.Writer) error {
	h, err := newTestHost(cfg.Dir)
	if err != nil {
		return err
	}
	defer h.Close()
	store, err := dirstore.New(filepath.Join(cfg.Dir, "store"))
	if err != nil {
		return err
	}
	e, err := NewEngine(context.Background(), EngineConfig{
		DataDir: cfg.Dir, Host: h, Store: store,
		UploadLimit: cfg.Up, DownloadLimit: cfg.Down, StallTimeout: cfg.Stall,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	defer e.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(out)
	send := func(m any) {
		mu.Lock()
		enc.Encode(m)
		mu.Unlock()
	}
	send(map[string]any{"ready": peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}})
	read := func(digest string) int64 {
		for _, ts := range e.Transfers() {
			if ts.Digest == digest {
				return ts.BytesDownloaded
			}
		}
		return 0
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var c helperCmd
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return err
		}
		switch c.Op {
		case "seed":
			if err := e.Seed(context.Background(), c.Rel); err != nil {
				send(map[string]string{"err": err.Error()})
			} else {
				send(map[string]string{"ok": "seed"})
			}
		case "download":
			go func() {
				err := e.Download(context.Background(), c.Rel, func(p Progress) {
					var b strings.Builder
					for _, ok := range e.Pieces(c.Rel.Digest) {
						b.WriteByte("01"[btoi(ok)])
					}
					send(map[string]any{"progress": map[string]any{
						"have": p.Have, "total": p.Total, "read": read(c.Rel.Digest), "pieces": b.String(),
					}})
				})
				msg := ""
				if err != nil {
					msg = err.Error()
				}
				send(map[string]any{"done": map[string]any{"err": msg, "read": read(c.Rel.Digest)}})
			}()
		case "peers":
			var ids []peer.ID
			for _, ai := range c.Peers {
				h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
				ids = append(ids, ai.ID)
			}
			e.AddPeers(c.Rel.InfoHash, ids)
			send(map[string]string{"ok": "peers"})
		case "corrupt":
			// Flip a byte in every piece of the blob behind the engine's back, as
			// a bad disk or a malicious node would.
			f, err := os.OpenFile(store.BlobPath(c.Rel.Digest), os.O_RDWR, 0)
			if err != nil {
				send(map[string]string{"err": err.Error()})
				continue
			}
			for off := int64(100); off < c.Rel.Size; off += c.Rel.PieceLength {
				b := make([]byte, 1)
				f.ReadAt(b, off)
				b[0] ^= 0xff
				f.WriteAt(b, off)
			}
			f.Close()
			send(map[string]string{"ok": "corrupt"})
		case "banned":
			send(map[string]any{"ok": "banned", "banned": e.BannedPeers()})
		}
	}
	return sc.Err()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// proc is the parent's handle on an engine process.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	msgs  chan helperMsg
	ai    peer.AddrInfo
	dir   string
	store *dirstore.Store
}

func startProc(t *testing.T, cfg helperConfig) *proc {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	raw, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperEngineProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(raw))
	cmd.Stderr = testWriter{t}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, in: in, msgs: make(chan helperMsg, 100000), dir: cfg.Dir,
		store: &dirstore.Store{Dir: filepath.Join(cfg.Dir, "store")}}
	t.Cleanup(p.kill)
	go func() {
		defer close(p.msgs)
		sc := bufio.NewScanner(outp)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m helperMsg
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.msgs <- m
			}
		}
	}()
	m := p.expect(30*time.Second, "ready", func(m helperMsg) bool { return m.Ready != nil })
	p.ai = *m.Ready
	return p
}

func (p *proc) send(c helperCmd) {
	p.t.Helper()
	b, _ := json.Marshal(c)
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		p.t.Fatalf("send %s: %v", c.Op, err)
	}
}

// expect reads messages until one satisfies ok; an err message fails the test.
func (p *proc) expect(d time.Duration, what string, ok func(helperMsg) bool) helperMsg {
	p.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case m, open := <-p.msgs:
			if !open {
				p.t.Fatalf("process exited while waiting for %s", what)
			}
			if m.Err != "" {
				p.t.Fatalf("waiting for %s: %s", what, m.Err)
			}
			if ok(m) {
				return m
			}
		case <-timer.C:
			p.t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

func (p *proc) do(c helperCmd) helperMsg {
	p.t.Helper()
	p.send(c)
	return p.expect(30*time.Second, c.Op, func(m helperMsg) bool { return m.OK == c.Op })
}

func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

func (p *proc) peers(rel artifact.Release, others ...*proc) {
	var ais []peer.AddrInfo
	for _, o := range others {
		ais = append(ais, o.ai)
	}
	p.do(helperCmd{Op: "peers", Rel: rel, Peers: ais})
}

// seedProc starts a process holding a copy of src's blob and seeding it.
func seedProc(t *testing.T, src BlobStore, rel artifact.Release, cfg helperConfig) *proc {
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	s := newDirStore(t, filepath.Join(cfg.Dir, "store"))
	copyBlob(t, src, s, rel.Digest)
	p := startProc(t, cfg)
	p.do(helperCmd{Op: "seed", Rel: rel})
	return p
}

func complete(pieces string) bool { return pieces != "" && !strings.Contains(pieces, "0") }

func union(a, b string) string {
	if len(a) != len(b) {
		return ""
	}
	u := []byte(a)
	for i := range u {
		if b[i] == '1' {
			u[i] = '1'
		}
	}
	return string(u)
}

// TestResumeAfterKill kills a downloading process with SIGKILL half-way and
// checks that the restarted process fetches only what it had not verified.
func TestResumeAfterKill(t *testing.T) {
	src := newTestEngine(t, EngineConfig{UploadLimit: 4 << 20})
	rel := publish(t, src.store, 16<<20)
	if err := src.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	leech := startProc(t, helperConfig{Dir: dir, Stall: time.Minute})
	introduce(src.h, leech.ai)
	leech.do(helperCmd{Op: "peers", Rel: rel, Peers: []peer.AddrInfo{addrInfo(src.h)}})
	leech.send(helperCmd{Op: "download", Rel: rel})
	started := time.Now()
	m := leech.expect(time.Minute, "a third of the blob", func(m helperMsg) bool {
		return m.Progress != nil && m.Progress.Have >= rel.Size/3
	})
	if m.Progress.Have == rel.Size {
		t.Fatal("download finished before the kill; slow the seed down")
	}
	before := m.Progress.Have
	leech.kill()
	t.Logf("killed after %s with %d of %d bytes verified", time.Since(started).Round(time.Millisecond), before, rel.Size)

	leech = startProc(t, helperConfig{Dir: dir, Stall: time.Minute})
	leech.do(helperCmd{Op: "peers", Rel: rel, Peers: []peer.AddrInfo{addrInfo(src.h)}})
	leech.send(helperCmd{Op: "download", Rel: rel})
	restarted := time.Now()
	first := leech.expect(time.Minute, "progress", func(m helperMsg) bool { return m.Progress != nil })
	t.Logf("restarted with %d bytes verified, %d received", first.Progress.Have, first.Progress.Read)
	done := leech.expect(2*time.Minute, "download", func(m helperMsg) bool { return m.Done != nil })
	t.Logf("finished %s after restart", time.Since(restarted).Round(time.Millisecond))
	if done.Done.Err != "" {
		t.Fatal(done.Done.Err)
	}
	checkBlob(t, leech.store, rel.Digest)
	// Pieces in flight at the kill are fetched again; verified ones must not be.
	limit := rel.Size - before + 4*rel.PieceLength
	t.Logf("after restart received %d bytes, at most %d allowed", done.Done.Read, limit)
	if done.Done.Read > limit {
		t.Errorf("after restart received %d bytes; %d were verified before the kill, so at most %d should come again",
			done.Done.Read, before, limit)
	}
}

// TestCorruptPeerBanned has a process serve corrupt pieces beside an honest
// seed: the download completes and the corrupt peer is banned.
func TestCorruptPeerBanned(t *testing.T) {
	honest := newTestEngine(t, EngineConfig{UploadLimit: 2 << 20})
	rel := publish(t, honest.store, 8<<20)
	if err := honest.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	bad := seedProc(t, honest.store, rel, helperConfig{})
	bad.do(helperCmd{Op: "corrupt", Rel: rel})

	leech := newTestEngine(t, EngineConfig{StallTimeout: time.Minute})
	introduce(leech.h, addrInfo(honest.h))
	introduce(leech.h, bad.ai)
	// The corrupt peer alone first, so it surely serves pieces, then the honest one.
	leech.AddPeers(rel.InfoHash, []peer.ID{bad.ai.ID})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- leech.Download(ctx, rel, nil) }()
	poll.Until(t, time.Minute, "a ban", func() bool { return len(leech.BannedPeers()) > 0 })
	leech.AddPeers(rel.InfoHash, []peer.ID{honest.h.ID()})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkBlob(t, leech.store, rel.Digest)
	banned := leech.BannedPeers()
	t.Logf("banned: %v", banned)
	if len(banned) != 1 || banned[0] != bad.ai.ID {
		t.Fatalf("banned %v, want only the corrupt peer %s", banned, bad.ai.ID)
	}
	for _, pc := range leech.transferTorrent(rel.Digest).PeerConns() {
		if id, _ := leech.addrs.peerOf(pc.RemoteAddr.String()); id == bad.ai.ID {
			t.Error("still connected to the banned peer")
		}
	}
}

// TestSeedDiesLeechersFinish kills the only seed once the two leechers together
// hold every piece; they finish from each other.
func TestSeedDiesLeechersFinish(t *testing.T) {
	src := newDirStore(t, t.TempDir())
	rel := publish(t, src, 8<<20)
	seed := seedProc(t, src, rel, helperConfig{Up: 2 << 20})
	a := startProc(t, helperConfig{Up: 1 << 20, Stall: time.Minute})
	b := startProc(t, helperConfig{Up: 1 << 20, Stall: time.Minute})
	a.peers(rel, seed, b)
	b.peers(rel, seed, a)
	a.send(helperCmd{Op: "download", Rel: rel})
	b.send(helperCmd{Op: "download", Rel: rel})

	var pa, pb string
	deadline := time.After(time.Minute)
	for !complete(union(pa, pb)) {
		select {
		case m := <-a.msgs:
			if m.Progress != nil {
				pa = m.Progress.Pieces
			}
		case m := <-b.msgs:
			if m.Progress != nil {
				pb = m.Progress.Pieces
			}
		case <-deadline:
			t.Fatal("leechers never held every piece between them")
		}
	}
	seed.kill()
	t.Logf("seed killed; a has %d/%d pieces, b %d/%d", strings.Count(pa, "1"), len(pa), strings.Count(pb, "1"), len(pb))
	if complete(pa) && complete(pb) {
		t.Fatal("both leechers were complete when the seed died; the test proved nothing")
	}
	for _, p := range []*proc{a, b} {
		m := p.expect(time.Minute, "download", func(m helperMsg) bool { return m.Done != nil })
		if m.Done.Err != "" {
			t.Fatal(m.Done.Err)
		}
		checkBlob(t, p.store, rel.Digest)
	}
}

// TestSeedComesBack kills the only seed half-way; the leecher resumes when the
// seed returns.
func TestSeedComesBack(t *testing.T) {
	src := newDirStore(t, t.TempDir())
	rel := publish(t, src, 8<<20)
	seedDir := t.TempDir()
	seed := seedProc(t, src, rel, helperConfig{Dir: seedDir, Up: 2 << 20})
	leech := startProc(t, helperConfig{Stall: time.Minute})
	leech.peers(rel, seed)
	leech.send(helperCmd{Op: "download", Rel: rel})
	m := leech.expect(time.Minute, "a quarter", func(m helperMsg) bool {
		return m.Progress != nil && m.Progress.Have >= rel.Size/4
	})
	seed.kill()
	t.Logf("seed killed at %d of %d bytes", m.Progress.Have, rel.Size)

	seed = startProc(t, helperConfig{Dir: seedDir, Up: 2 << 20})
	seed.do(helperCmd{Op: "seed", Rel: rel})
	leech.peers(rel, seed) // what the mesh does when the holder reappears
	done := leech.expect(time.Minute, "download", func(m helperMsg) bool { return m.Done != nil })
	if done.Done.Err != "" {
		t.Fatal(done.Done.Err)
	}
	checkBlob(t, leech.store, rel.Digest)
}
