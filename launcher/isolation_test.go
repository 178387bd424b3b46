package launcher

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"ballena.dev/artifact"
	"ballena.dev/internal/ocitest"
	"ballena.dev/internal/testnet"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// probeReport is what testdata/task's probe mode prints.
type probeReport struct {
	Seccomp    string
	NoNewPrivs string
	CapEff     string
	UID, GID   int
	UIDMap     string
	Syscalls   map[string]string
	NoFile     string
	Core       string
	Hosts      string
	Resolv     string
	Hostname   string
	ExeOwner   int
	ExeSha256  string
	Dial       string
}

func (e *testEnv) probe(spec TaskSpec) (Task, probeReport) {
	e.t.Helper()
	tk := e.wait(e.start(spec).ID)
	out := e.logs(tk.ID)
	if tk.State != StateExited || tk.Exit.Code != 0 {
		e.t.Fatalf("probe ended %s %s; log:\n%s", tk.State, tk.Exit, out)
	}
	var r probeReport
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		e.t.Fatalf("probe output %q: %v", out, err)
	}
	return tk, r
}

// deniedByDefault are the calls the probe tries that the default filter refuses with EPERM.
var deniedByDefault = []string{"unshare(CLONE_NEWUSER)", "clone(CLONE_NEWUSER)", "keyctl", "add_key", "bpf",
	"perf_event_open", "io_uring_setup", "userfaultfd", "ptrace", "mount", "open_tree"}

func assertConfined(t *testing.T, what string, r probeReport) {
	t.Helper()
	if r.Seccomp != "2" {
		t.Errorf("%s: Seccomp: %q in /proc/self/status, want 2 (filter)", what, r.Seccomp)
	}
	for _, name := range deniedByDefault {
		if got := r.Syscalls[name]; got != "operation not permitted" {
			t.Errorf("%s: %s answered %q, want EPERM (operation not permitted)", what, name, got)
		}
	}
	if got := r.Syscalls["clone3"]; got != "function not implemented" {
		t.Errorf("%s: clone3 answered %q, want ENOSYS so that libc falls back to clone", what, got)
	}
}

// uidMapOf parses "0 HOST SIZE" of a one-line uid_map.
func uidMapOf(t *testing.T, s string) (inside, host, size uint64) {
	t.Helper()
	if _, err := fmt.Sscanf(s, "%d %d %d", &inside, &host, &size); err != nil {
		t.Fatalf("uid_map %q: %v", s, err)
	}
	return
}

func TestWhaleSeccompAndUserNamespace(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	if iso := e.l.Isolation(); !iso.UserNS || !iso.Seccomp {
		t.Fatalf("this kernel has user namespaces and seccomp, but the launcher found %+v", iso)
	}
	// uid 0 in the task, on the host an id of the subordinate range: never root.
	tk, r := e.probe(TaskSpec{Artifact: ref, Args: []string{"probe"}, User: "0:0"})
	assertConfined(t, "whale as 0:0", r)
	in, host, size := uidMapOf(t, r.UIDMap)
	if in != 0 || host < defaultIDRangeStart || host+size > defaultIDRangeStart+defaultIDRangeCount || size != idsPerTask {
		t.Errorf("uid_map %q: want 0 -> a block of %d in the subordinate range, never host root", r.UIDMap, idsPerTask)
	}
	if r.UID != 0 || r.GID != 0 || r.CapEff != "0000000000000000" || r.NoNewPrivs != "1" {
		t.Errorf("ids %d:%d caps %s nnp %s, want 0:0 without capabilities, no_new_privs", r.UID, r.GID, r.CapEff, r.NoNewPrivs)
	}
	if tk.UserNS == nil || uint64(tk.UserNS.HostID) != host || tk.Seccomp != SeccompDefault || tk.User != "0:0" {
		t.Errorf("task record: userns %v seccomp %q user %q", tk.UserNS, tk.Seccomp, tk.User)
	}
	if r.NoFile != "4096/4096" || r.Core != "0/0" {
		t.Errorf("rlimits nofile %s core %s, want 4096/4096 and 0/0", r.NoFile, r.Core)
	}
	// The host's hosts and resolv.conf on the host network; the task's own hostname.
	if hb, _ := os.ReadFile("/etc/hosts"); r.Hosts != string(hb) || r.Hostname != "task\n" {
		t.Errorf("/etc/hosts %q (want the host's), /etc/hostname %q", r.Hosts, r.Hostname)
	}

	// Two tasks at once never share a block.
	a := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}})
	b := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}})
	if a.UserNS == nil || b.UserNS == nil || *a.UserNS == *b.UserNS {
		t.Errorf("two running tasks got user namespaces %v and %v, want distinct blocks", a.UserNS, b.UserNS)
	}

	// The opt-out: no filter, said so in the record. The task still has its user namespace.
	tk, r = e.probe(TaskSpec{Artifact: ref, Args: []string{"probe"}, Seccomp: SeccompUnconfined, NoFile: 100, CoreBytes: 1 << 20})
	if r.Seccomp != "0" || tk.Seccomp != SeccompUnconfined {
		t.Errorf("unconfined: Seccomp %q, record %q; want 0 and unconfined", r.Seccomp, tk.Seccomp)
	}
	if r.Syscalls["clone3"] == "function not implemented" || r.Syscalls["bpf"] == "operation not permitted" && r.Syscalls["io_uring_setup"] == "operation not permitted" && r.Syscalls["keyctl"] == "operation not permitted" {
		t.Errorf("unconfined task still filtered: %v", r.Syscalls)
	}
	if r.NoFile != "100/100" || r.Core != "1048576/1048576" {
		t.Errorf("rlimits set per task: nofile %s core %s", r.NoFile, r.Core)
	}
}

