package main

// ballena job run, status, stop.

import (
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"ballena.dev/placement"
)

func jobCommand() *cli.Command {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}
	return &cli.Command{
		Name:  "job",
		Usage: "submit, inspect and stop jobs on the placement service",
		UsageText: "ballena job run api.yaml\n" +
			"ballena job wait api --healthy --timeout 10m\n" +
			"ballena job status api\n" +
			"ballena job history api\n" +
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
					"  check: {http: /healthz, port_env: PORT, interval: 10s, timeout: 2s, failures: 3}   # or tcp: true, or exec: [cmd, args]\n" +
					"  update: {max_parallel: 2, canary: 1, min_healthy_time: 10s, healthy_deadline: 5m, auto_revert: true}",
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
					if c.NArg() != 1 {
						return usageErrorf("job stop takes one job name")
					}
					return jobChange(c, func(cl *placement.Client) (*placement.SubmitResponse, error) {
						return cl.StopJob(c.Context, c.Args().First())
					})
				},
			},
			jobWaitCommand(),
			jobHistoryCommand(),
			jobPromoteCommand(),
			jobRevertCommand(),
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
		for _, r := range slices.Sorted(maps.Keys(byReason)) {
			fmt.Fprintf(w, "  waiting %s: %s\n", taskList(ev.Job, byReason[r]), r)
		}
		for _, n := range ev.Notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
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
	if r := st.Rollout; r != nil {
		line := fmt.Sprintf("rollout of version %d: %s, %d of %d placed, %d healthy", r.JobVersion, r.Status, r.Placed, r.Desired, r.Healthy)
		if r.Unhealthy > 0 {
			line += fmt.Sprintf(", %d unhealthy", r.Unhealthy)
		}
		if r.Canary > 0 && !r.Promoted {
			line += fmt.Sprintf(", %d canaries", r.Canary)
		}
		if r.Description != "" {
			line += " (" + r.Description + ")"
		}
		fmt.Fprintln(w, line)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tSTATE\tNODE\tALLOC\tVERSION\tSTATUS\tHEALTH\tREASON")
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
		health := orDash(t.Health)
		if t.Healthy != nil && !*t.Healthy {
			health += " (rollout: unhealthy)"
		}
		fmt.Fprintf(tw, "%s[%d]\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Name, t.Index, t.State, orDash(t.NodeID), orDash(t.AllocID), version, status, health, reason)
	}
	tw.Flush()
}
