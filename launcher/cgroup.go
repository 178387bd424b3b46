package launcher

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const cgroupRoot = "/sys/fs/cgroup"

// cpuPeriod is the CFS period; quotas are CPUMillis/1000 of it.
const cpuPeriod = 100_000 // µs

// v1Controllers are the cgroup v1 controllers a task's cgroup is made in.
// cpuset, devices and the rest are left alone: the limits below are what
// the launcher promises, and fewer hierarchies make starts cheaper.
var v1Controllers = []string{"memory", "cpu", "cpuacct", "pids", "freezer"}

// cgroupV2 reports whether this host should use cgroup v2. Hybrid hosts have a
// cgroup2 mount with no useful controllers, so they count as v1.
func cgroupV2() bool { return cgroups.Mode() == cgroups.Unified }

func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	return []cgroup1.Subsystem{
		cgroup1.NewMemory(cgroupRoot), cgroup1.NewCpu(cgroupRoot), cgroup1.NewCpuacct(cgroupRoot),
		cgroup1.NewPids(cgroupRoot), cgroup1.NewFreezer(cgroupRoot),
	}, nil
}

// linuxResources turns a spec's limits into OCI resources, shared by whales
// (through containerd/cgroups) and images (through runc).
func linuxResources(s TaskSpec) *specs.LinuxResources {
	r := &specs.LinuxResources{}
	if s.MemoryBytes > 0 {
		m := s.MemoryBytes
		r.Memory = &specs.LinuxMemory{Limit: &m}
		if swapAccounting() {
			// memory+swap = memory: no swap beyond the limit
			// (memory.memsw.limit_in_bytes on v1, memory.swap.max = 0 on v2).
			sw := m
			r.Memory.Swap = &sw
		}
	}
	if s.CPUMillis > 0 {
		q := max(s.CPUMillis*cpuPeriod/1000, 1000)
		p := uint64(cpuPeriod)
		r.CPU = &specs.LinuxCPU{Quota: &q, Period: &p}
	}
	if s.Pids > 0 {
		n := s.Pids
		r.Pids = &specs.LinuxPids{Limit: &n}
	}
	return r
}

// swapAccounting reports whether the kernel accounts swap per cgroup, so
// that a task can be kept from swapping: always on v2, on v1 when memsw
// files exist (swapaccount=1).
func swapAccounting() bool {
	if cgroupV2() {
		return true
	}
	_, err := os.Stat(filepath.Join(cgroupRoot, "memory", "memory.memsw.limit_in_bytes"))
	return err == nil
}

// taskCgroup is one task's cgroup, v1 (one directory per controller) or v2.
type taskCgroup struct {
	path string // below the hierarchy root, e.g. /ballena/abc
	v2   bool
}

func newTaskCgroup(parent, id string) *taskCgroup {
	return &taskCgroup{path: "/" + strings.Trim(filepath.Join(parent, id), "/"), v2: cgroupV2()}
}

// dir is the cgroup's directory for a v1 controller, or the v2 directory.
func (c *taskCgroup) dir(controller string) string {
	if c.v2 {
		return filepath.Join(cgroupRoot, c.path)
	}
	return filepath.Join(cgroupRoot, controller, c.path)
}

// create makes the cgroup with its limits. A leftover cgroup of the same path
// (a previous run) is emptied and removed first.
func (c *taskCgroup) create(s TaskSpec) error {
	_ = c.destroy()
	res := linuxResources(s)
	if c.v2 {
		if _, err := cgroup2.NewManager(cgroupRoot, c.path, cgroup2.ToResources(res)); err != nil {
			return fmt.Errorf("create cgroup %s: %w", c.path, err)
		}
		return nil
	}
	if _, err := cgroup1.New(cgroup1.StaticPath(c.path), res, cgroup1.WithHierarchy(v1Hierarchy)); err != nil {
		_ = c.destroy()
		return fmt.Errorf("create cgroup %s: %w", c.path, err)
	}
	return nil
}

// procsFiles are the files a process's PID is written to, to put it in the cgroup.
func (c *taskCgroup) procsFiles() []string {
	if c.v2 {
		return []string{filepath.Join(c.dir(""), "cgroup.procs")}
	}
	var fs []string
	for _, n := range v1Controllers {
		fs = append(fs, filepath.Join(c.dir(n), "cgroup.procs"))
	}
	return fs
}

