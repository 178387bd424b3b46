package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/internal/units"
	"ballena.dev/launcher"
	"ballena.dev/placement"
	"github.com/urfave/cli/v2"
)

var cgroupParentFlag = &cli.StringFlag{Name: "cgroup-parent", Value: "ballena",
	Usage: "without a running node: parent cgroup of the tasks (several launchers can share a machine)"}

// withLauncher runs viaDaemon against the running node, or direct against a
// launcher opened in this process on the data dir (it adopts the tasks a
// previous launcher left running).
func withLauncher(c *cli.Context, viaDaemon func(*localapi.Client) error, direct func(*launcher.Launcher) error) error {
	return withStore(c, viaDaemon, func(st *artifact.Store) error {
		logger := slog.Default()
		if !c.IsSet("log-level") { // a one-shot command: keep the launcher's chatter out of the way
			logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		}
		l, err := launcher.New(launcher.Config{
			DataDir: c.String("data"), DB: st.DB(), CgroupParent: c.String("cgroup-parent"), Logger: logger,
			WarmShims: -1, // pays off only in a long-lived launcher
			Verifier:  &launcher.StoreVerifier{Store: st, PolicyPath: trustPath(c), AllowRollback: c.Bool("allow-rollback")},
		})
		if err != nil {
			return err
		}
		defer l.Close()
		return direct(l)
	})
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "verify an artifact and run it as an isolated task (attached unless --detach)",
		UsageText: "ballena run api@1.4.0 --memory 256MiB --cpu 500m --pids 64 --restart on-failure -- --port 8080\n" +
			"ballena run -d --net none web@2.0.1\n" +
			"ballena run --seccomp unconfined --user 0:0 --nofile 65536 tool@1.0.0",
		Description: "Runs through the local node when one is running on the data dir; otherwise in this\n" +
			"process, attached: output streams here, ^C stops the task, and ballena exits with the\n" +
			"task's exit code (128+N when killed by signal N; 137 and a message on an OOM kill).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "memory", Aliases: []string{"m"}, Usage: "hard memory limit, e.g. 256MiB, 1G (default 512MiB)"},
			&cli.StringFlag{Name: "cpu", Usage: "CPU quota: 500m is half a CPU, 2 is two CPUs (default unlimited)"},
			&cli.Int64Flag{Name: "pids", Usage: "max processes and threads (default 1024)"},
			&cli.StringFlag{Name: "restart", Value: "never", Usage: "never, on-failure or always (with exponential backoff)"},
			&cli.StringFlag{Name: "user", Usage: "uid or uid:gid to run as; images also take names from their /etc/passwd (default: the image's User, else 65534:65534)"},
			&cli.StringFlag{Name: "net", Value: "host", Usage: "host, or none for a private network namespace with loopback only"},
			&cli.StringFlag{Name: "seccomp", Value: "default", Usage: "default (refuse bpf, keyctl, mount, unshare, io_uring, ptrace... with EPERM), or unconfined to run without the filter (logged; ps and inspect show it)"},
			&cli.Int64Flag{Name: "nofile", Usage: "max open files, RLIMIT_NOFILE (default 4096)"},
			&cli.StringFlag{Name: "core", Usage: "max core dump size, e.g. 64MiB (default 0: no core dumps)"},
			&cli.StringFlag{Name: "digest", Usage: "sha256 the artifact must have here; any other is refused"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "KEY=VALUE added to the environment; repeatable"},
			&cli.StringFlag{Name: "entrypoint", Usage: "images: override the entrypoint (space-separated)"},
			&cli.StringFlag{Name: "workdir", Usage: "working directory inside the task"},
			&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "print the task ID and return"},
			&cli.DurationFlag{Name: "stop-timeout", Value: 10 * time.Second, Usage: "attached: grace period between ^C (SIGTERM to the task) and SIGKILL"},
			&cli.StringFlag{Name: "trust", Usage: "trust policy (YAML); default DATA/trust.yaml (a running node always uses its own)"},
			&cli.BoolFlag{Name: "allow-rollback", Usage: "accept a version older than one already verified here"},
			cgroupParentFlag, jsonFlag,
		},
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			spec, err := taskSpec(c, args)
			if err != nil {
				return err
			}
			if cl, err := localapi.Dial(c.String("data")); err == nil {
				if c.IsSet("trust") || c.Bool("allow-rollback") {
					return usageErrorf("run: a node is running on %s and verifies with its own trust policy; --trust and --allow-rollback apply only without one", c.String("data"))
				}
				return runViaDaemon(c, cl, spec)
			}
			return withLauncher(c, nil, func(l *launcher.Launcher) error { return runDirect(c, l, spec) })
		},
	}
}

