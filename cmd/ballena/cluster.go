package main

// The placement service and its clients: ballena server, job, nodes, node drain.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/placement"
)

const defaultServer = "http://127.0.0.1:7480"

func serverCommand() *cli.Command {
	return &cli.Command{
		Name:  "server",
		Usage: "run the placement service: cluster state, scheduler and the /v1/ API",
		UsageText: "ballena server --data /var/lib/ballena-server --listen 127.0.0.1:7480\n" +
			"ballena server --data /srv/placement --listen 10.0.0.1:7480 --token-file admin.token --batch-share 0.25 --node-ttl 30s",
		Description: "State (machines, jobs, tasks, allocations, evaluations) lives in badger under\n" +
			"DATA/placement; every acknowledged change is synced before the answer. Writes need the\n" +
			"admin token (--token-file, default DATA/admin.token, created 0600 if absent); machines\n" +
			"register with the join token (--join-token-file, default DATA/join.token) and sign every\n" +
			"request with their node key. Reads are open on loopback.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Usage: "data dir for the server's state (default: the global --data)"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:7480", Usage: "HTTP listen address"},
			&cli.StringFlag{Name: "token-file", Usage: "admin token file (default DATA/admin.token; created 0600 if absent)"},
			&cli.StringFlag{Name: "join-token-file", Usage: "join token file for machines (default DATA/join.token; created 0600 if absent)"},
			&cli.Float64Flag{Name: "batch-share", Value: placement.DefaultBatchShare, Usage: "largest share of the cell's cpu and memory batch tasks may use"},
			&cli.DurationFlag{Name: "node-ttl", Value: placement.DefaultNodeTTL, Usage: "a machine silent this long is down and its tasks move"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErrorf("server takes no arguments (got %q)", c.Args().First())
			}
			share := c.Float64("batch-share")
			if share <= 0 || share > 1 {
				return usageErrorf("--batch-share %v: want a fraction in (0, 1]", share)
			}
			if c.Duration("node-ttl") < time.Second {
				return usageErrorf("--node-ttl %v: want at least 1s", c.Duration("node-ttl"))
			}
			dir := dataDir(c)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("data dir: %w", err)
			}
			adminPath := orDefault(c.String("token-file"), filepath.Join(dir, "admin.token"))
			joinPath := orDefault(c.String("join-token-file"), filepath.Join(dir, "join.token"))
			admin, created, err := placement.LoadOrCreateToken(adminPath)
			if err != nil {
				return withCode(exitUsage, err)
			}
			if created {
				fmt.Fprintf(c.App.Writer, "admin token created: %s\n", adminPath)
			}
			join, created, err := placement.LoadOrCreateToken(joinPath)
			if err != nil {
				return withCode(exitUsage, err)
			}
			if created {
				fmt.Fprintf(c.App.Writer, "join token created: %s\n", joinPath)
			}
			ln, err := net.Listen("tcp", c.String("listen"))
			if err != nil {
				return withCode(exitUnavailable, fmt.Errorf("listen: %w", err))
			}
			s, err := placement.Open(placement.Options{Dir: filepath.Join(dir, "placement"), AdminToken: admin, JoinToken: join,
				BatchShare: share, NodeTTL: c.Duration("node-ttl"), Logger: slog.Default()})
			if err != nil {
				ln.Close()
				return err
			}
			defer s.Close()
			fmt.Fprintf(c.App.Writer, "placement server listening on http://%s (admin token %s, join token %s)\n", ln.Addr(), adminPath, joinPath)
			hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
			ctx, cancel := context.WithCancel(c.Context)
			defer cancel()
			go s.Run(ctx)
			go func() {
				<-ctx.Done()
				sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer scancel()
				hs.Shutdown(sctx)
			}()
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve: %w", err)
			}
			return nil
		},
	}
}

// dataDir is the command's own --data if given, else the global one.
func dataDir(c *cli.Context) string {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet("data") {
			return ctx.String("data")
		}
	}
	if root := c.Lineage()[len(c.Lineage())-1]; root != nil {
		if d := root.String("data"); d != "" {
			return d
		}
	}
	return defaultDataDir()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func clientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", EnvVars: []string{"BALLENA_SERVER"}, Value: defaultServer, Usage: "placement server URL"},
		&cli.StringFlag{Name: "token-file", Usage: "admin token file (or env BALLENA_TOKEN with the token; default DATA/admin.token if readable)"},
	}
}

