package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/launcher"
	"ballena.dev/placement"
	"ballena.dev/swarm"
)

// agentFlags join a node to a placement service (`ballena node --server URL`).
func agentFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", EnvVars: []string{"BALLENA_SERVER"},
			Usage: "placement service URL; the node then runs the tasks it is assigned"},
		&cli.StringFlag{Name: "join-token-file", EnvVars: []string{"BALLENA_JOIN_TOKEN_FILE"},
			Usage: "file holding the cell's join token (the server's --join-token-file, or its admin token)"},
		&cli.StringSliceFlag{Name: "label", Usage: "machine label KEY=VALUE for constraints and spread, e.g. rack=r1; repeatable"},
		&cli.StringFlag{Name: "capacity-cpu", Usage: "cpu offered to tasks, e.g. 2000m or 2 (default: all cores)"},
		&cli.StringFlag{Name: "capacity-memory", Usage: "memory offered to tasks, e.g. 8GiB (default: 90% of RAM)"},
	}
}

// agentConfig reads the agent flags; ok is false when no --server is given.
func agentConfig(c *cli.Context, nodeKey ed25519.PrivateKey, addrs []string, fetch func(context.Context, artifact.Ref) error, holdings launcher.Holdings) (cfg launcher.AgentConfig, ok bool, err error) {
	server := c.String("server")
	if server == "" {
		return cfg, false, nil
	}
	tokFile := c.String("join-token-file")
	if tokFile == "" {
		return cfg, false, usageErrorf("node: --server needs --join-token-file (the cell's join token)")
	}
	tok, err := os.ReadFile(tokFile)
	if err != nil {
		return cfg, false, usageErrorf("node: --join-token-file: %v", err)
	}
	pc, err := placement.NewNodeClient(server, strings.TrimSpace(string(tok)), nodeKey)
	if err != nil {
		return cfg, false, usageErrorf("node: --server: %v", err)
	}
	labels := map[string]string{}
	for _, l := range c.StringSlice("label") {
		k, v, found := strings.Cut(l, "=")
		if !found || k == "" {
			return cfg, false, usageErrorf("node: --label %q: want KEY=VALUE", l)
		}
		labels[k] = v
	}
	capacity := placement.Resources{CPU: int64(runtime.NumCPU()) * 1000, Memory: memTotal() * 9 / 10, PIDs: 32768}
	if s := c.String("capacity-cpu"); s != "" {
		if capacity.CPU, err = placement.ParseCPU(s, false); err != nil {
			return cfg, false, usageErrorf("node: --capacity-cpu: %v", err)
		}
	}
	if s := c.String("capacity-memory"); s != "" {
		if capacity.Memory, err = parseBytes(s); err != nil {
			return cfg, false, usageErrorf("node: --capacity-memory: %v", err)
		}
	}
	return launcher.AgentConfig{Placement: pc, Fetch: fetch, Holdings: holdings, Addrs: addrs,
		Labels: labels, Capacity: capacity}, true, nil
}

// nodeSigningKey is the node's mesh identity as an ed25519 key: the same key
// signs its requests to the placement service, so one name means one machine.
func nodeSigningKey(dataDir string) (ed25519.PrivateKey, error) {
	sk, err := swarm.LoadIdentity(filepath.Join(dataDir, swarm.KeyFile))
	if err != nil {
		return nil, err
	}
	raw, err := sk.Raw()
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("node key: not an ed25519 private key")
	}
	return ed25519.PrivateKey(raw), nil
}

// holdings lists what the store holds, as the placement service's ranking wants it.
func holdings(st *artifact.Store) launcher.Holdings {
	return func() []string {
		rels, err := st.Releases()
		if err != nil {
			return nil
		}
		out := make([]string, 0, 2*len(rels))
		for _, r := range rels {
			out = append(out, r.Ref().String(), "sha256:"+r.Digest)
		}
		return out
	}
}

// memTotal reads MemTotal from /proc/meminfo, in bytes.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// newAgent joins the daemon to a placement service when --server is given:
// the agent fetches through this node's swarm and starts through its launcher.
func (d *daemon) newAgent(c *cli.Context) error {
	key, err := nodeSigningKey(d.data)
	if err != nil {
		return err
	}
	fetch := func(ctx context.Context, ref artifact.Ref) error {
		if _, _, err := d.st.Release(ref); err == nil {
			return nil
		}
		// Bounded, so that the agent reports "nobody has it" and tries again later.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		_, err := d.node.Fetch(ctx, ref, nil)
		return err
	}
	cfg, ok, err := agentConfig(c, key, swarm.FullAddrs(d.node.Host()), fetch, holdings(d.st))
	if err != nil || !ok {
		return err
	}
	cfg.Logger = d.log
	d.agent = launcher.NewAgent(cfg)
	return nil
}
