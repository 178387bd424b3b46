// Package testnet builds several hosts on one machine for tests: each host is
// a network namespace with one veth port on a Linux bridge, in a private /24
// that exists only inside those namespaces.
//
// The bridge lives in its own "switch" namespace, not in the test's, so no
// address or route is added to the machine's own network and the machine's
// firewall (br_netfilter, FORWARD policies) never sees the traffic. Everything a
// run creates is named after a random run ID; deleting the namespaces deletes
// the bridge and the veth pairs with them.
package testnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// prefix starts the name of every namespace this package creates, so that a
// sweep finds leftovers of crashed runs and nothing else.
const prefix = "btn-"

// staleAfter is how old a leftover namespace must be before a sweep removes
// it: older than any run, so a parallel run's namespaces are never touched.
const staleAfter = time.Hour

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// Net is a set of hosts on one bridge.
type Net struct {
	// ID names this run: its creation time in Unix seconds and a random
	// part. Namespaces are btn-ID-sw (the bridge) and btn-ID-N (host N).
	ID    string
	Hosts []*Host

	sw     string       // the switch namespace
	subnet netip.Prefix // 10.213.x.0/24
}

// Host is one network namespace with an address on the bridge.
type Host struct {
	Name string     // namespace name
	Addr netip.Addr // on the bridge's /24

	net  *Net
	port string // this host's port on the bridge, in the switch namespace
}

// New creates n hosts joined by a bridge and removes them when the test ends.
// It skips the test when it cannot run here: not root, or ip or nsenter missing.
func New(t testing.TB, n int) *Net {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("testnet: %v", err)
	}
	if n < 1 || n > 200 {
		t.Fatalf("testnet: %d hosts; want 1 to 200", n)
	}
	Sweep(t)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	nt := &Net{
		ID: fmt.Sprintf("%d-%s", time.Now().Unix(), hex.EncodeToString(b[:3])),
		// The third octet only makes addresses of parallel runs differ in logs:
		// each run's bridge is its own link, so equal subnets could not collide.
		subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, b[3], 0}), 24),
	}
	nt.sw = prefix + nt.ID + "-sw"
	t.Cleanup(func() { nt.remove(t) })
	if err := nt.build(n); err != nil {
		t.Fatalf("testnet: %v", err)
	}
	return nt
}

// Available says why hosts cannot be built here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root for network namespaces (euid %d)", os.Geteuid())
	}
	for _, bin := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("needs %s (iproute2, util-linux): %v", bin, err)
		}
	}
	return nil
}

func (nt *Net) build(n int) error {
	if err := ip("netns", "add", nt.sw); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", nt.sw, "link", "set", "lo", "up"},
		{"-n", nt.sw, "link", "add", "br0", "type", "bridge"},
		// No spanning tree delay: a port forwards as soon as it is up.
		{"-n", nt.sw, "link", "set", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0"},
		{"-n", nt.sw, "link", "set", "br0", "up"},
	}
	if err := ipAll(steps); err != nil {
		return err
	}
	base := nt.subnet.Addr().As4()
	for i := range n {
		a := base
		a[3] = byte(i + 1)
		h := &Host{Name: fmt.Sprintf("%s%s-%d", prefix, nt.ID, i), Addr: netip.AddrFrom4(a), net: nt,
			port: fmt.Sprintf("p%d", i)}
		if err := ip("netns", "add", h.Name); err != nil {
			return err
		}
		nt.Hosts = append(nt.Hosts, h)
		steps := [][]string{
			{"-n", nt.sw, "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.Name},
			{"-n", nt.sw, "link", "set", h.port, "master", "br0"},
			{"-n", nt.sw, "link", "set", h.port, "up"},
			{"-n", h.Name, "link", "set", "lo", "up"},
			{"-n", h.Name, "addr", "add", netip.PrefixFrom(h.Addr, 24).String(), "dev", "eth0"},
			{"-n", h.Name, "link", "set", "eth0", "up"},
		}
		if err := ipAll(steps); err != nil {
			return err
		}
	}
	return nil
}

// remove kills what still runs in the run's namespaces and deletes them; the
// veth pairs and the bridge go with them.
func (nt *Net) remove(t testing.TB) {
	for _, h := range nt.Hosts {
		if err := h.KillAll(10 * time.Second); err != nil {
			t.Errorf("testnet cleanup: %v", err)
		}
	}
	for _, h := range nt.Hosts {
		if err := ip("netns", "del", h.Name); err != nil {
			t.Errorf("testnet cleanup: %v", err)
		}
	}
	if err := ip("netns", "del", nt.sw); err != nil && !strings.Contains(err.Error(), "No such file") {
		t.Errorf("testnet cleanup: %v", err)
	}
}

// Sweep removes namespaces of crashed runs: those named by this package and
// created over an hour ago (the time is in the name). Younger ones may belong
// to a run in progress.
func Sweep(t testing.TB) {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		return // no named namespace at all
	}
	for _, e := range ents {
		created, ok := createdAt(e.Name())
		if !ok || time.Since(created) < staleAfter {
			continue
		}
		if err := ip("netns", "del", e.Name()); err != nil {
			t.Logf("testnet: sweep stale %s: %v", e.Name(), err)
		} else {
			t.Logf("testnet: removed stale namespace %s", e.Name())
		}
	}
}

