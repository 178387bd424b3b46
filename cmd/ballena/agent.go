package main

import (
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"ballena.dev/internal/daemon"
	"ballena.dev/internal/units"
)

// agentFlags join a node to a placement service (`ballena node --server URL`).
func agentFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", EnvVars: []string{"BALLENA_SERVER"},
			Usage: "placement server URLs, comma-separated (the node moves to the next when one fails); the node then runs the tasks it is assigned"},
		&cli.StringFlag{Name: "ca", EnvVars: []string{"BALLENA_CA"},
			Usage: "the cell CA certificate (ca.pem) that signed the placement servers' certificates"},
		&cli.StringFlag{Name: "join-token-file", EnvVars: []string{"BALLENA_JOIN_TOKEN_FILE"},
			Usage: "file holding the cell's join token (the server's --join-token-file, or its admin token)"},
		&cli.StringSliceFlag{Name: "label", Usage: "machine label KEY=VALUE for constraints and spread, e.g. rack=r1; repeatable"},
		&cli.StringFlag{Name: "capacity-cpu", Usage: "cpu offered to tasks, e.g. 2000m or 2 (default: all cores)"},
		&cli.StringFlag{Name: "capacity-memory", Usage: "memory offered to tasks, e.g. 8GiB (default: 90% of RAM)"},
	}
}

// agentConfig reads the agent flags; nil when no --server is given.
func agentConfig(c *cli.Context) (*daemon.AgentConfig, error) {
	server := c.String("server")
	if server == "" {
		return nil, nil
	}
	tokFile := c.String("join-token-file")
	if tokFile == "" {
		return nil, usageErrorf("node: --server needs --join-token-file (the cell's join token)")
	}
	tok, err := os.ReadFile(tokFile)
	if err != nil {
		return nil, usageErrorf("node: --join-token-file: %v", err)
	}
	ac, err := machineFlags(c)
	if err != nil {
		return nil, err
	}
	ac.Server, ac.JoinToken, ac.CA = server, strings.TrimSpace(string(tok)), c.String("ca")
	return ac, nil
}

// machineFlags reads what a node tells the cell about its machine: labels and capacity.
func machineFlags(c *cli.Context) (*daemon.AgentConfig, error) {
	ac := &daemon.AgentConfig{Labels: map[string]string{}}
	for _, l := range c.StringSlice("label") {
		k, v, found := strings.Cut(l, "=")
		if !found || k == "" {
			return nil, usageErrorf("node: --label %q: want KEY=VALUE", l)
		}
		ac.Labels[k] = v
	}
	var err error
	if s := c.String("capacity-cpu"); s != "" {
		if ac.Capacity.CPU, err = units.ParseCPU(s); err != nil {
			return nil, usageErrorf("node: --capacity-cpu: %v", err)
		}
	}
	if s := c.String("capacity-memory"); s != "" {
		if ac.Capacity.Memory, err = units.ParseBytes(s); err != nil {
			return nil, usageErrorf("node: --capacity-memory: %v", err)
		}
	}
	return ac, nil
}
