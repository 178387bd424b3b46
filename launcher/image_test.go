package launcher

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"ballena.dev/internal/ocitest"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// buildImage writes a docker-save tarball of an image holding the task
// binary at /bin/task, in two layers, the second whiting out a file of the first.
func buildImage(t testing.TB) string {
	t.Helper()
	bin, err := os.ReadFile(taskBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	base := ocitest.Layer(t,
		ocitest.Entry{Name: "bin/", Typ: tar.TypeDir, Mode: 0o755},
		ocitest.Entry{Name: "bin/task", Body: string(bin), Mode: 0o755},
		ocitest.Entry{Name: "etc/old.txt", Body: "old", Mode: 0o644}, // no parent dir entry: made on the way
		ocitest.Entry{Name: "etc/keep.txt", Body: "keep", Mode: 0o644},
	)
	top := ocitest.Layer(t,
		ocitest.Entry{Name: "etc/.wh.old.txt", Mode: 0o644},
		ocitest.Entry{Name: "bin/sh", Typ: tar.TypeSymlink, Link: "task"},
	)
	img := ocitest.Image(t, "amd64",
		v1.Config{Entrypoint: []string{"/bin/task"}, Cmd: []string{"ps"}, Env: []string{"GREETING=from-image"}, WorkingDir: "/etc"},
		base, top)
	p := filepath.Join(t.TempDir(), "image.tar")
	ocitest.WriteDockerSave(t, p, "ballena.local/task:1.0.0", img)
	return p
}

func requireRunc(t testing.TB) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatal("runc is needed for images: apt-get install runc (.ci/run installs it)")
	}
}

func TestImageRunsUnderRunc(t *testing.T) {
	requireRunc(t)
	e := newEnv(t, nil)
	rel := e.publish(buildImage(t), "taskimg", "1.0.0", artifact.KindOCI)

	// The image's own entrypoint and cmd: isolated like a whale.
	tk := e.wait(e.start(TaskSpec{Artifact: "taskimg@1.0.0"}).ID)
	log := e.logs(tk.ID)
	if tk.State != StateExited || tk.Exit.Code != 0 {
		t.Fatalf("image task ended %s %s; log:\n%s", tk.State, tk.Exit, log)
	}
	var got struct {
		Pids     []int
		UID      int
		CapEff   string
		Env      string
		Hostname string
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(log)), &got); err != nil {
		t.Fatalf("task output %q: %v", log, err)
	}
	if !slices.Equal(got.Pids, []int{1}) || got.UID != 65534 || got.CapEff != "0000000000000000" || got.Env != "from-image" {
		t.Errorf("inside the image task: %+v", got)
	}
	rootfs := filepath.Join(e.dir, "launcher", "images", rel.Digest, "rootfs")
	if _, err := os.Stat(filepath.Join(rootfs, "etc", "old.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("whiteout not honoured: etc/old.txt %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(rootfs, "etc", "keep.txt")); err != nil || string(b) != "keep" {
		t.Errorf("etc/keep.txt: %q %v", b, err)
	}

	// Overridden args, with its limits applied by runc in its cgroup.
	tk = e.start(TaskSpec{Artifact: "taskimg@1.0.0", Args: []string{"serve"}, MemoryBytes: 48 << 20, CPUMillis: 250, Pids: 40})
	cg := newTaskCgroup(e.parent, tk.ID)
	poll.Until(t, 10*time.Second, "ready", func() bool { return strings.Contains(e.logs(tk.ID), "ready") })
	checks := map[string]string{
		filepath.Join(cg.dir("memory"), "memory.limit_in_bytes"): "50331648",
		filepath.Join(cg.dir("cpu"), "cpu.cfs_quota_us"):         "25000",
		filepath.Join(cg.dir("pids"), "pids.max"):                "40",
	}
	if swapAccounting() { // no swap beyond the limit
		checks[filepath.Join(cg.dir("memory"), "memory.memsw.limit_in_bytes")] = "50331648"
	}
	if cg.v2 {
		checks = map[string]string{filepath.Join(cg.dir(""), "memory.max"): "50331648", filepath.Join(cg.dir(""), "pids.max"): "40",
			filepath.Join(cg.dir(""), "memory.swap.max"): "0"}
	}
	for f, want := range checks {
		if b, err := os.ReadFile(f); err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q (%v), want %s", f, strings.TrimSpace(string(b)), err, want)
		}
	}
	if pids, _ := cg.procs(); !slices.Contains(pids, tk.PID) {
		t.Errorf("task pid %d not in its cgroup %v", tk.PID, pids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tk, err := e.l.Stop(ctx, tk.ID, 0, 10*time.Second)
	if err != nil || tk.State != StateStopped || tk.Exit.Code != 7 {
		t.Fatalf("stop image task: %v %s %s", err, tk.State, tk.Exit)
	}
	assertNoCgroup(t, cg.path, "after stop")

	// OOM under runc is told apart too.
	tk = e.wait(e.start(TaskSpec{Artifact: "taskimg@1.0.0", Args: []string{"hog"}, MemoryBytes: 32 << 20}).ID)
	if tk.State != StateOOM {
		t.Errorf("image hog ended %s %s, want oom", tk.State, tk.Exit)
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	for _, tc := range []struct {
		entries []ocitest.Entry
		escaped func(root string) string // where the file lands if the link is followed
	}{
		{[]ocitest.Entry{{Name: "evil", Typ: tar.TypeSymlink, Link: "/"}, {Name: "evil/etc/x", Body: "x", Mode: 0o644}},
			func(string) string { return "/etc/x" }},
		{[]ocitest.Entry{{Name: "up", Typ: tar.TypeSymlink, Link: "../.."}, {Name: "up/x", Body: "x", Mode: 0o644}},
			func(root string) string { return filepath.Join(root, "../..", "x") }},
	} {
		// Each case in a directory of its own, two levels down, so that "../.."
		// from the root lands in a place this test owns and can look at.
		root := filepath.Join(t.TempDir(), "a", "rootfs")
		if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
			t.Fatal(err)
		}
		target := tc.escaped(root)
		if _, err := os.Stat(target); err == nil {
			t.Fatalf("%s exists before the unpack", target)
		}
		l := ocitest.Layer(t, tc.entries...)
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		err = unpack(context.Background(), rc, root, 0)
		rc.Close()
		if err == nil {
			t.Errorf("unpack of %v succeeded, want an error", tc.entries)
		}
		if _, err := os.Stat(target); err == nil {
			t.Errorf("unpack wrote %s outside its root", target)
			os.Remove(target)
		}
	}
}
