// Package testbin builds this module's programs for tests that need real
// executables (the ballena binary, the sample whale, a task): each package once
// per test process, static, the way they ship.
package testbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

type build struct {
	once sync.Once
	path string
	err  error
}

var (
	mu     sync.Mutex
	builds = map[string]*build{}
	dir    string
)

// Build compiles the package at pkg (a directory, relative to the test's package
// as `go build` takes it) with CGO_ENABLED=0, once per test process, and returns
// the binary's path. A failed build fails the test with the compiler's output.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	abs, err := filepath.Abs(pkg)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	b := builds[abs]
	if b == nil {
		b = &build{}
		builds[abs] = b
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ballena-testbin-"); err != nil {
			mu.Unlock()
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, fmt.Sprintf("%s-%d", filepath.Base(abs), len(builds)))
	mu.Unlock()
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
		cmd.Dir = abs
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, msg)
			return
		}
		b.path = out
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Cleanup removes every binary built so far; TestMain calls it after m.Run.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
	}
}
