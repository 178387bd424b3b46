package launcher

import (
	"os"
	"testing"
)

// cgroupLeftovers lists the directories of a task's cgroup that still exist, in
// whichever hierarchy the launcher used: the one v2 directory, or one per v1
// controller it creates (a leak in pids or freezer counts as much as in memory).
func cgroupLeftovers(path string) []string {
	c := &taskCgroup{path: path, v2: cgroupV2()}
	dirs := []string{c.dir("")}
	if !c.v2 {
		dirs = dirs[:0]
		for _, ctl := range v1Controllers {
			dirs = append(dirs, c.dir(ctl))
		}
	}
	var left []string
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			left = append(left, d)
		}
	}
	return left
}

func assertNoCgroup(t *testing.T, path, when string) {
	t.Helper()
	if left := cgroupLeftovers(path); len(left) > 0 {
		t.Errorf("cgroup %s left behind %s: %v", path, when, left)
	}
}
