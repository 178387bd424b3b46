package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ballena.dev/internal/cgtest"
	"ballena.dev/internal/testbin"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"ballena.dev/internal/testnet"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// ballenaBinary is this command built static once per test binary, for tests
// that need real daemon processes.
func ballenaBinary(t *testing.T) string { return testbin.Build(t, ".") }

// daemonProc is one `ballena node` process.
type daemonProc struct {
	t     *testing.T
	data  string
	cmd   *exec.Cmd
	addr  string // first full multiaddr it printed
	stder *bytes.Buffer
	done  chan error

	stopOnce sync.Once
	stopErr  error
}

func startNode(t *testing.T, name string, args ...string) *daemonProc {
	t.Helper()
	return startNodeAt(t, name, filepath.Join(t.TempDir(), name), args...)
}

func startNodeAt(t *testing.T, name, data string, args ...string) *daemonProc {
	t.Helper()
	cmd := exec.Command(ballenaBinary(t), append([]string{"--data", data, "node",
		"--listen", "/ip4/127.0.0.1/tcp/0", "--cgroup-parent", "ballena-test-" + name}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{t: t, data: data, cmd: cmd, stder: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = &lockedBuffer{buf: p.stder}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				select {
				case addrs <- a:
				default:
				}
			}
		}
	}()
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, p.stderr())
		}
		// A node that stops leaves its tasks running (a restarted node adopts
		// them): at the end of the test they go, or they would hold their ports
		// and memory for the next one.
		cgtest.RemoveParent("ballena-test-" + name)
	})
	select {
	case p.addr = <-addrs:
	case err := <-p.done:
		p.done <- err
		t.Fatalf("%s exited at start: %v\n%s", name, err, p.stderr())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s printed no address in 30s\n%s", name, p.stderr())
	}
	// The socket comes up right after the addresses are printed.
	poll.Until(t, 10*time.Second, name+" local API", func() bool {
		_, err := os.Stat(filepath.Join(data, "ballena.sock"))
		return err == nil
	})
	return p
}

func (p *daemonProc) stderr() string {
	return p.cmd.Stderr.(*lockedBuffer).String()
}

// stop sends SIGTERM and expects a clean exit; later calls return the same result.
func (p *daemonProc) stop() error {
	p.stopOnce.Do(func() {
		select {
		case err := <-p.done: // exited already
			p.stopErr = err
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case p.stopErr = <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			p.stopErr = errors.New("did not stop within 20s of SIGTERM")
		}
	})
	return p.stopErr
}

