package launcher

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// procStartTime returns a process's start time (field 22 of /proc/<pid>/stat,
// in clock ticks since boot): with the PID it names a process uniquely. It
// fails for processes that are gone or are zombies.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("process %d: %w", pid, os.ErrProcessDone)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22; f[0] is field 3
}

// alive reports whether pid is still the process that started at start.
func alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := procStartTime(pid)
	return err == nil && (start == 0 || st == start)
}
