package launcher

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type tarEntry struct {
	name, body, link string
	mode             int64
	typ              byte
}

func layerOf(t testing.TB, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body)), Typeflag: typ, Linkname: e.link}
		if typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// buildImage writes a docker-save tarball of an image holding the task
// binary at /bin/task, in two layers, the second whiting out a file of the first.
func buildImage(t testing.TB) string {
	t.Helper()
	bin, err := os.ReadFile(taskBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	base := layerOf(t,
		tarEntry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "bin/task", body: string(bin), mode: 0o755},
		tarEntry{name: "etc/old.txt", body: "old", mode: 0o644}, // no parent dir entry: made on the way
		tarEntry{name: "etc/keep.txt", body: "keep", mode: 0o644},
	)
	top := layerOf(t,
		tarEntry{name: "etc/.wh.old.txt", mode: 0o644},
		tarEntry{name: "bin/sh", typ: tar.TypeSymlink, link: "task"},
	)
	img, err := mutate.AppendLayers(empty.Image, base, top)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: []string{"/bin/task"}, Cmd: []string{"ps"}, Env: []string{"GREETING=from-image"}, WorkingDir: "/etc"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "image.tar")
	tag, _ := name.NewTag("ballena.local/task:1.0.0")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
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
	if cg.v2 {
		checks = map[string]string{filepath.Join(cg.dir(""), "memory.max"): "50331648", filepath.Join(cg.dir(""), "pids.max"): "40"}
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
		entries []tarEntry
		escaped func(root string) string // where the file lands if the link is followed
	}{
		{[]tarEntry{{name: "evil", typ: tar.TypeSymlink, link: "/"}, {name: "evil/etc/x", body: "x", mode: 0o644}},
			func(string) string { return "/etc/x" }},
		{[]tarEntry{{name: "up", typ: tar.TypeSymlink, link: "../.."}, {name: "up/x", body: "x", mode: 0o644}},
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
		l := layerOf(t, tc.entries...)
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		err = unpack(context.Background(), rc, root)
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
