package timerslack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Set sets the timer slack of every thread of this process to d. Threads started
// afterwards inherit it from the thread that starts them. The runtime's own
// threads (sysmon among them) predate main, so Set reaches them through
// /proc/TID/timerslack_ns, which takes CAP_SYS_NICE; without it, Set still sets
// the calling thread and reports the threads it could not set.
func Set(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("timer slack %v: want a positive duration", d)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d.Nanoseconds()), 0, 0, 0); err != nil {
		return fmt.Errorf("timer slack: prctl: %w", err)
	}
	if _, err := os.Stat("/proc/self/timerslack_ns"); err != nil {
		return fmt.Errorf("timer slack: only the calling thread's is set: %w", err) // Linux before 4.6
	}
	want := strconv.FormatInt(d.Nanoseconds(), 10)
	// A thread started during a pass may have inherited the old slack from one
	// not yet set; another pass finds it. Threads are few and start rarely.
	for range 5 {
		changed, err := setAll(want)
		if err != nil || !changed {
			return err
		}
	}
	return nil
}

// setAll writes want to every thread whose slack differs, and reports whether
// it changed any.
func setAll(want string) (bool, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return false, fmt.Errorf("timer slack: %w", err)
	}
	changed := false
	var denied []string
	for _, t := range tasks {
		// The file is only under /proc/TID, not /proc/self/task/TID.
		p := filepath.Join("/proc", t.Name(), "timerslack_ns")
		cur, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread exited
		}
		if errors.Is(err, fs.ErrPermission) { // even reading takes CAP_SYS_NICE
			denied = append(denied, t.Name())
			continue
		}
		if err != nil {
			return changed, fmt.Errorf("timer slack: %w", err)
		}
		if strings.TrimSpace(string(cur)) == want {
			continue
		}
		switch err := os.WriteFile(p, []byte(want), 0); {
		case err == nil:
			changed = true
		case errors.Is(err, fs.ErrNotExist):
		case errors.Is(err, fs.ErrPermission):
			denied = append(denied, t.Name())
		default:
			return changed, fmt.Errorf("timer slack: %w", err)
		}
	}
	if len(denied) > 0 {
		return false, fmt.Errorf("timer slack: %d runtime threads keep the kernel's default: setting them needs CAP_SYS_NICE", len(denied))
	}
	return changed, nil
}

// Get is the calling thread's timer slack. Called before Set, from main, it is
// the slack the process was started with.
func Get() (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		return 0, fmt.Errorf("timer slack: prctl: %w", err)
	}
	return time.Duration(ns), nil
}

// Start starts cmd with timer slack d instead of this process's. A child takes
// the slack of the thread that forks it, so Start forks from a thread locked
// to it and set to d for the fork, then sets that thread back. cmd must not
// ask for Pdeathsig, which fires when the forking thread exits.
func Start(cmd *exec.Cmd, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("timer slack %v: want a positive duration", d)
	}
	if cmd.SysProcAttr != nil && cmd.SysProcAttr.Pdeathsig != 0 {
		return errors.New("timer slack: Start of a command with Pdeathsig: it would be signalled when the forking thread exits")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		prev, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
		if err == nil {
			err = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d.Nanoseconds()), 0, 0, 0)
		}
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("timer slack: prctl: %w", err)
			return
		}
		err = cmd.Start()
		if unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(prev), 0, 0, 0) == nil {
			runtime.UnlockOSThread()
		}
		// Otherwise the goroutine ends locked, and the thread, with the
		// child's slack, ends with it.
		errc <- err
	}()
	return <-errc
}