func TestWhaleNetworkNone(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	ln := testnet.Loopback(t) // a loopback-only service of the host
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	_, r := e.probe(TaskSpec{Artifact: ref, Args: []string{"probe", addr}, Network: "none"})
	if r.Dial == "connected" || r.Dial == "" {
		t.Errorf("network none reached the host's loopback listener %s: %q", addr, r.Dial)
	}
	if !strings.Contains(r.Hosts, "127.0.0.1\tlocalhost task") || strings.Contains(r.Resolv, "nameserver") {
		t.Errorf("network none: /etc/hosts %q, resolv.conf %q; want loopback only", r.Hosts, r.Resolv)
	}
	assertConfined(t, "network none", r)
	_, r = e.probe(TaskSpec{Artifact: ref, Args: []string{"probe", addr}})
	if r.Dial != "connected" {
		t.Errorf("network host could not reach %s: %q", addr, r.Dial)
	}
}

func TestWhaleWithoutUserNamespaces(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.NoUserNS = true })
	ref := e.publishTask()
	iso := e.l.Isolation()
	if iso.UserNS || iso.UserNSError == "" {
		t.Fatalf("isolation with user namespaces off: %+v", iso)
	}
	tk, r := e.probe(TaskSpec{Artifact: ref, Args: []string{"probe"}})
	if r.UIDMap != "0 0 4294967295" || r.UID != 65534 || tk.UserNS != nil {
		t.Errorf("without user namespaces: uid_map %q uid %d record %v; want the host's map and the unprivileged default user", r.UIDMap, r.UID, tk.UserNS)
	}
	assertConfined(t, "without userns", r)
}

// What runs is what was verified: the bytes the task executes hash to the
// verified digest, and the launcher's copy (a sealed memfd) cannot be changed.
func TestWhaleRunsTheVerifiedBytes(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk, r := e.probe(TaskSpec{Artifact: ref, Args: []string{"probe"}})
	if r.ExeSha256 != tk.Digest {
		t.Errorf("the task executes bytes hashing to %s, verified %s", r.ExeSha256, tk.Digest)
	}
	e.l.exeMu.Lock()
	memfd := e.l.exes[tk.Digest]
	e.l.exeMu.Unlock()
	if memfd == nil {
		t.Fatal("no sealed copy of the whale")
	}
	w, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", memfd.Fd()), os.O_WRONLY, 0)
	if err == nil {
		_, err = w.Write([]byte("#!/bin/sh\necho pwned\n"))
		w.Close()
	}
	if err == nil {
		t.Fatal("root could write into the sealed copy of the whale")
	}
	if err := syscall.Ftruncate(int(memfd.Fd()), 0); err == nil {
		t.Fatal("root could truncate the sealed copy of the whale")
	}
	_, r = e.probe(TaskSpec{Artifact: ref, Args: []string{"probe"}})
	if r.ExeSha256 != tk.Digest {
		t.Errorf("second run executes %s, verified %s", r.ExeSha256, tk.Digest)
	}
}

