package main

// ballena events --follow: the cell's changes as they are committed.

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/placement"
)

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "follow the cell's job, task, allocation, node and release changes as they are committed",
		Description: "Events come from whichever server of --server answers (every server applies every change).\n" +
			"There is no history: the stream starts now. If the stream breaks, the command reconnects (to the\n" +
			"next server of the list if need be) and says on stderr that changes in between may be missed.\n" +
			"--json prints one event per line: {index, time, type, job, node, key, summary, record}; the first\n" +
			"line, of type \"ready\", says at which index the stream starts.",
		UsageText: "ballena events --follow\nballena events --follow --job api --json\nballena events --follow --job api --count 1   # wait for the next change of job api",
		Flags: append(clientFlags(),
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "stream events until interrupted (required: events are live only)"},
			&cli.StringFlag{Name: "job", Usage: "only this job's events"},
			&cli.IntFlag{Name: "count", Usage: "exit after this many events (0: never)"},
			&cli.BoolFlag{Name: "json", Usage: "print each event as one line of JSON"}),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErrorf("events takes no arguments (got %q)", c.Args().First())
			}
			if !c.Bool("follow") {
				return usageErrorf("events are live only (the cell keeps no history of them): say --follow")
			}
			if c.Int("count") < 0 {
				return usageErrorf("--count %d: want 0 or more", c.Int("count"))
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			return followEvents(c, cl)
		},
	}
}

var errEnoughEvents = errors.New("enough events")

func followEvents(c *cli.Context, cl *placement.Client) error {
	ctx := c.Context
	out, errw := c.App.Writer, c.App.ErrWriter
	jsonOut, limit := c.Bool("json"), c.Int("count")
	seen := 0
	var last uint64
	backoff := 500 * time.Millisecond
	for {
		started := time.Now()
		err := cl.Events(ctx, c.String("job"), func(e placement.Event) error {
			if e.Type == placement.EventReady {
				if last > 0 && e.Index > last {
					fmt.Fprintf(errw, "reconnected to %s at index %d: changes after index %d may be missed\n", e.Key, e.Index, last)
				}
				if jsonOut {
					return json.NewEncoder(out).Encode(e)
				}
				if last == 0 {
					fmt.Fprintf(errw, "following events from server %s, from index %d\n", e.Key, e.Index)
				}
				return nil
			}
			last = e.Index
			if jsonOut {
				if err := json.NewEncoder(out).Encode(e); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "%s  %-7d %-7s %s\n", e.Time.Local().Format("15:04:05.000"), e.Index, e.Type, e.Summary)
			}
			if seen++; limit > 0 && seen >= limit {
				return errEnoughEvents
			}
			return nil
		})
		switch {
		case errors.Is(err, errEnoughEvents):
			return nil
		case ctx.Err() != nil:
			return nil // interrupted: a normal end
		case placement.IsUnauthorized(err) || placement.IsNotFound(err):
			return placementErr(err)
		}
		if time.Since(started) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		fmt.Fprintf(errw, "events: %v; reconnecting in %v\n", err, backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}