// cli runs the built binary against this node's data dir.
func (p *daemonProc) cli(args ...string) (int, string, string) {
	p.t.Helper()
	cmd := exec.Command(ballenaBinary(p.t), append(args, "--data", p.data)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return 0, stdout.String(), stderr.String()
}

func (p *daemonProc) status(t *testing.T) swarm.Status {
	t.Helper()
	code, out, errOut := p.cli("status", "--json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var s swarm.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	return s
}

func (p *daemonProc) holds(t *testing.T, ref string) bool {
	for _, r := range p.status(t).Holds {
		if r.Ref().String() == ref {
			return true
		}
	}
	return false
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf *bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Three `ballena node` processes in a line (a - b - c) under one fleet PSK: a
// publishes; b auto-fetches what it trusts and drops what it does not; c
// fetches by name through b; an outsider without the PSK gets nothing; a
// standard client downloads the .torrent export.
func TestNodeProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs several node processes")
	}
	dir := t.TempDir()
	whale := sampleWhale(t)
	keyPath, pubPath, _, err := signing.WriteKeyPair(dir, "release")
	if err != nil {
		t.Fatal(err)
	}
	evilKey, _, _, err := signing.WriteKeyPair(dir, "evil")
	if err != nil {
		t.Fatal(err)
	}
	trust := filepath.Join(dir, "trust.yaml")
	os.WriteFile(trust, []byte(fmt.Sprintf("keys:\n  - path: %s\n    names: [\"*\"]\n", pubPath)), 0o644)
	psk := filepath.Join(dir, "fleet.psk")
	if code, _, errOut := run(t, dir, "node", "psk", "generate", psk); code != 0 {
		t.Fatalf("psk generate: %d %s", code, errOut)
	}
	common := []string{"--psk", psk, "--trust", trust}

	a := startNode(t, "a", append(common, "--bt-listen", "127.0.0.1:0")...)
	// b takes bulk connections on a given address, c takes none and dials
	// none: its pieces come in libp2p streams.
	b := startNode(t, "b", append(common, "--bootstrap", a.addr, "--auto-fetch", "hello*", "--bulk-listen", "127.0.0.1:0")...)
	c := startNode(t, "c", append(common, "--bootstrap", b.addr, "--download-limit", "200MiB", "--upload-limit", "100MiB", "--bulk-listen", "off", "--timer-slack", "3ms")...)
	outsider := startNode(t, "outsider", "--trust", trust, "--bootstrap", a.addr)
	poll.Until(t, 20*time.Second, "b to see a and c", func() bool { return len(b.status(t).Peers) == 2 })
	// --timer-slack: 1ms by default on every thread, the runtime's own too.
	if got := threadSlacks(t, a.cmd.Process.Pid); len(got) != 1 || !got["1000000"] {
		t.Errorf("a's threads' timer slack (ns): %v, want only 1000000", got)
	}
	if got := threadSlacks(t, c.cmd.Process.Pid); len(got) != 1 || !got["3000000"] {
		t.Errorf("c's threads' timer slack (ns) with --timer-slack 3ms: %v, want only 3000000", got)
	}

	// An untrusted release first, then a trusted one: once b has auto-fetched
	// the second, it has judged the first.
	if code, _, errOut := a.cli("publish", "--key", evilKey, "--name", "hello", "--version", "6.6.6", whale); code != 0 {
		t.Fatalf("publish: %d %s", code, errOut)
	}
	if code, _, errOut := a.cli("publish", "--key", keyPath, "--name", "hello", "--version", "1.0.0", whale); code != 0 {
		t.Fatalf("publish: %d %s", code, errOut)
	}
	poll.Until(t, 60*time.Second, "b to auto-fetch hello@1.0.0", func() bool { return b.holds(t, "hello@1.0.0") })
	if b.holds(t, "hello@6.6.6") {
		t.Fatal("b auto-fetched a release signed by an untrusted key")
	}

	code, out, errOut := c.cli("fetch", "--timeout", "60s", "hello@1.0.0")
	if code != 0 {
		t.Fatalf("fetch: exit %d: %s", code, errOut)
	}
	// Not a terminal: plain progress lines, the last one complete.
	mustContain(t, errOut, "hello@1.0.0: ", "(100%)")
	mustContain(t, out, "fetched hello@1.0.0 sha256:"+sha256Of(t, whale))
	// Already held: answered at once, as JSON.
	code, out, errOut = c.cli("fetch", "--json", "hello@1.0.0")
	if code != 0 {
		t.Fatalf("fetch: exit %d: %s", code, errOut)
	}
	var rel artifact.Release
	if err := json.Unmarshal([]byte(out), &rel); err != nil {
		t.Fatalf("fetch --json: %v: %s", err, out)
	}
	if want := sha256Of(t, whale); rel.Digest != want {
		t.Fatalf("fetched sha256 %s, want %s", rel.Digest, want)
	}
	if got := sha256Of(t, filepath.Join(c.data, "blobs", "sha256", rel.Digest)); got != rel.Digest {
		t.Fatalf("stored blob hashes to %s", got)
	}
	if code, _, errOut := c.cli("verify", "--trust", trust, "hello@1.0.0"); code != 0 {
		t.Fatalf("verify after fetch: %d %s", code, errOut)
	}

	// Refusals and absences, each with its exit code and nothing left behind.
	code, _, errOut = c.cli("fetch", "--timeout", "10s", "hello@6.6.6")
	if code != exitVerify {
		t.Errorf("fetch of an untrusted release: exit %d (%s), want %d", code, errOut, exitVerify)
	}
	code, _, errOut = c.cli("fetch", "ghost@1.0.0", "--timeout", "2s")
	if code != exitNotFound || !strings.Contains(errOut, "nobody has it") {
		t.Errorf("fetch of what nobody has: exit %d (%s), want %d", code, errOut, exitNotFound)
	}
	if s := c.status(t); len(s.Holds) != 1 || len(s.Transfers) != 1 {
		t.Errorf("c holds %v and runs %v, want only hello@1.0.0", s.Holds, s.Transfers)
	}
	// The only staged files are those of the blob c seeds (the engine seeds
	// from a hard link of it).
	ents, _ := os.ReadDir(filepath.Join(c.data, "tmp"))
	for _, e := range ents {
		if !strings.Contains(e.Name(), rel.Digest) {
			t.Errorf("c left %s in its temp dir", e.Name())
		}
	}

	// Holders exist but the wait runs out first: unavailable, not absent.
	slow := startNode(t, "slow", append(common, "--bootstrap", a.addr, "--download-limit", "64KiB")...)
	poll.Until(t, 20*time.Second, "slow to join", func() bool { return len(slow.status(t).Peers) > 0 })
	code, _, errOut = slow.cli("fetch", "hello@1.0.0", "--timeout", "3s")
	if code != exitUnavailable {
		t.Errorf("fetch that outlasts its timeout: exit %d (%s), want %d", code, errOut, exitUnavailable)
	}

	// The outsider has no PSK: no fleet node lets it in.
	if s := outsider.status(t); len(s.Peers) != 0 {
		t.Errorf("outsider has peers %v", s.Peers)
	}
	if code, _, _ := outsider.cli("fetch", "--timeout", "2s", "hello@1.0.0"); code != exitNotFound {
		t.Errorf("outsider fetch: exit %d, want %d", code, exitNotFound)
	}

	// A standard BitTorrent client downloads from the export.
	{
		aria, err := exec.LookPath("aria2c")
		if err != nil {
			t.Fatalf("aria2c is needed (apt-get install aria2; .ci/run installs it): %v", err)
		}
		tf := filepath.Join(dir, "hello.torrent")
		code, out, errOut := a.cli("torrent", "hello@1.0.0", "--out", tf)
		if code != 0 || !strings.Contains(out, "magnet:?xt=urn:btih:"+rel.InfoHash) {
			t.Fatalf("torrent: exit %d: %s %s", code, out, errOut)
		}
		dl := t.TempDir()
		cmd := exec.Command(aria, "--dir", dl, "--seed-time=0", "--enable-dht=false", "--bt-enable-lpd=false",
			"--enable-peer-exchange=false", "--bt-stop-timeout=60", tf)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("aria2c: %v\n%s", err, b)
		}
		if got := sha256Of(t, filepath.Join(dl, rel.Digest)); got != rel.Digest {
			t.Fatalf("aria2c downloaded sha256 %s, want %s", got, rel.Digest)
		}
	}

	// A restarted node keeps its identity and seeds what it holds again.
	idA := a.status(t).ID
	if err := a.stop(); err != nil {
		t.Fatalf("a: SIGTERM: %v", err)
	}
	a = startNodeAt(t, "a-again", a.data, common...)
	s := a.status(t)
	if s.ID != idA {
		t.Errorf("a came back as %s, was %s", s.ID, idA)
	}
	seeding := false
	for _, tr := range s.Transfers {
		seeding = seeding || (tr.Digest == rel.Digest && tr.Seeding)
	}
	if !seeding {
		t.Errorf("restarted a does not seed hello@1.0.0: %+v", s.Transfers)
	}

	// gc through the daemon stops the seeding of what it removes.
	if code, _, errOut := c.cli("rm", "hello@1.0.0"); code != 0 {
		t.Fatalf("rm: %d %s", code, errOut)
	}
	if code, out, errOut := c.cli("gc"); code != 0 || !strings.Contains(out, rel.Digest) {
		t.Fatalf("gc: %d %s %s", code, out, errOut)
	}
	if s := c.status(t); len(s.Holds) != 0 || len(s.Transfers) != 0 {
		t.Errorf("after gc c holds %v and runs %v", s.Holds, s.Transfers)
	}

	for name, p := range map[string]*daemonProc{"a": a, "b": b, "c": c, "outsider": outsider, "slow": slow} {
		if err := p.stop(); err != nil {
			t.Errorf("%s: SIGTERM: %v", name, err)
		}
	}
}