// Where the kernel refuses executable memfds, the copy on disk is re-hashed
// before every start, through the descriptor that is executed: a copy
// swapped on disk never runs.
func TestSwappedCachedWhaleNeverRuns(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.WarmShims, c.NoMemfd = -1, true })
	ref := e.publishTask()
	tk, r := e.probe(TaskSpec{Artifact: ref, Args: []string{"probe"}})
	if r.ExeSha256 != tk.Digest {
		t.Fatalf("first run executes %s, verified %s", r.ExeSha256, tk.Digest)
	}
	copyPath := filepath.Join(e.dir, "launcher", "bin", tk.Digest)
	evil := []byte("#!/bin/sh\necho pwned\n")
	if err := os.Chmod(copyPath, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyPath, evil, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(copyPath, 0o555); err != nil {
		t.Fatal(err)
	}
	before := len(e.l.List())
	_, err := e.l.Start(context.Background(), TaskSpec{Artifact: ref, Args: []string{"hello"}})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "changed on disk") || !strings.Contains(err.Error(), tk.Digest) {
		t.Fatalf("start with a swapped copy: %v; want a refusal naming the verified digest", err)
	}
	if n := len(e.l.List()); n != before {
		t.Errorf("a refused start left a task behind (%d tasks, want %d)", n, before)
	}
}

func TestPinnedDigestEnforced(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	other := strings.Repeat("ab", 32)
	_, err := e.l.Start(context.Background(), TaskSpec{Artifact: ref, Args: []string{"hello"}, Digest: "sha256:" + other})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), other) {
		t.Fatalf("start pinned to another digest: %v; want ErrRefused naming both digests", err)
	}
	rel, _, _ := e.store.Release(artifact.Ref{Name: "task", Version: "1.0.0"})
	if !strings.Contains(err.Error(), rel.Digest) {
		t.Errorf("refusal %q does not name the digest held (%s)", err, rel.Digest)
	}
	tk := e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"hello"}, Digest: rel.Digest}).ID)
	if tk.State != StateExited || tk.Exit.Code != 0 {
		t.Errorf("start pinned to the held digest: %s %s", tk.State, tk.Exit)
	}
}

func TestLogsKeepStreamsApart(t *testing.T) {
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.wait(e.start(TaskSpec{Artifact: ref, Args: []string{"streams"}}).ID)
	read := func(s Streams) string {
		rc, err := e.l.LogStream(context.Background(), tk.ID, false, s)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		return string(b)
	}
	if got := read(Streams{Stdout: true}); got != "out 0\nout 1\nout 2\n" {
		t.Errorf("stdout: %q", got)
	}
	if got := read(Streams{Stderr: true}); got != "err 0\nerr 1\nerr 2\n" {
		t.Errorf("stderr: %q", got)
	}
	// Both: every line once, each stream in its order (two pipes: the
	// order between streams is the order the shim read them in).
	both := strings.Split(strings.TrimSpace(read(Streams{})), "\n")
	var outs, errs []string
	for _, l := range both {
		if strings.HasPrefix(l, "out") {
			outs = append(outs, l)
		} else {
			errs = append(errs, l)
		}
	}
	if len(both) != 6 || strings.Join(outs, ",") != "out 0,out 1,out 2" || strings.Join(errs, ",") != "err 0,err 1,err 2" {
		t.Errorf("both streams: %q", both)
	}
	var lines []struct{ Stream, Line string }
	for _, l := range strings.Split(strings.TrimSpace(read(Streams{JSON: true})), "\n") {
		var v struct{ Stream, Line string }
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("json line %q: %v", l, err)
		}
		lines = append(lines, v)
	}
	if len(lines) != 6 {
		t.Fatalf("json lines: %+v", lines)
	}
	for _, l := range lines {
		if want := map[bool]string{true: "stdout", false: "stderr"}[strings.HasPrefix(l.Line, "out")]; l.Stream != want {
			t.Errorf("json line %+v: stream %s, want %s", l, l.Stream, want)
		}
	}
}

