package main

// ballena job history, revert, promote and wait: a job's versions and rollouts.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/placement"
)

func jobHistoryCommand() *cli.Command {
	return &cli.Command{
		Name:      "history",
		Usage:     "list a job's versions, newest first, with how each rollout ended",
		UsageText: "ballena job history api\nballena job history api --json",
		Flags:     append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("job history takes one job name")
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			vs, err := cl.JobHistory(c.Context, c.Args().First())
			if err != nil {
				return placementErr(err)
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, vs)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tSUBMITTED\tARTIFACT\tCOUNT\tROLLOUT\tSTABLE\tDESCRIPTION")
			for _, v := range vs {
				mark, rollout, desc := "", "-", ""
				if v.Current {
					mark = " (current)"
				}
				if d := v.Deployment; d != nil {
					rollout, desc = d.Status, d.Description
					if d.RevertedTo != 0 {
						kind := "job revert"
						if d.AutoRevert {
							kind = "auto_revert"
						}
						desc = fmt.Sprintf("%s from version %d to version %d; %s", kind, d.RevertedFrom, d.RevertedTo, desc)
					}
				}
				fmt.Fprintf(tw, "%d%s\t%s\t%s\t%d\t%s\t%v\t%s\n", v.Version, mark, v.SubmittedAt, v.Artifact, v.Count, rollout, v.Stable, desc)
			}
			return tw.Flush()
		},
	}
}

func jobRevertCommand() *cli.Command {
	return &cli.Command{
		Name:  "revert",
		Usage: "go back to an earlier version of a job: a new version with its spec, rolled out without canaries",
		Description: "The nodes that ran the earlier version still hold its release, so tasks restart without a new\n" +
			"fetch; tasks still running that version's spec are left alone. `ballena job history` lists versions.",
		UsageText: "ballena job revert api 3",
		Flags:     append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usageErrorf("job revert takes a job name and a version (see `ballena job history NAME`)")
			}
			v, err := strconv.ParseUint(c.Args().Get(1), 10, 64)
			if err != nil || v == 0 {
				return usageErrorf("job revert: %q is not a version number", c.Args().Get(1))
			}
			return jobChange(c, func(cl *placement.Client) (*placement.SubmitResponse, error) {
				return cl.RevertJob(c.Context, c.Args().First(), v)
			})
		},
	}
}

func jobPromoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "promote",
		Usage:     "let a rollout whose canaries are healthy replace the rest of the job's tasks",
		UsageText: "ballena job promote api",
		Flags:     append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("job promote takes one job name")
			}
			return jobChange(c, func(cl *placement.Client) (*placement.SubmitResponse, error) {
				return cl.PromoteJob(c.Context, c.Args().First())
			})
		},
	}
}

// jobChange makes one change through the placement client and prints what
// its evaluations did (--json: the whole answer).
func jobChange(c *cli.Context, change func(*placement.Client) (*placement.SubmitResponse, error)) error {
	cl, err := placementClient(c)
	if err != nil {
		return err
	}
	resp, err := change(cl)
	if err != nil {
		return placementErr(err)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, resp)
	}
	printEvaluations(c.App.Writer, resp)
	return nil
}

