package launcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const benchLaunches = 200

// BenchmarkLaunch measures launch latency of a whale, from Start (verified
// artifact already in the store: re-hash, signature check, cgroup, shim,
// namespaces, exec) to the process running in its cgroup, beside `runc run
// --detach` of the same binary in a bundle with the same limits, measured in
// the same run. p50-ms is with the default warm shim (its init already forked
// into fresh namespaces), cold-p50-ms without one. Run with -benchtime=1x:
// each iteration launches 200 of each, interleaved.
func BenchmarkLaunch(b *testing.B) {
	requireRunc(b)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	e := newEnv(b, func(c *Config) { c.Logger = quiet })
	ref := e.publishTask()
	// The same without a warm shim: the cost of starting shim and init.
	cold := newEnv(b, func(c *Config) { c.Logger = quiet; c.WarmShims = -1 })
	cold.publishTask()
	spec := TaskSpec{Artifact: ref, Args: []string{"serve"}, MemoryBytes: 64 << 20, CPUMillis: 500, Pids: 64}
	ctx := context.Background()

	// The runc bundle: the same binary, limits and namespaces.
	bundle := filepath.Join(e.dir, "runc-bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"proc", "dev", "sys", "tmp", "run"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", taskBinary(b), filepath.Join(rootfs, "task")).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v %s", err, out)
	}
	runcRoot := filepath.Join(e.dir, "runc-root")
	b.Cleanup(func() { // containers left by a failed iteration
		out, _ := exec.Command("runc", "--root", runcRoot, "list", "-q").Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
		}
	})
	devnull, _ := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	defer devnull.Close()
	runcLaunch := func(i int) time.Duration {
		id := fmt.Sprintf("bench-%d", i)
		t := Task{ID: id, Spec: spec, Cgroup: "/" + e.parent + "/" + id}
		t.Spec.User, t.Spec.Network, t.Spec.NoFile = "65534:65534", "host", 4096
		cfg, _ := json.Marshal(ociSpec(t, rootfs, []string{"/task", "serve"}, []string{"PATH=/"}, "/", 65534, 65534, "task", nil, nil))
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), cfg, 0o600); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command("runc", "--root", runcRoot, "run", "--detach", "--bundle", bundle, id)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
		t0 := time.Now()
		err := cmd.Run()
		d := time.Since(t0)
		if err != nil {
			b.Fatalf("runc run: %v", err)
		}
		_ = exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
		return d
	}
	whaleLaunch := func(l *Launcher) time.Duration {
		t0 := time.Now()
		tk, err := l.Start(ctx, spec)
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.Stop(ctx, tk.ID, syscall.SIGKILL, 0); err != nil {
			b.Fatal(err)
		}
		if err := l.Remove(tk.ID); err != nil {
			b.Fatal(err)
		}
		return d
	}
	whaleLaunch(e.l) // stage the executable copy, warm caches
	whaleLaunch(cold.l)
	runcLaunch(-1)

	var whale, coldWhale, runc []time.Duration
	b.ResetTimer()
	for range b.N {
		for i := range benchLaunches { // interleaved, so both see the same machine
			whale = append(whale, whaleLaunch(e.l))
			coldWhale = append(coldWhale, whaleLaunch(cold.l))
			runc = append(runc, runcLaunch(i))
		}
	}
	b.StopTimer()
	ms := func(ds []time.Duration, q float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(ms(whale, 0.50), "p50-ms")
	b.ReportMetric(ms(whale, 0.99), "p99-ms")
	b.ReportMetric(ms(coldWhale, 0.50), "cold-p50-ms")
	b.ReportMetric(ms(coldWhale, 0.99), "cold-p99-ms")
	b.ReportMetric(ms(runc, 0.50), "runc-p50-ms")
	b.ReportMetric(ms(runc, 0.99), "runc-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// The per-launch costs isolation adds, one by one (make bench-launch has
// the whole launch): re-hashing the cached whale through the descriptor that
// is executed (only where memfds cannot be executed; otherwise a sealed memfd
// costs nothing per launch), assembling the seccomp filter, re-hashing an
// unpacked image root, and the user namespace an idmapped image root needs.
func BenchmarkIsolationCosts(b *testing.B) {
	requireRoot(b)
	bin := taskBinary(b)
	st, _ := os.Stat(bin)
	b.Run("rehash-whale-fallback", func(b *testing.B) {
		b.SetBytes(st.Size())
		digest, err := artifactHash(bin)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			f, err := openVerified(bin, digest)
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	b.Run("seccomp-assemble", func(b *testing.B) {
		for b.Loop() {
			pol, err := whaleSeccompPolicy()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := pol.Assemble(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("tree-digest-image", func(b *testing.B) {
		dir := b.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "rootfs", "bin"), 0o755); err != nil {
			b.Fatal(err)
		}
		if out, err := exec.Command("cp", bin, filepath.Join(dir, "rootfs", "bin", "task")).CombinedOutput(); err != nil {
			b.Fatalf("cp: %v %s", err, out)
		}
		b.SetBytes(st.Size())
		for b.Loop() {
			if _, err := treeDigest(dir); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("chowned-copy-image", func(b *testing.B) { // per start, only where idmapped mounts are missing
		img := buildUserImage(b)
		digest, err := artifactHash(img)
		if err != nil {
			b.Fatal(err)
		}
		l := &Launcher{}
		art := Artifact{BlobPath: img, Digest: digest}
		for b.Loop() {
			dir := filepath.Join(b.TempDir(), "rootfs")
			if err := l.unpackBlob(context.Background(), art, dir, defaultIDRangeStart); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("userns-for-idmap", func(b *testing.B) {
		for b.Loop() {
			h, err := holdUserNS(&IDMap{HostID: defaultIDRangeStart, Size: idsPerTask})
			if err != nil {
				b.Fatal(err)
			}
			h.close()
		}
	})
}

func artifactHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
