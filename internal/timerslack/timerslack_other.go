//go:build !linux

package timerslack

import (
	"errors"
	"time"
)

// Set is only implemented on Linux.
func Set(d time.Duration) error {
	return errors.New("timer slack: only on Linux")
}