// placementClient builds an admin client from --server and the token sources.
// Reads work without a token on loopback, so a missing token is not an error here.
func placementClient(c *cli.Context) (*placement.Client, error) {
	token := os.Getenv("BALLENA_TOKEN")
	if path := c.String("token-file"); path != "" {
		t, err := placement.ReadToken(path)
		if err != nil {
			return nil, withCode(exitUsage, err)
		}
		token = t
	} else if token == "" {
		if t, err := placement.ReadToken(filepath.Join(dataDir(c), "admin.token")); err == nil {
			token = t
		}
	}
	cl, err := placement.NewClient(c.String("server"), token)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	return cl, nil
}

// placementErr maps the server's answers to exit codes.
func placementErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *placement.APIError
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusNotFound:
			return withCode(exitNotFound, err)
		case ae.Status == http.StatusBadRequest:
			return withCode(exitUsage, err)
		case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
			return fmt.Errorf("%w (give the admin token with --token-file or BALLENA_TOKEN)", err)
		case ae.Status >= 500:
			return withCode(exitUnavailable, err)
		}
		return err
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
		return withCode(exitUnavailable, err)
	}
	return err
}

func jobCommand() *cli.Command {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}
	return &cli.Command{
		Name:  "job",
		Usage: "submit, inspect and stop jobs on the placement service",
		UsageText: "ballena job run api.yaml\n" +
			"ballena job status api\n" +
			"ballena job stop api",
		Subcommands: []*cli.Command{
			{
				Name:  "run",
				Usage: "submit or update a job from its YAML file; prints what was placed, what waits and why",
				UsageText: "ballena job run api.yaml\n" +
					"ballena job run --server http://10.0.0.1:7480 --token-file admin.token api.yaml --json\n\n" +
					"api.yaml:\n" +
					"  name: api\n" +
					"  artifact: api@1.4.0\n" +
					"  count: 4\n" +
					"  resources: {cpu: 500m, memory: 256MiB, pids: 128}\n" +
					"  priority: prod            # or batch\n" +
					"  constraints: [{label: zone, in: [eu-1, eu-2]}]\n" +
					"  spread: rack\n" +
					"  restart: on-failure       # never | on-failure | always\n" +
					"  update: {max_parallel: 2}",
				Flags: append(clientFlags(), jsonFlag,
					&cli.Uint64Flag{Name: "if-index", Usage: "refuse (409) unless the job is still at this modify index (0: must be new)"}),
				Action: func(c *cli.Context) error {
					args := c.Args().Slice()
					if len(args) != 1 {
						return usageErrorf("job run takes one job file (got %d arguments)", len(args))
					}
					path := args[0]
					data, err := os.ReadFile(path)
					if err != nil {
						return withCode(exitUsage, fmt.Errorf("read job file: %w", err))
					}
					j, err := placement.ParseJob(path, data)
					if err != nil {
						return withCode(exitUsage, err)
					}
					cl, err := placementClient(c)
					if err != nil {
						return err
					}
					var resp *placement.SubmitResponse
					if c.IsSet("if-index") {
						resp, err = cl.SubmitJobAt(c.Context, j, c.Uint64("if-index"))
					} else {
						resp, err = cl.SubmitJob(c.Context, j)
					}
					if err != nil {
						return placementErr(err)
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, resp)
					}
					printEvaluations(c.App.Writer, resp)
					return nil
				},
			},
			{
				Name:      "status",
				Usage:     "show a job's tasks, where they run and their states (all jobs without NAME)",
				UsageText: "ballena job status api\nballena job status api --json\nballena job status",
				Flags:     append(clientFlags(), jsonFlag),
				Action: func(c *cli.Context) error {
					args := c.Args().Slice()
					cl, err := placementClient(c)
					if err != nil {
						return err
					}
					if len(args) == 0 {
						jobs, err := cl.Jobs(c.Context)
						if err != nil {
							return placementErr(err)
						}
						if c.Bool("json") {
							return printJSON(c.App.Writer, jobs)
						}
						tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
						fmt.Fprintln(tw, "JOB\tVERSION\tARTIFACT\tBAND\tCOUNT\tSTATE")
						for _, j := range jobs {
							state := "running"
							if j.Stopped {
								state = "stopped"
							}
							fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", j.Name, j.Version, j.Artifact, j.Priority, j.Count, state)
						}
						return tw.Flush()
					}
					if len(args) > 1 {
						return usageErrorf("job status takes at most one job name")
					}
					st, err := cl.JobStatus(c.Context, args[0])
					if err != nil {
						return placementErr(err)
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, st)
					}
					printJobStatus(c.App.Writer, st)
					return nil
				},
			},
			{
				Name:      "stop",
				Usage:     "stop every task of a job",
				UsageText: "ballena job stop api",
				Flags:     append(clientFlags(), jsonFlag),
				Action: func(c *cli.Context) error {
					args := c.Args().Slice()
					if len(args) != 1 {
						return usageErrorf("job stop takes one job name")
					}
					cl, err := placementClient(c)
					if err != nil {
						return err
					}
					resp, err := cl.StopJob(c.Context, args[0])
					if err != nil {
						return placementErr(err)
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, resp)
					}
					printEvaluations(c.App.Writer, resp)
					return nil
				},
			},
		},
	}
}