// createdAt parses the creation time out of a namespace name of this package.
func createdAt(name string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return time.Time{}, false
	}
	secs, _, ok := strings.Cut(rest, "-")
	n, err := strconv.ParseInt(secs, 10, 64)
	if !ok || err != nil {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// Command returns a command that runs inside the host's network namespace and
// nowhere else: its mounts, /sys and cgroups are the machine's, unlike with
// `ip netns exec`, which remounts /sys and so hides the cgroup hierarchy.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(netnsDir, h.Name), "--", name}, args...)...)
}

// KillAll SIGKILLs every process whose network namespace is the host's, such
// as daemons' detached children that outlived them, and waits until none is
// left or wait runs out.
func (h *Host) KillAll(wait time.Duration) error {
	var ns syscall.Stat_t
	if err := syscall.Stat(filepath.Join(netnsDir, h.Name), &ns); err != nil {
		return fmt.Errorf("kill processes in %s: %w", h.Name, err)
	}
	deadline := time.Now().Add(wait)
	for {
		pids := h.pids(ns)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill processes in %s: %v still alive after %v", h.Name, pids, wait)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pids lists the processes in the network namespace with ns's device and inode.
func (h *Host) pids(ns syscall.Stat_t) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) != nil {
			continue // gone, or a kernel thread
		}
		if st.Dev == ns.Dev && st.Ino == ns.Ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Cut takes the host's port on the bridge down: the host stays up, with its
// address, but no packet leaves or reaches it until Restore.
func (h *Host) Cut() error {
	return ip("-n", h.net.sw, "link", "set", h.port, "down")
}

// Restore brings the host's port back up.
func (h *Host) Restore() error {
	return ip("-n", h.net.sw, "link", "set", h.port, "up")
}

// Limit caps the host's bandwidth in each direction to rate bytes per second
// with a token bucket filter (tbf) on both ends of its veth; 0 removes the cap.
func (h *Host) Limit(rate int64) error {
	for _, dev := range []struct{ ns, name string }{{h.Name, "eth0"}, {h.net.sw, h.port}} {
		if rate <= 0 {
			if err := ip("-n", dev.ns, "link", "show", dev.name); err != nil {
				return err
			}
			_ = run("tc", "-n", dev.ns, "qdisc", "del", "dev", dev.name, "root") // none set is fine
			continue
		}
		// A burst of a few milliseconds of traffic (at least 64 KiB) keeps the
		// rate accurate without starving TCP on a fast veth.
		burst := max(rate/100, 64<<10)
		err := run("tc", "-n", dev.ns, "qdisc", "replace", "dev", dev.name, "root", "tbf",
			"rate", fmt.Sprintf("%dbit", rate*8), "burst", fmt.Sprint(burst), "latency", "200ms")
		if err != nil {
			return err
		}
	}
	return nil
}

func ip(args ...string) error { return run("ip", args...) }

func ipAll(steps [][]string) error {
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