func taskSpec(c *cli.Context, args []string) (launcher.TaskSpec, error) {
	if len(args) < 1 {
		return launcher.TaskSpec{}, usageErrorf("run: which artifact? e.g. ballena run api@1.4.0")
	}
	spec := launcher.TaskSpec{
		Artifact: args[0], Pids: c.Int64("pids"), Restart: launcher.RestartPolicy(c.String("restart")),
		User: c.String("user"), Network: c.String("net"), Env: c.StringSlice("env"), WorkingDir: c.String("workdir"),
		Seccomp: c.String("seccomp"), NoFile: c.Int64("nofile"), Digest: c.String("digest"),
	}
	if spec.Seccomp != launcher.SeccompDefault && spec.Seccomp != launcher.SeccompUnconfined {
		return spec, usageErrorf("--seccomp %q: want default or unconfined", spec.Seccomp)
	}
	if _, err := artifact.ParseRef(spec.Artifact); err != nil {
		return spec, withCode(exitUsage, err)
	}
	if len(args) > 1 {
		spec.Args = args[1:]
	}
	if e := c.String("entrypoint"); e != "" {
		spec.Entrypoint = strings.Fields(e)
	}
	var err error
	if m := c.String("memory"); m != "" {
		if spec.MemoryBytes, err = units.ParseBytes(m); err != nil {
			return spec, usageErrorf("--memory: %v", err)
		}
	}
	if v := c.String("cpu"); v != "" {
		if spec.CPUMillis, err = units.ParseCPU(v); err != nil {
			return spec, usageErrorf("--cpu: %v", err)
		}
	}
	if v := c.String("core"); v != "" {
		if spec.CoreBytes, err = units.ParseBytes(v); err != nil {
			return spec, usageErrorf("--core: %v", err)
		}
	}
	return spec, nil
}

func runViaDaemon(c *cli.Context, cl *localapi.Client, spec launcher.TaskSpec) error {
	var t launcher.Task
	if err := cl.Do(c.Context, http.MethodPost, "/v1/tasks", spec, &t); err != nil {
		return fmt.Errorf("run %s: %w", spec.Artifact, err)
	}
	if c.Bool("detach") {
		return printStarted(c, t)
	}
	stopped := make(chan struct{})
	go func() { // ^C or SIGTERM: stop the task, then keep streaming its last words
		select {
		case <-c.Context.Done():
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = cl.Do(ctx, http.MethodPost, "/v1/tasks/"+t.ID+"/stop", launcher.StopRequest{Timeout: c.Duration("stop-timeout").String()}, nil)
		case <-stopped:
		}
	}()
	defer close(stopped)
	ctx, cancel := context.WithTimeout(context.Background(), 365*24*time.Hour)
	defer cancel()
	if resp, err := cl.Stream(ctx, http.MethodGet, "/v1/tasks/"+t.ID+"/logs?follow=1", nil); err == nil {
		_, _ = io.Copy(c.App.Writer, resp.Body)
		resp.Body.Close()
	}
	if err := cl.Do(ctx, http.MethodGet, "/v1/tasks/"+t.ID+"/wait", nil, &t); err != nil {
		return err
	}
	return taskExit(t)
}

func runDirect(c *cli.Context, l *launcher.Launcher, spec launcher.TaskSpec) error {
	t, err := l.Start(c.Context, spec)
	if err != nil {
		return err
	}
	if c.Bool("detach") {
		fmt.Fprintln(c.App.ErrWriter, "ballena: no node runs on this data dir: the task runs unsupervised (no restarts) until `ballena node` adopts it")
		return printStarted(c, t)
	}
	bg := context.Background()
	rc, err := l.Logs(bg, t.ID, true)
	if err != nil {
		return err
	}
	defer rc.Close()
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(c.App.Writer, rc)
		close(copied)
	}()
	final := make(chan launcher.Task, 1)
	go func() {
		ft, _ := l.Wait(bg, t.ID)
		final <- ft
	}()
	select {
	case t = <-final:
	case <-c.Context.Done():
		ctx, cancel := context.WithTimeout(bg, 30*time.Second)
		t, err = l.Stop(ctx, t.ID, syscall.SIGTERM, c.Duration("stop-timeout"))
		cancel()
		if err != nil {
			return err
		}
	}
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
	}
	return taskExit(t)
}