// TestNodeClosedByDefault: a node that would listen beyond loopback without a
// PSK is refused with one line naming --psk and --open-mesh.
func TestNodeClosedByDefault(t *testing.T) {
	code, _, msg := run(t, t.TempDir(), "node", "--listen", "/ip4/0.0.0.0/tcp/0")
	if code != exitUsage || !strings.Contains(msg, "--psk") || !strings.Contains(msg, "--open-mesh") ||
		strings.Count(strings.TrimSpace(msg), "\n") != 0 {
		t.Fatalf("exit %d, %q: want a usage error, one line naming --psk and --open-mesh", code, msg)
	}
}

// TestNodeAllowlistSIGHUP: a node whose allowlist does not list a peer
// refuses it and counts the refusal in status; SIGHUP re-reads the list and
// the peer gets in.
func TestNodeAllowlistSIGHUP(t *testing.T) {
	b := startNode(t, "b")
	idB := b.status(t).ID
	allow := filepath.Join(t.TempDir(), "allow")
	if err := os.WriteFile(allow, []byte("# nobody yet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startNode(t, "a", "--allow-peers", allow, "--bootstrap", b.addr)
	poll.Until(t, 20*time.Second, "a refusing b", func() bool {
		return a.status(t).Gate.Refused[swarm.RefusedOutbound] > 0
	})
	if code, out, _ := a.cli("status"); code != 0 || !strings.Contains(out, "refused") {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	if err := os.WriteFile(allow, []byte(idB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "b let in", func() bool {
		return slices.ContainsFunc(a.status(t).Peers, func(p swarm.PeerStatus) bool { return p.ID == idB })
	})
}

// TestNodeFlagsMalformed: a bad --bulk-listen or --timer-slack is a usage
// error of one line naming the flag, before anything starts.
func TestNodeFlagsMalformed(t *testing.T) {
	for _, tc := range []struct{ flag, value string }{
		{"--bulk-listen", "7401"},
		{"--timer-slack", "-1ms"},
		{"--procs", "-1"},
	} {
		code, _, msg := run(t, t.TempDir(), "node", "--listen", "/ip4/127.0.0.1/tcp/0", tc.flag, tc.value)
		if code != exitUsage || !strings.Contains(msg, tc.flag) ||
			strings.Count(strings.TrimSpace(msg), "\n") != 0 {
			t.Errorf("%s %s: exit %d, %q: want a usage error, one line naming %s", tc.flag, tc.value, code, msg, tc.flag)
		}
	}
}

// threadSlacks is the set of timer slacks of pid's threads.
func threadSlacks(t *testing.T, pid int) map[string]bool {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	for _, task := range tasks {
		if b, err := os.ReadFile(filepath.Join("/proc", task.Name(), "timerslack_ns")); err == nil {
			set[strings.TrimSpace(string(b))] = true
		}
	}
	return set
}

// TestNodeProcs: a node capped both ways runs its Go code on one thread, the
// GOMAXPROCS environment variable overrides that, and so does --procs. The
// node's own metrics tell.
func TestNodeProcs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs node processes")
	}
	if runtime.NumCPU() < 2 {
		t.Skip("one core: a capped node and an uncapped one both run on one thread")
	}
	t.Setenv("GOMAXPROCS", "") // the nodes inherit the environment
	caps := []string{"--upload-limit", "16MiB", "--download-limit", "16MiB"}
	gomaxprocs := func(name string, args ...string) string {
		addr := testnet.FreeAddr(t)
		startNode(t, name, append(args, "--metrics-listen", addr)...)
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "go_sched_gomaxprocs_threads "); ok {
				return v
			}
		}
		t.Fatalf("%s: no go_sched_gomaxprocs_threads in its metrics", name)
		return ""
	}
	if got := gomaxprocs("capped", caps...); got != "1" {
		t.Errorf("node capped at 16MiB/s both ways: GOMAXPROCS %s, want 1", got)
	}
	if got, want := gomaxprocs("uncapped"), fmt.Sprint(runtime.GOMAXPROCS(0)); got != want {
		t.Errorf("uncapped node: GOMAXPROCS %s, want the default, %s", got, want)
	}
	if got := gomaxprocs("flag", append(caps, "--procs", "3")...); got != "3" {
		t.Errorf("--procs 3: GOMAXPROCS %s", got)
	}
	t.Setenv("GOMAXPROCS", "2")
	if got := gomaxprocs("env", caps...); got != "2" {
		t.Errorf("capped node under GOMAXPROCS=2: GOMAXPROCS %s, want 2", got)
	}
}
