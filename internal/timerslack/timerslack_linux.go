package timerslack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
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
