//go:build !linux

package timerslack

import (
	"errors"
	"os/exec"
	"time"
)

// Set is only implemented on Linux.
func Set(d time.Duration) error {
	return errors.New("timer slack: only on Linux")
}

// Get is only implemented on Linux.
func Get() (time.Duration, error) { return 0, errors.New("timer slack: only on Linux") }

// Start starts cmd: other systems have no timer slack to set.
func Start(cmd *exec.Cmd, d time.Duration) error { return cmd.Start() }
