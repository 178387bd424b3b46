//go:build linux

package timerslack

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// restoreSlack skips t unless it runs as root, and returns the process's
// slack, which every thread gets back when t ends.
func restoreSlack(t *testing.T, why string) time.Duration {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip(why)
	}
	orig, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Set(orig) })
	return orig
}

func TestSetReachesEveryThread(t *testing.T) {
	old := restoreSlack(t, "setting other threads' slack needs CAP_SYS_NICE")
	const want = 3 * time.Millisecond
	if old == want {
		t.Fatalf("the process already runs with %v", want)
	}

	if err := Set(want); err != nil {
		t.Fatal(err)
	}
	if off := threadsNotAt(t, want); len(off) > 0 {
		t.Errorf("threads (TID=ns) not at %v after Set: %v", want, off)
	}

	// Threads started afterwards: each locked goroutine holds its thread, so
	// the others need new ones.
	const n = 4
	var wg sync.WaitGroup
	var started sync.WaitGroup
	started.Add(n)
	got := make([]time.Duration, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			started.Done()
			started.Wait()
			got[i], errs[i] = Get() // this thread's, locked to it
		})
	}
	wg.Wait()
	for i, g := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if g != want {
			t.Errorf("thread %d started after Set: %v, want %v", i, g, want)
		}
	}

	// And the processes it starts.
	out, err := exec.Command("cat", "/proc/self/timerslack_ns").Output()
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(out)); s != strconv.FormatInt(want.Nanoseconds(), 10) {
		t.Errorf("child process: %s ns, want %v", s, want)
	}
	if got, err := Get(); err != nil || got != want {
		t.Errorf("Get: %v, %v; want %v", got, err, want)
	}

	// Start gives a child another slack, and leaves none of the process's
	// threads with it.
	var buf strings.Builder
	cmd := exec.Command("cat", "/proc/self/timerslack_ns")
	cmd.Stdout = &buf
	if err := Start(cmd, old); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(buf.String()); s != strconv.FormatInt(old.Nanoseconds(), 10) {
		t.Errorf("child started with Start(%v): %s ns", old, s)
	}
	if off := threadsNotAt(t, want); len(off) > 0 {
		t.Errorf("threads (TID=ns) not at %v after Start: %v", want, off)
	}
}

// threadsNotAt lists this process's threads whose slack is not d, as TID=slack.
func threadsNotAt(t *testing.T, d time.Duration) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var off []string
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc", task.Name(), "timerslack_ns"))
		if err != nil {
			continue // it exited
		}
		if s := strings.TrimSpace(string(b)); s != strconv.FormatInt(d.Nanoseconds(), 10) {
			off = append(off, task.Name()+"="+s)
		}
	}
	return off
}

func TestStartRefusesPdeathsig(t *testing.T) {
	cmd := exec.Command("true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Start(cmd, time.Millisecond); err == nil {
		cmd.Wait()
		t.Fatal("Start with Pdeathsig: no error")
	}
}

func TestSetRefusesNonPositive(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Millisecond} {
		if err := Set(d); err == nil {
			t.Errorf("Set(%v): no error", d)
		}
	}
}

// TestSetWithoutCapSysNice: without the capability, Set still sets the calling
// thread and says which threads it could not set, and why.
func TestSetWithoutCapSysNice(t *testing.T) {
	restoreSlack(t, "drops CAP_SYS_NICE, which only root has here")
	const want = 3 * time.Millisecond
	type result struct {
		err  error
		self time.Duration
	}
	done := make(chan result, 1)
	go func() {
		// Capabilities are a thread's own: only this one loses CAP_SYS_NICE,
		// and it ends with the goroutine, still locked.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- result{err: err}
			return
		}
		data[0].Effective &^= 1 << unix.CAP_SYS_NICE
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- result{err: err}
			return
		}
		err := Set(want)
		self, _ := Get()
		done <- result{err, self}
	}()
	r := <-done
	if r.err == nil || !strings.Contains(r.err.Error(), "CAP_SYS_NICE") {
		t.Fatalf("Set without CAP_SYS_NICE: %v; want an error naming the capability", r.err)
	}
	if r.self != want {
		t.Errorf("the calling thread's slack: %v, want %v", r.self, want)
	}
}
