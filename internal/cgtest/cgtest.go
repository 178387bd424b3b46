// Package cgtest cleans up after tests that run tasks in cgroups: whatever a
// test, passing or failing, left under its cgroup parent is killed and removed.
package cgtest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Root is where the cgroup hierarchies are mounted.
const Root = "/sys/fs/cgroup"

// RemoveParent SIGKILLs every process in the cgroups below parent and removes
// them and parent from every hierarchy (runc makes it in more than the launcher).
func RemoveParent(parent string) {
	hier, _ := filepath.Glob(filepath.Join(Root, "*"))
	for _, h := range append(hier, Root) {
		dir := filepath.Join(h, parent)
		kids, _ := filepath.Glob(filepath.Join(dir, "*", "cgroup.procs"))
		for _, procs := range kids {
			b, _ := os.ReadFile(procs)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		for _, procs := range kids {
			// A cgroup can be removed only once its killed processes are gone.
			for range 100 {
				if err := syscall.Rmdir(filepath.Dir(procs)); err == nil || err == syscall.ENOENT {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		_ = syscall.Rmdir(dir)
	}
}