func jobWaitCommand() *cli.Command {
	return &cli.Command{
		Name:  "wait",
		Usage: "wait until a job's tasks run (with --healthy: until its rollout succeeded and every task is healthy)",
		Description: "Exit status: 0 when done; 1 when the rollout failed (the message says which task was\n" +
			"unhealthy, and whether auto_revert went back) or a newer version replaced it; 5 when --timeout\n" +
			"ran out (the message says how far the rollout got); 4 when there is no such job.\n" +
			"A rollout with canaries waits for `ballena job promote` (unless update.auto_promote) before it can succeed.",
		UsageText: "ballena job run api.yaml && ballena job wait api --healthy --timeout 10m",
		Flags: append(clientFlags(),
			&cli.BoolFlag{Name: "healthy", Usage: "wait for the current version's rollout to succeed and every task to be healthy"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Minute, Usage: "give up after this long (exit 5)"},
			&cli.BoolFlag{Name: "json", Usage: "print the job's final status as JSON"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("job wait takes one job name")
			}
			if c.Duration("timeout") <= 0 {
				return usageErrorf("--timeout %v: want a positive duration", c.Duration("timeout"))
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			return waitJob(c, cl, c.Args().First(), c.Bool("healthy"), c.Duration("timeout"))
		},
	}
}

// rolloutError ends a wait on a rollout that will not succeed (exit 1).
type rolloutError struct{ msg string }

func (e *rolloutError) Error() string { return e.msg }

func rolloutFailed(format string, a ...any) error { return &rolloutError{fmt.Sprintf(format, a...)} }

// waitJob re-reads the job's status whenever its events stream says it
// changed, until the verdict is in or the timeout runs out.
func waitJob(c *cli.Context, cl *placement.Client, name string, healthy bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	var version uint64 // the version being waited for: the current one at the start
	var last string
	var st *placement.JobStatus
	check := func() (bool, error) {
		var err error
		if st, err = cl.JobStatus(ctx, name); err != nil {
			return false, err
		}
		if version == 0 {
			version = st.Job.Version
			if r := st.Rollout; r != nil && r.AutoRevert {
				// The version last submitted failed before the wait began
				// (as soon as its first task did): that is the one to report on.
				version = r.RevertedFrom
			}
		}
		done, progress, err := jobVerdict(ctx, cl, st, version, healthy)
		if progress != last && err == nil && !done {
			fmt.Fprintln(c.App.ErrWriter, progress)
			last = progress
		}
		return done, err
	}
	for backoff := 250 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		done, err := check()
		if err == nil && !done {
			// Every change of the job is an event: read the status again on each.
			err = cl.Events(ctx, name, func(e placement.Event) error {
				d, err := check()
				if err == nil && d {
					return errEnoughEvents
				}
				return err
			})
			if errors.Is(err, errEnoughEvents) {
				done, err = true, nil
			}
		}
		switch {
		case done:
			if c.Bool("json") {
				return printJSON(c.App.Writer, st)
			}
			fmt.Fprintf(c.App.Writer, "job %s version %d: %s\n", name, st.Job.Version, doneLine(st, healthy))
			return nil
		case errors.As(err, new(*rolloutError)):
			var re *rolloutError
			errors.As(err, &re)
			return re // without the stream's wrapping: one line about the job
		case ctx.Err() != nil && c.Context.Err() == nil:
			return withCode(exitUnavailable, fmt.Errorf("job %s: gave up after %v: %s", name, timeout, last))
		case c.Context.Err() != nil:
			return c.Context.Err()
		case placement.IsNotFound(err) || placement.IsUnauthorized(err):
			return placementErr(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
	}
}

func doneLine(st *placement.JobStatus, healthy bool) string {
	if healthy {
		return fmt.Sprintf("rollout successful, %d tasks healthy", st.Job.Count)
	}
	return fmt.Sprintf("%d tasks running", st.Summary[placement.ClientRunning])
}

// jobVerdict says whether the wait is over, how far it got (one line), or
// why it never will be (a rolloutError).
func jobVerdict(ctx context.Context, cl *placement.Client, st *placement.JobStatus, version uint64, healthy bool) (bool, string, error) {
	j := st.Job
	if j.Stopped {
		return false, "", rolloutFailed("job %s is stopped", j.Name)
	}
	running := st.Summary[placement.ClientRunning]
	want := j.Count - st.Summary[placement.TaskDone]
	if !healthy {
		return running >= want, fmt.Sprintf("job %s version %d: %d of %d tasks running", j.Name, j.Version, running, want), nil
	}
	if j.Version != version {
		// A newer version took over: a revert of this one, or another submission.
		return false, "", rolloutOutcome(ctx, cl, j, version)
	}
	r := st.Rollout
	if r == nil {
		return false, "", rolloutFailed("job %s version %d has no rollout to wait for", j.Name, j.Version)
	}
	line := fmt.Sprintf("job %s version %d: rollout %s, %d of %d tasks placed, %d healthy", j.Name, j.Version, r.Status, r.Placed, r.Desired, r.Healthy)
	if r.Description != "" && r.Status != placement.DeployRunning {
		line += " (" + r.Description + ")"
	}
	switch r.Status {
	case placement.DeployFailed:
		return false, line, rolloutFailed("job %s: the rollout of version %d failed: %s", j.Name, r.JobVersion, r.Description)
	case placement.DeployCancelled:
		return false, line, rolloutFailed("job %s: the rollout of version %d was cancelled: %s", j.Name, r.JobVersion, r.Description)
	case placement.DeploySuccessful:
		healthyNow := 0
		for _, t := range st.Tasks {
			if t.ClientStatus == placement.ClientRunning && t.Health != placement.HealthUnhealthy && t.Healthy != nil && *t.Healthy {
				healthyNow++
			}
		}
		return healthyNow >= want, line, nil
	}
	return false, line, nil
}

// rolloutOutcome explains why the version waited for is no longer current.
func rolloutOutcome(ctx context.Context, cl *placement.Client, j *placement.Job, version uint64) error {
	hist, err := cl.JobHistory(ctx, j.Name)
	if err != nil {
		return err
	}
	for _, v := range hist {
		if v.Version != version || v.Deployment == nil {
			continue
		}
		d := v.Deployment
		what := fmt.Sprintf("the rollout of version %d %s", version, d.Status)
		if d.Description != "" {
			what += ": " + d.Description
		}
		if cur := j.Deployment; cur != nil && cur.RevertedFrom == version {
			what += fmt.Sprintf("; job %s went back to version %d as version %d", j.Name, cur.RevertedTo, j.Version)
		} else {
			what += fmt.Sprintf("; version %d replaced it", j.Version)
		}
		if d.Status == placement.DeploySuccessful {
			what += "; wait for that one to check its health"
		}
		return rolloutFailed("job %s: %s", j.Name, what)
	}
	return rolloutFailed("job %s: version %d was replaced by version %d", j.Name, version, j.Version)
}