func printStarted(c *cli.Context, t launcher.Task) error {
	if c.Bool("json") {
		return printJSON(c.App.Writer, t)
	}
	fmt.Fprintln(c.App.Writer, t.ID)
	return nil
}

// taskExit turns a finished task into ballena's exit: the task's own code,
// 128+signal, or 137 with a message for an OOM kill.
func taskExit(t launcher.Task) error {
	x := t.Exit
	switch {
	case t.State == launcher.StateFailed:
		msg := "task failed"
		if x != nil && x.Message != "" {
			msg = x.Message
		}
		return fmt.Errorf("task %s: %s", t.ID, msg)
	case x == nil:
		return nil
	case x.OOM:
		return withCode(137, fmt.Errorf("task %s was killed: out of memory (limit %s); raise --memory", t.ID, memSize(t.Spec.MemoryBytes)))
	case x.Code < 0:
		return fmt.Errorf("task %s: %s", t.ID, x.Message)
	case x.Code != 0:
		return withCode(x.Code, fmt.Errorf("task %s: %s", t.ID, x))
	}
	return nil
}

func memSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.0fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func psCommand() *cli.Command {
	return &cli.Command{
		Name:      "ps",
		Usage:     "list tasks: state, health, pid, uptime, restarts, CPU and memory used",
		UsageText: "ballena ps\nballena ps --all --json",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "include finished tasks"}, cgroupParentFlag, jsonFlag},
		Action: func(c *cli.Context) error {
			var ts []launcher.Task
			err := withLauncher(c, func(cl *localapi.Client) error {
				return cl.Do(c.Context, http.MethodGet, "/v1/tasks", nil, &ts)
			}, func(l *launcher.Launcher) error {
				ts = l.MarkRevoked(l.List())
				return nil
			})
			if err != nil {
				return err
			}
			if !c.Bool("all") {
				live := ts[:0]
				for _, t := range ts {
					if !t.State.Final() {
						live = append(live, t)
					}
				}
				ts = live
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, ts)
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tARTIFACT\tSTATE\tHEALTH\tPID\tUPTIME\tRESTARTS\tCPU\tMEMORY\tISOLATION")
			for _, t := range ts {
				state, pid, up, cpu, mem := string(t.State), "-", "-", "-", "-"
				if t.State.Final() && t.Exit != nil && !t.Exit.OOM && t.Exit.Code >= 0 {
					state = fmt.Sprintf("%s (%d)", t.State, t.Exit.Code)
				}
				if t.Revoked != "" {
					state += " (key revoked)"
				}
				if t.State == launcher.StateRunning {
					pid = strconv.Itoa(t.PID)
					up = time.Since(t.StartedAt).Round(time.Second).String()
				}
				if t.Usage != nil {
					cpu = fmt.Sprintf("%.2fs", t.Usage.CPUSeconds)
					mem = fmt.Sprintf("%s / %s", memSize(t.Usage.MemoryBytes), memSize(t.Spec.MemoryBytes))
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", t.ID, t.Spec.Artifact, state, healthSummary(t), pid, up, t.Restarts, cpu, mem, isolationSummary(t))
			}
			return w.Flush()
		},
	}
}

// healthSummary is ps's HEALTH column: the current run's health, then the
// deployment verdict once given ("healthy, verdict ok"); "-" for a task
// whose health nobody asked for.
func healthSummary(t launcher.Task) string {
	if t.Spec.Health == nil {
		return "-"
	}
	h := orDash(t.Health)
	switch {
	case t.Healthy == nil:
	case *t.Healthy:
		h += ", verdict ok"
	default:
		h += ", verdict failed"
	}
	return h
}

