package main

// ballena nodes, nodes revoke, node drain: the machines as the placement
// service knows them.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"ballena.dev/placement"
)

func nodesCommand() *cli.Command {
	return &cli.Command{
		Name:        "nodes",
		Usage:       "list the machines the placement service knows: state, capacity, allocated, labels, held artifacts",
		UsageText:   "ballena nodes\nballena nodes --json --server https://10.0.0.1:7480 --ca cell/ca.pem\nballena nodes revoke 12D3KooWRm3...",
		Flags:       append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}),
		Subcommands: []*cli.Command{nodesRevokeCommand()},
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
				if n.Revoked {
					state += ",revoked"
				}
				if n.Drain {
					state += ",draining"
				}
				var labels []string
				for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
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

func nodesRevokeCommand() *cli.Command {
	return &cli.Command{
		Name: "revoke",
		Usage: "take a machine's credentials away: it can no longer heartbeat, register or receive allocations, " +
			"and its tasks are placed elsewhere",
		UsageText: "ballena nodes revoke 12D3KooWRm3...   # the full node ID (peer ID)",
		Flags:     append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("nodes revoke takes one node ID")
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			id := c.Args().First()
			resp, err := cl.Revoke(c.Context, id)
			if err != nil {
				return placementErr(err)
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, resp)
			}
			fmt.Fprintf(c.App.Writer, "node %s revoked\n", id)
			printEvaluations(c.App.Writer, resp)
			return nil
		},
	}
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
