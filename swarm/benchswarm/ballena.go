package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/swarm"
)

// runBallena runs the seed and leechers as `ballena node` daemons: the seed
// publishes a whale of F bytes, each leecher fetches it through `ballena fetch`,
// as an operator would.
func runBallena(ctx context.Context, bin, work string, n int, F, capB int64) (swarmRun, error) {
	var sw swarmRun
	setup := time.Now()
	bin, err := filepath.Abs(bin)
	if err != nil {
		return sw, err
	}
	run := func(dir string, args ...string) ([]byte, error) {
		c := exec.CommandContext(ctx, bin, append([]string{"--data", dir}, args...)...)
		c.Dir = work
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
	if _, err := run(filepath.Join(work, "keys"), "key", "generate", "--dir", work, "release"); err != nil {
		return sw, err
	}
	trust := filepath.Join(work, "trust.yaml")
	if err := os.WriteFile(trust, []byte("keys:\n  - path: release.pub\n    names: [\"bench\"]\n"), 0o644); err != nil {
		return sw, err
	}
	// A whale must be a static ELF: the ballena binary itself, padded with
	// random bytes to F.
	whale := filepath.Join(work, "bench")
	if err := makeWhale(bin, whale, F); err != nil {
		return sw, err
	}
	limit := fmt.Sprintf("%dB", capB)
	var (
		mu    sync.Mutex
		procs []*exec.Cmd
	)
	startNode := func(dir string, bootstrap string) (string, error) {
		args := []string{"--data", dir, "--log-level", "warn", "node", "--listen", "/ip4/127.0.0.1/tcp/0",
			"--trust", trust, "--upload-limit", limit, "--download-limit", limit}
		if bootstrap != "" {
			args = append(args, "--bootstrap", bootstrap)
		}
		c := exec.Command(bin, args...)
		c.Dir = work
		c.Stdout, c.Stderr = io.Discard, os.Stderr
		if err := c.Start(); err != nil {
			return "", err
		}
		mu.Lock()
		procs = append(procs, c)
		mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := run(dir, "status", "--json")
			if err == nil {
				var st struct{ Addrs []string }
				if json.Unmarshal(out, &st) == nil && len(st.Addrs) > 0 {
					return st.Addrs[0], nil
				}
			}
			if time.Now().After(deadline) {
				return "", fmt.Errorf("node %s did not come up: %v", dir, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	defer func() {
		for _, c := range procs {
			if c.ProcessState == nil {
				c.Process.Signal(syscall.SIGKILL)
				c.Wait()
			}
		}
	}()
	seedDir := filepath.Join(work, "seed")
	seedAddr, err := startNode(seedDir, "")
	if err != nil {
		return sw, err
	}
	out, err := run(seedDir, "publish", "--json", "--key", filepath.Join(work, "release.key"), "--name", "bench", "--version", "1.0.0", whale)
	if err != nil {
		return sw, err
	}
	if err := json.Unmarshal(out, &sw.rel); err != nil || sw.rel.Digest == "" {
		// Fall back to the store's record through status.
		var rel artifact.Release
		if err2 := json.Unmarshal(out, &struct{ Release *artifact.Release }{&rel}); err2 == nil && rel.Digest != "" {
			sw.rel = rel
		} else {
			return sw, fmt.Errorf("publish: cannot read its JSON output %q", truncate(out))
		}
	}
	sw.seedBlob = whale
	dirs := make([]string, n)
	errs := make(chan error, n)
	for i := range n {
		dirs[i] = filepath.Join(work, fmt.Sprintf("leech%02d", i+1))
		go func() {
			_, err := startNode(dirs[i], seedAddr)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			return sw, err
		}
	}
	sw.setup = time.Since(setup).Seconds()

	start := time.Now()
	finish := make([]float64, n)
	for i := range n {
		go func() {
			_, err := run(dirs[i], "fetch", "--json", "bench@1.0.0")
			finish[i] = time.Since(start).Seconds()
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			return sw, err
		}
	}
	sw.finish = finish
	fmt.Fprintf(os.Stderr, "benchswarm: swarm done in %.1fs; now the HTTP baseline\n", time.Since(start).Seconds())

	transfers := func(dir string) (ts swarm.TransferStats, err error) {
		out, err := run(dir, "status", "--json")
		if err != nil {
			return ts, err
		}
		var st struct{ Transfers []swarm.TransferStats }
		if err := json.Unmarshal(out, &st); err != nil {
			return ts, err
		}
		for _, t := range st.Transfers {
			if t.Digest == sw.rel.Digest {
				return t, nil
			}
		}
		return ts, fmt.Errorf("%s: no transfer of the artifact in its status", dir)
	}
	seedTS, err := transfers(seedDir)
	if err != nil {
		return sw, err
	}
	sw.seedSent = seedTS.BytesUploaded
	for _, d := range dirs {
		ts, err := transfers(d)
		if err != nil {
			return sw, err
		}
		sw.received += ts.BytesDownloaded
		sw.idleDown = append(sw.idleDown, ts.DownloadIdleSeconds)
		sw.idleUp = append(sw.idleUp, ts.UploadIdleSeconds)
		if err := verifyBlob(filepath.Join(d, "blobs", "sha256", sw.rel.Digest), sw.rel.Digest); err != nil {
			return sw, err
		}
	}
	for _, c := range procs {
		c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range procs {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.Process.Signal(syscall.SIGKILL)
			<-done
		}
		sw.cpu += (c.ProcessState.UserTime() + c.ProcessState.SystemTime()).Seconds()
	}
	return sw, nil
}

// makeWhale copies the static binary bin to path and pads it with random
// bytes to size.
func makeWhale(bin, path string, size int64) error {
	src, err := os.Open(bin)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if st.Size() >= size {
		return fmt.Errorf("-size must exceed the ballena binary (%d MiB) in this mode", st.Size()>>20+1)
	}
	dst, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	var seed [32]byte
	h := sha256.Sum256([]byte(time.Now().String()))
	copy(seed[:], h[:])
	if _, err := io.CopyN(dst, chachaReader{mrand.NewChaCha8(seed)}, size-st.Size()); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	return os.Chmod(path, 0o755)
}

func truncate(b []byte) string {
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}