// isolationSummary is ps's ISOLATION column: the seccomp filter (SECCOMP
// UNCONFINED when the task opted out), the user namespace, the network.
func isolationSummary(t launcher.Task) string {
	parts := []string{"seccomp"}
	if t.Seccomp == launcher.SeccompUnconfined || (t.Seccomp == "" && t.Spec.Seccomp == launcher.SeccompUnconfined) {
		parts[0] = "SECCOMP-UNCONFINED"
	}
	if t.UserNS != nil {
		parts = append(parts, "userns")
	} else if t.Seccomp != "" { // a run of this version without one
		parts = append(parts, "NO-USERNS")
	}
	if t.Spec.Network == "none" {
		parts = append(parts, "net=none")
	}
	return strings.Join(parts, ",")
}

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a task's stdout and stderr",
		UsageText: "ballena logs 3f2a9c\nballena logs -f 3f2a9c\nballena logs --stderr 3f2a9c\nballena logs --json 3f2a9c | jq -r 'select(.stream==\"stderr\").line'",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing until the task ends or ^C"},
			&cli.BoolFlag{Name: "stdout", Usage: "only what the task wrote to stdout"},
			&cli.BoolFlag{Name: "stderr", Usage: "only what the task wrote to stderr"},
			&cli.BoolFlag{Name: "json", Usage: "one JSON object per line: {\"stream\":\"stdout\"|\"stderr\",\"line\":...}"},
			cgroupParentFlag},
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) != 1 {
				return usageErrorf("logs: which task? e.g. ballena logs 3f2a9c (see ballena ps)")
			}
			id := args[0]
			streams := launcher.Streams{Stdout: c.Bool("stdout"), Stderr: c.Bool("stderr"), JSON: c.Bool("json")}
			return withLauncher(c, func(cl *localapi.Client) error {
				q := url.Values{}
				if c.Bool("follow") {
					q.Set("follow", "1")
				}
				if streams.JSON {
					q.Set("json", "1")
				}
				switch {
				case streams.Stdout && !streams.Stderr:
					q.Set("stream", "stdout")
				case streams.Stderr && !streams.Stdout:
					q.Set("stream", "stderr")
				}
				resp, err := cl.Stream(c.Context, http.MethodGet, "/v1/tasks/"+url.PathEscape(id)+"/logs?"+q.Encode(), nil)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				_, err = io.Copy(c.App.Writer, resp.Body)
				if c.Context.Err() != nil {
					return nil
				}
				return err
			}, func(l *launcher.Launcher) error {
				rc, err := l.LogStream(c.Context, id, c.Bool("follow"), streams)
				if err != nil {
					return err
				}
				defer rc.Close()
				_, err = io.Copy(c.App.Writer, rc)
				return err
			})
		},
	}
}

func stopCommand() *cli.Command {
	return &cli.Command{
		Name:      "stop",
		Usage:     "stop a task: signal, grace period, then SIGKILL of everything in its cgroup",
		UsageText: "ballena stop 3f2a9c\nballena stop --timeout 30s --signal SIGINT 3f2a9c",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Aliases: []string{"t"}, Value: 10 * time.Second, Usage: "grace period before SIGKILL"},
			&cli.StringFlag{Name: "signal", Aliases: []string{"s"}, Value: "SIGTERM", Usage: "first signal"},
			cgroupParentFlag, jsonFlag,
		},
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) != 1 {
				return usageErrorf("stop: which task? e.g. ballena stop 3f2a9c (see ballena ps)")
			}
			id := args[0]
			req := launcher.StopRequest{Signal: c.String("signal"), Timeout: c.Duration("timeout").String()}
			sig, err := launcher.ParseSignal(req.Signal)
			if err != nil {
				return usageErrorf("--signal: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.Duration("timeout")+30*time.Second)
			defer cancel()
			var t launcher.Task
			err = withLauncher(c, func(cl *localapi.Client) error {
				return cl.Do(ctx, http.MethodPost, "/v1/tasks/"+url.PathEscape(id)+"/stop", req, &t)
			}, func(l *launcher.Launcher) error {
				var err error
				t, err = l.Stop(ctx, id, sig, c.Duration("timeout"))
				return err
			})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, t)
			}
			fmt.Fprintf(c.App.Writer, "%s %s (%s)\n", t.ID, t.State, t.Exit)
			return nil
		},
	}
}