func printEvaluations(w io.Writer, resp *placement.SubmitResponse) {
	if j := resp.Job; j != nil {
		state := ""
		if j.Stopped {
			state = " (stopped)"
		}
		fmt.Fprintf(w, "job %s version %d%s: %s, %d tasks, %s\n", j.Name, j.Version, state, j.Artifact, j.Count, j.Priority)
	}
	for i, ev := range resp.Evaluations {
		if i > 0 && ev.Placed+ev.Stopped+ev.Preempted == 0 {
			continue
		}
		prefix := ""
		if i > 0 || resp.Job == nil {
			prefix = ev.Job + ": "
		}
		fmt.Fprintf(w, "%s%d placed, %d waiting, %d stopped, %d preempted (%s)\n",
			prefix, ev.Placed, len(ev.Pending), ev.Stopped, ev.Preempted, ev.Trigger)
		// Tasks of one job usually wait for the same reason: group them.
		byReason := map[string][]int{}
		for _, p := range ev.Pending {
			byReason[p.Reason] = append(byReason[p.Reason], p.Index)
		}
		for _, r := range sortedReasonKeys(byReason) {
			fmt.Fprintf(w, "  waiting %s: %s\n", taskList(ev.Job, byReason[r]), r)
		}
		for _, n := range ev.Notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
}

func sortedReasonKeys(m map[string][]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func taskList(job string, idx []int) string {
	if len(idx) == 1 {
		return fmt.Sprintf("%s[%d]", job, idx[0])
	}
	if len(idx) > 6 {
		return fmt.Sprintf("%d tasks of %s", len(idx), job)
	}
	parts := make([]string, len(idx))
	for i, x := range idx {
		parts[i] = fmt.Sprint(x)
	}
	return fmt.Sprintf("%s[%s]", job, strings.Join(parts, ","))
}

func printJobStatus(w io.Writer, st *placement.JobStatus) {
	j := st.Job
	state := "running"
	if j.Stopped {
		state = "stopped"
	}
	fmt.Fprintf(w, "job %s (%s): version %d, %s, %d tasks, %s, %s\n", j.Name, state, j.Version, j.Artifact, j.Count, j.Priority, j.Resources)
	var sum []string
	for _, k := range []string{"running", "starting", "waiting", "complete", "failed", "done"} {
		if n := st.Summary[k]; n > 0 {
			sum = append(sum, fmt.Sprintf("%d %s", n, k))
		}
	}
	if len(sum) > 0 {
		fmt.Fprintln(w, strings.Join(sum, ", "))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tSTATE\tNODE\tALLOC\tVERSION\tSTATUS\tREASON")
	for _, t := range st.Tasks {
		status, reason := orDash(t.ClientStatus), t.Reason
		if t.ClientStatus == placement.ClientPending {
			status = "starting"
			if t.Message != "" {
				status = "blocked" // the launcher tried and says why (e.g. verification refused); it retries
			}
		}
		if t.Message != "" {
			reason = strings.TrimPrefix(reason+"; "+t.Message, "; ")
		}
		if t.Desired == placement.DesiredStop {
			status += " (stopping)"
		}
		if t.ExitCode != nil {
			status += fmt.Sprintf(" (exit %d)", *t.ExitCode)
		}
		if t.OOMKilled {
			status += " OOM"
		}
		version := "-"
		if t.Version > 0 {
			version = fmt.Sprint(t.Version)
		}
		fmt.Fprintf(tw, "%s[%d]\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Name, t.Index, t.State, orDash(t.NodeID), orDash(t.AllocID), version, status, reason)
	}
	tw.Flush()
}

func nodesCommand() *cli.Command {
	return &cli.Command{
		Name:      "nodes",
		Usage:     "list the machines the placement service knows: state, capacity, allocated, labels, held artifacts",
		UsageText: "ballena nodes\nballena nodes --json --server http://10.0.0.1:7480",
		Flags:     append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}),
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) > 0 {
				return usageErrorf("nodes takes no arguments (got %q)", args[0])
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			nodes, err := cl.Nodes(c.Context)
			if err != nil {
				return placementErr(err)
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, nodes)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tSTATE\tCPU\tMEMORY\tTASKS\tLABELS\tADDRS\tARTIFACTS")
			for _, n := range nodes {
				state := n.Status
				if n.Drain {
					state += ",draining"
				}
				var labels []string
				for _, k := range sortedStringKeys(n.Labels) {
					labels = append(labels, k+"="+n.Labels[k])
				}
				fmt.Fprintf(tw, "%s\t%s\t%dm/%dm\t%s/%s\t%d\t%s\t%s\t%s\n", n.ID, state,
					n.Allocated.CPU, n.Capacity.CPU, placement.FormatSize(n.Allocated.Memory), placement.FormatSize(n.Capacity.Memory),
					n.Tasks, orDash(strings.Join(labels, ",")), orDash(strings.Join(n.Addrs, ",")), orDash(strings.Join(n.Artifacts, ",")))
			}
			return tw.Flush()
		},
	}
}

func sortedStringKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// nodeDrainCommand is mounted by the node command as `ballena node drain NODE`.
func nodeDrainCommand() *cli.Command {
	return &cli.Command{
		Name:  "drain",
		Usage: "move a machine's tasks elsewhere, a few at a time (update.max_parallel per job), and place nothing new on it",
		UsageText: "ballena node drain 12D3KooWRm3...   # a unique prefix of the node ID is enough\n" +
			"ballena node drain --disable 12D3KooWRm3...",
		Flags: append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"},
			&cli.BoolFlag{Name: "disable", Usage: "stop draining: the machine takes new tasks again"}),
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) != 1 {
				return usageErrorf("node drain takes one node ID")
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			id, err := resolveNode(c.Context, cl, args[0])
			if err != nil {
				return err
			}
			resp, err := cl.Drain(c.Context, id, !c.Bool("disable"))
			if err != nil {
				return placementErr(err)
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, resp)
			}
			verb := "draining"
			if c.Bool("disable") {
				verb = "no longer draining"
			}
			fmt.Fprintf(c.App.Writer, "node %s %s\n", id, verb)
			printEvaluations(c.App.Writer, resp)
			return nil
		},
	}
}

// resolveNode expands a unique prefix of a node ID.
func resolveNode(ctx context.Context, cl *placement.Client, prefix string) (string, error) {
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return "", placementErr(err)
	}
	var match []string
	for _, n := range nodes {
		if n.ID == prefix {
			return n.ID, nil
		}
		if strings.HasPrefix(n.ID, prefix) {
			match = append(match, n.ID)
		}
	}
	switch len(match) {
	case 0:
		return "", withCode(exitNotFound, fmt.Errorf("no node %s (see ballena nodes)", prefix))
	case 1:
		return match[0], nil
	}
	return "", usageErrorf("node prefix %s matches %d nodes; give more of the ID", prefix, len(match))
}
