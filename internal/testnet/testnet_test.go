package testnet

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the TCP peers that run inside the namespaces.
const helperEnv = "BALLENA_TESTNET_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// helper is "serve ADDR": print "ready", then echo one line and send the
// number of bytes asked, per connection; or "dial ADDR[,N]": connect within a
// second, echo a line, read N bytes, exit 0.
func helper(mode, arg string) int {
	switch mode {
	case "serve":
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				n, _ := strconv.Atoi(strings.TrimSpace(line))
				fmt.Fprint(c, line)
				_, _ = io.CopyN(c, zeros{}, int64(n))
			}()
		}
	case "dial":
		addr, n, _ := strings.Cut(arg, ",")
		if n == "" {
			n = "0"
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintln(c, n)
		r := bufio.NewReader(c)
		if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != n {
			fmt.Fprintf(os.Stderr, "echo: %q, %v\n", line, err)
			return 1
		}
		want, _ := strconv.ParseInt(n, 10, 64)
		if got, err := io.Copy(io.Discard, r); got != want {
			fmt.Fprintf(os.Stderr, "read %d of %d bytes: %v\n", got, want, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// serve starts a TCP echo server in h and waits until it listens.
func serve(t *testing.T, h *Host, port int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := h.Command(ctx, os.Args[0], netip.AddrPortFrom(h.Addr, uint16(port)).String())
	cmd.Env = append(os.Environ(), helperEnv+"=serve")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("server said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("server in %s: %v", h.Name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("server in %s did not listen within 30s", h.Name)
	}
}

// dial connects from h to addr and reads n bytes; it reports the error.
func dial(h *Host, addr netip.AddrPort, n int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	cmd := h.Command(ctx, os.Args[0], fmt.Sprintf("%s,%d", addr, n))
	cmd.Env = append(os.Environ(), helperEnv+"=dial")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("dial %s from %s: %v: %s", addr, h.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// eventually retries f until it succeeds or the wait runs out.
func eventually(t *testing.T, wait time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, wait, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestReachCutRestore(t *testing.T) {
	nt := New(t, 3)
	a, b, c := nt.Hosts[0], nt.Hosts[1], nt.Hosts[2]
	if !nt.subnet.Contains(a.Addr) || a.Addr == b.Addr {
		t.Fatalf("addresses %v, %v outside %v or equal", a.Addr, b.Addr, nt.subnet)
	}
	serve(t, a, 7000)
	target := netip.AddrPortFrom(a.Addr, 7000)
	// A fresh port may need a moment for neighbour discovery: wait for the event, bounded.
	eventually(t, 10*time.Second, "b reaches a", func() error { return dial(b, target, 1<<20) })
	if err := dial(c, target, 0); err != nil {
		t.Fatalf("c cannot reach a: %v", err)
	}

	if err := b.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := dial(b, target, 0); err == nil {
		t.Fatalf("cut host b still reaches a")
	}
	if err := dial(c, target, 0); err != nil {
		t.Fatalf("cutting b cut c too: %v", err)
	}
	if err := b.Restore(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b reaches a after restore", func() error { return dial(b, target, 0) })

	// Cutting the server's host cuts everyone off it.
	if err := a.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := dial(c, target, 0); err == nil {
		t.Fatalf("c reaches cut host a")
	}
	if err := a.Restore(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "c reaches a after restore", func() error { return dial(c, target, 0) })
}

func TestLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("moves a few MiB at a capped rate")
	}
	nt := New(t, 2)
	a, b := nt.Hosts[0], nt.Hosts[1]
	serve(t, a, 7001)
	target := netip.AddrPortFrom(a.Addr, 7001)
	eventually(t, 10*time.Second, "b reaches a", func() error { return dial(b, target, 0) })
	const rate, size = 2 << 20, 4 << 20
	if err := a.Limit(rate); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := dial(b, target, size); err != nil {
		t.Fatal(err)
	}
	// A cap only ever slows a transfer down, so this lower bound cannot flake:
	// 4 MiB at 2 MiB/s takes at least ~2s, less the bucket's burst.
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("4 MiB through a 2 MiB/s cap took %v", d)
	}
	if err := a.Limit(0); err != nil {
		t.Fatal(err)
	}
	if err := dial(b, target, size); err != nil {
		t.Fatal(err)
	}
}

func TestSweepKeepsYoung(t *testing.T) {
	nt := New(t, 1)
	Sweep(t)
	if _, err := os.Stat(netnsDir + "/" + nt.Hosts[0].Name); err != nil {
		t.Fatalf("sweep removed a young namespace: %v", err)
	}
	// A leftover of a run two hours ago goes.
	stale := fmt.Sprintf("%s%d-000000-0", prefix, time.Now().Add(-2*staleAfter).Unix())
	if err := ip("netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", stale).Run() })
	Sweep(t)
	if _, err := os.Stat(netnsDir + "/" + stale); !os.IsNotExist(err) {
		t.Fatalf("stale namespace survived the sweep: %v", err)
	}
}

func TestKillAll(t *testing.T) {
	nt := New(t, 1)
	h := nt.Hosts[0]
	cmd := h.Command(context.Background(), "sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // like a daemon's detached child
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var ns syscall.Stat_t
	if err := syscall.Stat(netnsDir+"/"+h.Name, &ns); err != nil {
		t.Fatal(err)
	}
	// nsenter enters the namespace and then execs sleep: wait for that.
	eventually(t, 10*time.Second, "sleep in the namespace", func() error {
		for _, pid := range h.pids(ns) {
			if pid == cmd.Process.Pid {
				return nil
			}
		}
		return fmt.Errorf("pid %d not in %s yet", cmd.Process.Pid, h.Name)
	})
	if err := h.KillAll(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("process in the namespace survived KillAll")
	}
}

func TestLoopbackServe(t *testing.T) {
	url := Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }))
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("url %s is not on loopback", url)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hi" {
		t.Errorf("got %q", b)
	}
	if a := FreeAddr(t); !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("FreeAddr %s is not on loopback", a)
	}
}