// inspectTask prints a task's record: what runs, where, and how it is confined.
func inspectTask(c *cli.Context, id string) error {
	var t launcher.Task
	err := withLauncher(c, func(cl *localapi.Client) error {
		return cl.Do(c.Context, http.MethodGet, "/v1/tasks/"+url.PathEscape(id), nil, &t)
	}, func(l *launcher.Launcher) (err error) {
		t, err = l.Get(id)
		return err
	})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, t)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "task %s\n", t.ID)
	fmt.Fprintf(w, "  artifact:\t%s (%s) sha256:%s\n", t.Spec.Artifact, orDash(t.Kind), orDash(t.Digest))
	state := string(t.State)
	if t.Exit != nil {
		state += ": " + t.Exit.String()
	}
	fmt.Fprintf(w, "  state:\t%s (restarts %d)\n", state, t.Restarts)
	if hs := t.Spec.Health; hs != nil {
		fmt.Fprintf(w, "  health:\t%s\n", healthDetail(t))
		fmt.Fprintf(w, "  check:\t%s\n", checkSummary(t))
	}
	if t.PID != 0 {
		fmt.Fprintf(w, "  pid:\t%d, cgroup %s\n", t.PID, t.Cgroup)
	}
	seccomp := orDash(t.Seccomp)
	if t.Seccomp == launcher.SeccompUnconfined {
		seccomp = "UNCONFINED: no system call filter (the task asked for seccomp: unconfined)"
	} else if t.Seccomp == launcher.SeccompDefault {
		seccomp = "default filter (bpf, keyctl, mount, unshare, io_uring, ptrace... refused with EPERM)"
	}
	fmt.Fprintf(w, "  seccomp:\t%s\n", seccomp)
	userns := "NONE: uids are the host's (the node runs without user namespaces)"
	if t.UserNS != nil {
		userns = "uids and gids " + t.UserNS.String()
	}
	fmt.Fprintf(w, "  user namespace:\t%s\n", userns)
	fmt.Fprintf(w, "  user:\t%s\n", orDash(t.User))
	fmt.Fprintf(w, "  network:\t%s\n", orDash(t.Spec.Network))
	fmt.Fprintf(w, "  limits:\tmemory %s (no swap), cpu %s, pids %d, nofile %d, core %s\n", memSize(t.Spec.MemoryBytes),
		cpuOrUnlimited(t.Spec.CPUMillis), t.Spec.Pids, t.Spec.NoFile, units.FormatBytes(t.Spec.CoreBytes))
	return w.Flush()
}

// healthDetail is inspect's health line: the run's health and since when,
// and the deployment verdict with what it takes.
func healthDetail(t launcher.Task) string {
	hs := t.Spec.Health
	h := orDash(t.Health)
	if t.Health == placement.HealthHealthy && !t.HealthySince.IsZero() {
		h += fmt.Sprintf(" for %s", time.Since(t.HealthySince).Round(time.Second))
	}
	verdict := "pending"
	if t.Healthy != nil {
		verdict = strconv.FormatBool(*t.Healthy)
	}
	h += fmt.Sprintf("; verdict %s (healthy for %s", verdict, hs.MinHealthyTime)
	if hs.HealthyDeadline > 0 {
		h += fmt.Sprintf(" within %s of the first start", hs.HealthyDeadline)
	}
	return h + ")"
}

// checkSummary says what the check does, e.g. "GET http://127.0.0.1:8080/healthz
// every 10s, timeout 2s, unhealthy after 3 failures".
func checkSummary(t launcher.Task) string {
	c := t.Spec.Health.Check
	if c == nil {
		return "none: healthy while it runs"
	}
	port := strconv.Itoa(c.Port)
	if c.PortEnv != "" {
		port = "$" + c.PortEnv
		for _, kv := range t.Spec.Env {
			if v, ok := strings.CutPrefix(kv, c.PortEnv+"="); ok {
				port = v
			}
		}
	}
	var what string
	switch {
	case c.HTTP != "":
		what = "GET http://127.0.0.1:" + port + c.HTTP
	case c.TCP:
		what = "connect to 127.0.0.1:" + port
	default:
		what = "exec " + strings.Join(c.Exec, " ")
	}
	if t.Spec.Network == "none" {
		what += " (in the task's network namespace)"
	}
	return fmt.Sprintf("%s every %s, timeout %s, unhealthy after %d failures", what, c.Interval, c.Timeout, c.Failures)
}

func cpuOrUnlimited(m int64) string {
	if m == 0 {
		return "unlimited"
	}
	return units.FormatCPU(m)
}
