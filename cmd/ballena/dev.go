package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"ballena.dev/internal/daemon"
	"ballena.dev/placement"
)

// devCommand is the all-in-one cluster, like `nomad agent -dev`: a placement
// server and a node in one process, on a throwaway data dir.
func devCommand() *cli.Command {
	var flags []cli.Flag
	for _, f := range nodeCommand().Flags {
		switch f.Names()[0] {
		case "server", "join-token-file", "listen", "cgroup-parent", "ca":
			continue // dev sets these itself
		}
		flags = append(flags, f)
	}
	flags = append(flags,
		&cli.StringFlag{Name: "api-listen", Value: "127.0.0.1:7480", Usage: "placement API listen address"},
		&cli.StringFlag{Name: "dir", Usage: "data dir to use and keep (default: a new temporary dir, removed at exit)"},
	)
	return &cli.Command{
		Name:  "dev",
		Usage: "run a placement server and a node in one process on a throwaway data dir (try Ballena on one machine)",
		UsageText: "ballena dev\n" +
			"   ballena dev --api-listen 127.0.0.1:7490 --dir /tmp/ballena-dev\n" +
			"   ballena dev --metrics-listen 127.0.0.1:9465",
		Description: "Prints the environment that points the other commands at it. Ctrl-C stops its tasks\n" +
			"and removes the temporary data dir. As root, tasks run in cgroups under ballena-dev.\n" +
			"--metrics-listen serves one Prometheus endpoint with both the server's and the node's\n" +
			"metrics (plain HTTP, no auth: keep it on loopback).",
		Flags: flags,
		Action: func(c *cli.Context) error {
			dir := c.String("dir")
			keep := dir != ""
			if !keep {
				var err error
				if dir, err = os.MkdirTemp("", "ballena-dev-"); err != nil {
					return err
				}
			}
			if !keep {
				defer os.RemoveAll(dir)
			}
			srvDir, nodeDir := filepath.Join(dir, "server"), filepath.Join(dir, "node")
			for _, d := range []string{srvDir, nodeDir} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithCancel(c.Context)
			defer cancel()
			var reg *prometheus.Registry
			if c.String("metrics-listen") != "" {
				reg = daemon.NewRegistry() // one endpoint: the node serves the server's metrics too
			}
			ps, err := startPlacement(ctx, srvDir, c.String("api-listen"), reg)
			if err != nil {
				return err
			}
			url := ps.url
			cfg, err := devNodeConfig(c, nodeDir, url, ps.joinPath, ps.caPath)
			if err != nil {
				return err
			}
			cfg.Metrics = reg
			d, err := daemon.New(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "ballena dev: placement server %s, node %s, data in %s\n", url, d.ID(), dir)
			fmt.Fprintf(c.App.Writer, "point the other commands at it:\n  export BALLENA_DATA=%s BALLENA_SERVER=%s BALLENA_CA=%s BALLENA_TOKEN=$(cat %s)\n",
				nodeDir, url, ps.caPath, ps.adminPath)
			fmt.Fprintf(c.App.Writer, "trust policy: %s (re-read at every task start)\n", filepath.Join(nodeDir, "trust.yaml"))
			err = d.Run(ctx)
			cancel()
			<-ps.done
			return err
		},
	}
}

// devNodeConfig is the node half of dev: the node flags dev shares, on the dev
// data dir, loopback only, joined to the dev server, its tasks stopped at exit.
func devNodeConfig(c *cli.Context, nodeDir, serverURL, joinPath, caPath string) (daemon.Config, error) {
	cfg, err := nodeConfig(c)
	if err != nil {
		return cfg, err
	}
	cfg.DataDir, cfg.CgroupParent = nodeDir, "ballena-dev"
	if !c.IsSet("trust") {
		cfg.TrustPath = "" // the dev node's own DATA/trust.yaml
	}
	cfg.Swarm.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	join, err := placement.ReadToken(joinPath)
	if err != nil {
		return cfg, err
	}
	if cfg.Placement, err = machineFlags(c); err != nil {
		return cfg, err
	}
	cfg.Placement.Server, cfg.Placement.JoinToken, cfg.Placement.CA = serverURL, join, caPath
	cfg.BeforeClose = stopDevTasks
	return cfg, nil
}

// stopDevTasks stops what a throwaway cluster started, so that nothing outlives it.
func stopDevTasks(d *daemon.Daemon) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, t := range d.Launcher().List() {
		if !t.State.Final() {
			if _, err := d.Launcher().Stop(ctx, t.ID, syscall.SIGTERM, 5*time.Second); err != nil {
				d.Logger().Warn("stop task", "id", t.ID, "err", err)
			}
		}
	}
}

// startPlacement runs a placement server, a cell of one with its own CA and
// tokens in dir, on listen until ctx ends; done closes when it has shut down.
func startPlacement(ctx context.Context, dir, listen string, reg *prometheus.Registry) (ps *placementServer, err error) {
	// The node's log is what a dev user reads; the server speaks up for warnings.
	quiet := slog.New(minLevel{slog.LevelWarn, slog.Default().Handler()}).With("component", "placement")
	ps, err = startServer(ctx, serverSetup{dataDir: dir, cellDir: dir, ownCell: true, name: "dev",
		listen: listen, raftListen: "127.0.0.1:0", expect: 1, batchShare: placement.DefaultBatchShare,
		nodeTTL: placement.DefaultNodeTTL, log: quiet, quickElection: true, metrics: reg})
	if err != nil {
		if code := exitCode(err); code == exitUnavailable {
			return nil, withCode(exitUnavailable, fmt.Errorf("placement %w (try --api-listen)", err))
		}
		return nil, err
	}
	return ps, nil
}

// minLevel passes on records at or above its level only.
type minLevel struct {
	level slog.Level
	slog.Handler
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.level, h.Handler.WithAttrs(as)}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.level, h.Handler.WithGroup(name)}
}