// buildUserImage is an image holding the task binary whose config says
// User: app, with app (1000:1000) in its /etc/passwd.
func buildUserImage(t testing.TB) string {
	t.Helper()
	bin, err := os.ReadFile(taskBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	layer := ocitest.Layer(t,
		ocitest.Entry{Name: "bin/", Typ: tar.TypeDir, Mode: 0o755},
		ocitest.Entry{Name: "bin/task", Body: string(bin), Mode: 0o755},
		ocitest.Entry{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", Mode: 0o644},
		ocitest.Entry{Name: "etc/group", Body: "root:x:0:\napp:x:1000:\nstaff:x:50:\n", Mode: 0o644},
	)
	img := ocitest.Image(t, "amd64", v1.Config{Entrypoint: []string{"/bin/task"}, Cmd: []string{"probe"}, User: "app"}, layer)
	p := filepath.Join(t.TempDir(), "image.tar")
	ocitest.WriteDockerSave(t, p, "ballena.local/userimg:1.0.0", img)
	return p
}

func TestImageUserSeccompAndUserNamespace(t *testing.T) {
	requireRunc(t)
	for _, idmapped := range []bool{true, false} {
		t.Run(fmt.Sprintf("idmapped=%v", idmapped), func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.NoIDMappedMounts = !idmapped })
			if iso := e.l.Isolation(); iso.IDMappedMounts != idmapped {
				t.Fatalf("idmapped mounts: %+v", iso)
			}
			e.publish(buildUserImage(t), "userimg", "1.0.0", artifact.KindOCI)
			tk, r := e.probe(TaskSpec{Artifact: "userimg@1.0.0"})
			assertConfined(t, "image", r)
			if r.UID != 1000 || r.GID != 1000 || tk.User != "1000:1000" {
				t.Errorf("image User app: runs as %d:%d (record %q), want 1000:1000", r.UID, r.GID, tk.User)
			}
			in, host, _ := uidMapOf(t, r.UIDMap)
			if in != 0 || host < defaultIDRangeStart {
				t.Errorf("image uid_map %q: want 0 -> the subordinate range", r.UIDMap)
			}
			// Root-owned files of the image are root's inside the task's namespace.
			if r.ExeOwner != 0 {
				t.Errorf("/bin/task is owned by %d inside the task, want 0 (the image's root)", r.ExeOwner)
			}
			// --user and the job's user: override the image's, by name too.
			_, r = e.probe(TaskSpec{Artifact: "userimg@1.0.0", User: "0:staff"})
			if r.UID != 0 || r.GID != 50 {
				t.Errorf("user 0:staff runs as %d:%d, want 0:50", r.UID, r.GID)
			}
			if _, err := e.l.Start(context.Background(), TaskSpec{Artifact: "userimg@1.0.0", User: "nobody-here"}); !errors.Is(err, ErrInvalid) {
				t.Errorf("unknown user: %v, want ErrInvalid", err)
			}
			// network none for images: loopback-only /etc/hosts, no route to the host's loopback.
			ln := testnet.Loopback(t)
			_, r = e.probe(TaskSpec{Artifact: "userimg@1.0.0", Args: []string{"probe", ln.Addr().String()}, Network: "none"})
			var opErr *net.OpError
			_ = opErr
			if r.Dial == "connected" || !strings.Contains(r.Hosts, "127.0.0.1\tlocalhost") {
				t.Errorf("image with network none: dial %q hosts %q", r.Dial, r.Hosts)
			}
			_, r = e.probe(TaskSpec{Artifact: "userimg@1.0.0", Seccomp: SeccompUnconfined})
			if r.Seccomp != "0" {
				t.Errorf("image unconfined: Seccomp %q", r.Seccomp)
			}
		})
	}
}

