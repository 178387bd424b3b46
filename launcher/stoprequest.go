package launcher

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StopRequest asks to stop a task: the body of the local API's POST /v1/tasks/{id}/stop.
type StopRequest struct {
	Signal  string `json:"signal,omitempty"`  // e.g. "SIGTERM" or "TERM"; default SIGTERM
	Timeout string `json:"timeout,omitempty"` // Go duration; default 10s
}

// Parse reads the request, with its defaults: SIGTERM and 10 s.
func (r StopRequest) Parse() (syscall.Signal, time.Duration, error) {
	sig := syscall.SIGTERM
	if r.Signal != "" {
		var err error
		if sig, err = ParseSignal(r.Signal); err != nil {
			return 0, 0, err
		}
	}
	timeout := 10 * time.Second
	if r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		if err != nil || d < 0 {
			return 0, 0, fmt.Errorf("timeout %q: want a duration such as 10s", r.Timeout)
		}
		timeout = d
	}
	return sig, timeout, nil
}

// ParseSignal accepts "SIGTERM", "TERM" or a number.
func ParseSignal(s string) (syscall.Signal, error) {
	if sig := unix.SignalNum(s); sig != 0 {
		return sig, nil
	}
	if sig := unix.SignalNum("SIG" + s); sig != 0 {
		return sig, nil
	}
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("signal %q: want a name such as SIGTERM or a number", s)
}