// procs lists the PIDs in the cgroup.
func (c *taskCgroup) procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.dir("pids"), "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// killAll SIGKILLs every process in the cgroup, frozen first so that nothing
// can fork in between, and waits (bounded) until the cgroup is empty.
func (c *taskCgroup) killAll() error {
	if c.v2 {
		m, err := cgroup2.Load(c.path)
		if err != nil {
			return fmt.Errorf("kill cgroup %s: %w", c.path, err)
		}
		if err := m.Kill(); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", c.path, err)
		}
	} else {
		freezer := filepath.Join(c.dir("freezer"), "freezer.state")
		if _, err := os.Stat(freezer); err != nil {
			return nil // already gone
		}
		frozen := setFreezer(freezer, "FROZEN") == nil
		pids, _ := c.procs()
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		if frozen {
			_ = setFreezer(freezer, "THAWED")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pids, err := c.procs()
		if err != nil || len(pids) == 0 {
			return nil
		}
		if !c.v2 {
			for _, p := range pids { // forked before the freeze took
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("kill cgroup %s: processes left after 10s", c.path)
}

// setFreezer writes a freezer state and waits, bounded, until the kernel reports it.
func setFreezer(path, state string) error {
	if err := os.WriteFile(path, []byte(state), 0); err != nil {
		return err
	}
	for range 200 {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == state {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("freezer did not reach %s", state)
}

// destroy kills what is left and removes the cgroup's directories.
func (c *taskCgroup) destroy() error {
	_ = c.killAll()
	var errs []error
	dirs := []string{c.dir("")}
	if !c.v2 {
		dirs = dirs[:0]
		for _, n := range v1Controllers {
			dirs = append(dirs, c.dir(n))
		}
	}
	for _, d := range dirs {
		if err := removeCgroupDir(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCgroupDir rmdirs a cgroup, retrying while the kernel still holds it busy.
func removeCgroupDir(d string) error {
	var err error
	for i := range 50 {
		err = syscall.Rmdir(d)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		time.Sleep(time.Duration(i+1) * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", d, err)
}

func (c *taskCgroup) exists() bool {
	_, err := os.Stat(c.dir("memory"))
	return err == nil
}

// usage reads CPU time, memory and process count used by the cgroup.
func (c *taskCgroup) usage() (*Usage, error) {
	u := &Usage{}
	if c.v2 {
		kv, err := readKV(filepath.Join(c.dir(""), "cpu.stat"))
		if err != nil {
			return nil, err
		}
		u.CPUSeconds = float64(kv["usage_usec"]) / 1e6
		u.MemoryBytes, _ = readInt(filepath.Join(c.dir(""), "memory.current"))
		u.Pids, _ = readInt(filepath.Join(c.dir(""), "pids.current"))
		return u, nil
	}
	ns, err := readInt(filepath.Join(c.dir("cpuacct"), "cpuacct.usage"))
	if err != nil {
		return nil, err
	}
	u.CPUSeconds = float64(ns) / 1e9
	u.MemoryBytes, _ = readInt(filepath.Join(c.dir("memory"), "memory.usage_in_bytes"))
	u.Pids, _ = readInt(filepath.Join(c.dir("pids"), "pids.current"))
	return u, nil
}

// oomKillsFile is the file that counts OOM kills in the cgroup whose memory
// directory is dir: memory.events on v2, memory.oom_control on v1 (4.13+).
func oomKillsFile(dir string, v2 bool) string {
	if v2 {
		return filepath.Join(dir, "memory.events")
	}
	return filepath.Join(dir, "memory.oom_control")
}

// readOOMKills returns the oom_kill count of a memory cgroup file (see oomKillsFile).
func readOOMKills(file string) (int64, error) {
	kv, err := readKV(file)
	if err != nil {
		return 0, err
	}
	return kv["oom_kill"], nil
}

func readKV(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	kv := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			kv[k] = n
		}
	}
	return kv, sc.Err()
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return -1, nil
	}
	return strconv.ParseInt(s, 10, 64)
}