// An unpacked image root changed on disk is refused, removed, and unpacked
// again from the verified blob at the next start.
func TestChangedImageRootNeverRuns(t *testing.T) {
	requireRunc(t)
	e := newEnv(t, nil)
	rel := e.publish(buildUserImage(t), "userimg", "1.0.0", artifact.KindOCI)
	e.probe(TaskSpec{Artifact: "userimg@1.0.0"})
	bin := filepath.Join(e.dir, "launcher", "images", rel.Digest, "rootfs", "bin", "task")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho pwned\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := e.l.Start(context.Background(), TaskSpec{Artifact: "userimg@1.0.0"})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "tree digest") {
		t.Fatalf("start with a changed root: %v, want a refusal", err)
	}
	if _, err := os.Stat(bin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the changed root was kept: %v", err)
	}
	_, r := e.probe(TaskSpec{Artifact: "userimg@1.0.0"})
	if r.UID != 1000 {
		t.Errorf("after a fresh unpack: %+v", r)
	}
}

// A restarted launcher knows which id blocks its adopted tasks hold and
// never hands one out again while they run.
func TestAdoptedTasksKeepTheirIDBlocks(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.WarmShims = -1 })
	ref := e.publishTask()
	a := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}})
	cfg := e.l.cfg
	e.l.Close()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.l = l
	got, err := l.Get(a.ID)
	if err != nil || got.State != StateRunning || got.UserNS == nil || *got.UserNS != *a.UserNS {
		t.Fatalf("adopted task: %+v, %v", got, err)
	}
	b := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}})
	if b.UserNS == nil || *b.UserNS == *a.UserNS {
		t.Errorf("a new task got block %v, the adopted task holds %v", b.UserNS, a.UserNS)
	}
}

// No swap beyond the memory limit: memory+swap is set to the memory limit.
func TestNoSwapBeyondMemoryLimit(t *testing.T) {
	if !swapAccounting() {
		t.Skip("the kernel does not account swap per cgroup here (no memory.memsw files: boot with swapaccount=1)")
	}
	e := newEnv(t, nil)
	ref := e.publishTask()
	tk := e.start(TaskSpec{Artifact: ref, Args: []string{"serve"}, MemoryBytes: 48 << 20})
	cg := newTaskCgroup(e.parent, tk.ID)
	file, want := filepath.Join(cg.dir("memory"), "memory.memsw.limit_in_bytes"), "50331648"
	if cg.v2 {
		file, want = filepath.Join(cg.dir(""), "memory.swap.max"), "0"
	}
	if b, err := os.ReadFile(file); err != nil || strings.TrimSpace(string(b)) != want {
		t.Errorf("%s = %q (%v), want %s", file, strings.TrimSpace(string(b)), err, want)
	}
}

// Two launchers on one machine (two nodes, one per network namespace) never
// hand out the same id block: blocks are claimed machine-wide, and a task's
// shim keeps the claim while the task runs, even if its launcher goes.
func TestIDBlocksAreClaimedMachineWide(t *testing.T) {
	a := newEnv(t, func(c *Config) { c.WarmShims = -1 })
	b := newEnv(t, func(c *Config) { c.WarmShims = -1 })
	ra, rb := a.publishTask(), b.publishTask()
	ta := a.start(TaskSpec{Artifact: ra, Args: []string{"serve"}})
	tb := b.start(TaskSpec{Artifact: rb, Args: []string{"serve"}})
	if ta.UserNS == nil || tb.UserNS == nil || *ta.UserNS == *tb.UserNS {
		t.Fatalf("two launchers gave their tasks blocks %v and %v", ta.UserNS, tb.UserNS)
	}
	// a's launcher goes away; its task runs on and its shim holds the block.
	cfg := a.l.cfg
	a.l.Close()
	a.l.ids.put(ta.UserNS) // as if the launcher had died: its own claims are gone
	tc := b.start(TaskSpec{Artifact: rb, Args: []string{"serve"}})
	if tc.UserNS == nil || *tc.UserNS == *ta.UserNS {
		t.Errorf("a block still held by a running task (%v) was handed out again: %v", ta.UserNS, tc.UserNS)
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.l = l
}
