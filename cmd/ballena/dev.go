package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

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
		case "server", "join-token-file", "listen", "cgroup-parent":
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
			"   ballena dev --api-listen 127.0.0.1:7490 --dir /tmp/ballena-dev",
		Description: "Prints the environment that points the other commands at it. Ctrl-C stops its tasks\n" +
			"and removes the temporary data dir. As root, tasks run in cgroups under ballena-dev.",
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
			url, adminPath, joinPath, srvDone, err := startPlacement(ctx, srvDir, c.String("api-listen"))
			if err != nil {
				return err
			}
			cfg, err := devNodeConfig(c, nodeDir, url, joinPath)
			if err != nil {
				return err
			}
			d, err := daemon.New(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "ballena dev: placement server %s, node %s, data in %s\n", url, d.ID(), dir)
			fmt.Fprintf(c.App.Writer, "point the other commands at it:\n  export BALLENA_DATA=%s BALLENA_SERVER=%s BALLENA_TOKEN=$(cat %s)\n",
				nodeDir, url, adminPath)
			fmt.Fprintf(c.App.Writer, "trust policy: %s (re-read at every task start)\n", filepath.Join(nodeDir, "trust.yaml"))
			err = d.Run(ctx)
			cancel()
			<-srvDone
			return err
		},
	}
}

// devNodeConfig is the node half of dev: the node flags dev shares, on the dev
// data dir, loopback only, joined to the dev server, its tasks stopped at exit.
func devNodeConfig(c *cli.Context, nodeDir, serverURL, joinPath string) (daemon.Config, error) {
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
	cfg.Placement.Server, cfg.Placement.JoinToken = serverURL, join
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

// startPlacement serves a placement server from dir on listen until ctx ends;
// done closes when it has shut down.
func startPlacement(ctx context.Context, dir, listen string) (url, adminPath, joinPath string, done <-chan struct{}, err error) {
	adminPath, joinPath = filepath.Join(dir, "admin.token"), filepath.Join(dir, "join.token")
	admin, _, err := placement.LoadOrCreateToken(adminPath)
	if err != nil {
		return "", "", "", nil, err
	}
	join, _, err := placement.LoadOrCreateToken(joinPath)
	if err != nil {
		return "", "", "", nil, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return "", "", "", nil, withCode(exitUnavailable, fmt.Errorf("placement listen: %w (is another server running? try --api-listen)", err))
	}
	s, err := placement.Open(placement.Options{Dir: filepath.Join(dir, "placement"), AdminToken: admin, JoinToken: join})
	if err != nil {
		ln.Close()
		return "", "", "", nil, err
	}
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ch := make(chan struct{})
	go s.Run(ctx)
	go func() {
		defer close(ch)
		defer s.Close()
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "ballena dev: placement server:", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	return "http://" + ln.Addr().String(), adminPath, joinPath, ch, nil
}
