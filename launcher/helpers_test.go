package launcher

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ballena.dev/internal/testbin"

	"ballena.dev/artifact"
	"ballena.dev/signing"

	"ballena.dev/internal/cgtest"
)

func TestMain(m *testing.M) {
	MaybeRunInit()
	if os.Getenv(daemonEnv) != "" {
		os.Exit(runTestDaemon())
	}
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// taskBinary is testdata/task built static, once per test run.
func taskBinary(t testing.TB) string { return testbin.Build(t, "./testdata/task") }

// requireRoot skips tests that need root and cgroups.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: tasks run in new namespaces and cgroups")
	}
	if _, err := os.Stat(filepath.Join(cgroupRoot, "memory")); err != nil && !cgroupV2() {
		t.Skip("needs a cgroup memory controller")
	}
}

// testEnv is a node's worth of launcher: a store with a publisher key, a
// trust policy trusting it, and a launcher with its own cgroup parent.
type testEnv struct {
	t       testing.TB
	dir     string
	store   *artifact.Store
	priv    ed25519.PrivateKey
	pubPath string
	policy  string
	l       *Launcher
	parent  string
	events  chan Task
}

func newEnv(t testing.TB, tune func(*Config)) *testEnv {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	st, err := artifact.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	_, pubPath, _, err := signing.WriteKeyPair(dir, "release")
	if err != nil {
		t.Fatal(err)
	}
	priv, err := signing.LoadPrivateKey(filepath.Join(dir, "release.key"))
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, dir: dir, store: st, priv: priv, pubPath: pubPath,
		policy: filepath.Join(dir, "trust.yaml"), parent: fmt.Sprintf("ballena-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6),
		events: make(chan Task, 1000)}
	e.writePolicy("threshold: 1\nkeys:\n  - path: release.pub\n    names: [\"*\"]\n")
	cfg := Config{
		DataDir: dir, DB: st.DB(), CgroupParent: e.parent,
		Verifier:       &StoreVerifier{Store: st, PolicyPath: e.policy},
		RestartBackoff: 20 * time.Millisecond, RestartBackoffMax: 100 * time.Millisecond,
		OnEvent: func(t Task) {
			select {
			case e.events <- t:
			default:
			}
		},
	}
	if tune != nil {
		tune(&cfg)
	}
	if cfg.CheckHelper == "" {
		cfg.CheckHelper = testbin.Build(t, "./testdata/checkhelper")
	}
	e.l, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	return e
}

func (e *testEnv) writePolicy(yaml string) {
	e.t.Helper()
	if err := os.WriteFile(e.policy, []byte(yaml), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *testEnv) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tk := range e.l.List() {
		if !tk.State.Final() {
			_, _ = e.l.Stop(ctx, tk.ID, syscall.SIGKILL, 0)
		}
	}
	e.l.Close()
	e.store.Close()
	cgtest.RemoveParent(e.parent)
}

// publish signs and stores path as name@version.
func (e *testEnv) publish(path, name, version string, kind artifact.Kind) artifact.Release {
	e.t.Helper()
	rel, _, err := artifact.Publish(context.Background(), e.store, path, artifact.PublishOptions{
		Name: name, Version: version, Kind: kind, Keys: []ed25519.PrivateKey{e.priv},
		SourceRepo: "https://example.com/ballena", SourceCommit: strings.Repeat("a", 40),
	})
	if err != nil {
		e.t.Fatalf("publish %s@%s: %v", name, version, err)
	}
	return rel
}

func (e *testEnv) publishTask() string {
	e.t.Helper()
	e.publish(taskBinary(e.t), "task", "1.0.0", artifact.KindWhale)
	return "task@1.0.0"
}

func (e *testEnv) start(spec TaskSpec) Task {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tk, err := e.l.Start(ctx, spec)
	if err != nil {
		e.t.Fatalf("start %v: %v", spec.Args, err)
	}
	return tk
}

func (e *testEnv) wait(id string) Task {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tk, err := e.l.Wait(ctx, id)
	if err != nil {
		e.t.Fatalf("wait %s: %v (state %s)", id, err, tk.State)
	}
	return tk
}

func (e *testEnv) logs(id string) string {
	e.t.Helper()
	rc, err := e.l.Logs(context.Background(), id, false)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rc.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := rc.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

// children lists the PIDs whose parent is this process, but for warm shims
// (which wait for a start and run nothing until then).
func children() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	me := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(me) && f[0] != "Z" {
			if cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline"); string(cmd) == "ballena-shim-warm\x00" {
				continue
			}
			out = append(out, pid)
		}
	}
	return out
}

func fmtSscan(line string, n *int) (int, error) {
	return fmt.Sscanf(strings.TrimSpace(line), "line %d", n)
}

func signingWriteKeyPair(dir, name string) (string, string, string, error) {
	return signing.WriteKeyPair(dir, name)
}

func keyIDOf(t testing.TB, pubPath string) string {
	pub, err := signing.LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	return signing.KeyID(pub)
}

func loadKey(t testing.TB, path string) ed25519.PrivateKey {
	k, err := signing.LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
