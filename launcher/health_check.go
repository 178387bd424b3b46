package launcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// runCheck runs t's check once, within its timeout; nil means it passed.
func (l *Launcher) runCheck(ctx context.Context, t Task) error {
	c := t.Spec.Health.Check
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if len(c.Exec) > 0 {
		return l.execCheck(ctx, t)
	}
	port, err := checkPort(t.Spec)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	dial := taskDialer(t)
	if c.TCP {
		conn, err := dial(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("tcp %s: %w", addr, timeoutErr(ctx, c.Timeout, netErr(err)))
		}
		return conn.Close()
	}
	u := "http://" + addr + "/" + strings.TrimPrefix(c.HTTP, "/")
	return httpCheck(ctx, u, dial, c.Timeout)
}

// httpCheck GETs u: a 2xx or 3xx (redirects are not followed) passes.
func httpCheck(ctx context.Context, u string, dial func(context.Context, string, string) (net.Conn, error), timeout time.Duration) error {
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true, Proxy: nil}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	req.Header.Set("User-Agent", "ballena-health-check")
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("GET %s: %w", u, timeoutErr(ctx, timeout, netErr(err)))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}

// timeoutErr says "timed out after T" for a check that hit its timeout,
// rather than whatever the operation in progress made of it.
func timeoutErr(ctx context.Context, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %s", timeout)
	}
	return err
}

// netErr drops what a message already says ("dial tcp 127.0.0.1:80") from a
// network error, leaving e.g. "connect: connection refused".
func netErr(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// taskDialer dials from where the task is: the host's network, or the
// task's own network namespace (network none), where 127.0.0.1 is its loopback.
func taskDialer(t Task) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if t.Spec.Network != "none" {
		var d net.Dialer
		return d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialInNetns(ctx, t.PID, t.PIDStart, network, addr)
	}
}

// dialInNetns connects from inside the network namespace of process pid: a
// socket stays in the namespace it was created in, so a goroutine locked to
// its thread enters the namespace, creates and connects the socket, and
// ends without unlocking, which makes the runtime discard the thread rather
// than hand it, in the wrong namespace, to other goroutines.
func dialInNetns(ctx context.Context, pid int, start uint64, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: fmt.Errorf("the task's network namespace: %w", err)}
			return
		}
		defer unix.Close(fd)
		if !alive(pid, start) { // the PID was reused before we opened its namespace
			ch <- result{err: errors.New("the task's process is gone")}
			return
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("enter the task's network namespace: %w", err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// checkPort is the port of an HTTP or TCP check: Port, or the value of
// PortEnv in the task's environment.
func checkPort(s TaskSpec) (int, error) {
	c := s.Health.Check
	if c.Port != 0 {
		return c.Port, nil
	}
	v, ok := envValue(s.Env, c.PortEnv)
	if !ok {
		return 0, fmt.Errorf("check port: %s is not set", c.PortEnv)
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("check port: %s=%q is not a port", c.PortEnv, v)
	}
	return p, nil
}

func envValue(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// assignCheckPort gives a task whose check reads its port from PortEnv a
// free port in that variable, unless its spec sets it. The port lives in the
// spec, so the task's record keeps it across restarts and launcher restarts;
// ports that other tasks of this launcher hold are not handed out again.
func (l *Launcher) assignCheckPort(s *TaskSpec) error {
	if s.Health == nil || s.Health.Check == nil || s.Health.Check.PortEnv == "" {
		return nil
	}
	if _, ok := envValue(s.Env, s.Health.Check.PortEnv); ok {
		return nil
	}
	taken := map[int]bool{}
	l.mu.Lock()
	for _, e := range l.tasks {
		if h := e.t.Spec.Health; h != nil && h.Check != nil && h.Check.PortEnv != "" && !e.t.State.Final() {
			if p, err := checkPort(e.t.Spec); err == nil {
				taken[p] = true
			}
		}
	}
	l.mu.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("pick a port for %s: %w", s.Health.Check.PortEnv, err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !taken[p] {
			s.Env = append(s.Env, s.Health.Check.PortEnv+"="+strconv.Itoa(p))
			return nil
		}
	}
	return fmt.Errorf("pick a port for %s: no free port", s.Health.Check.PortEnv)
}

// lastLine is the last non-empty line of b, at most 200 bytes of it.
func lastLine(b []byte) string {
	b = bytes.TrimSpace(b)
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// readEnviron reads the initial environment of process pid.
func readEnviron(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil, err
	}
	var env []string
	for kv := range strings.SplitSeq(string(b), "\x00") {
		if kv != "" {
			env = append(env, kv)
		}
	}
	return env, nil
}
