package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/urfave/cli/v2"

	"ballena.dev/internal/daemon"
	"ballena.dev/internal/procs"
	"ballena.dev/internal/timerslack"
	"ballena.dev/internal/units"
	"ballena.dev/launcher"
	"ballena.dev/swarm"
)

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "run this machine's daemon: a peer in the mesh that seeds, fetches and runs artifacts",
		UsageText: "ballena node --data /var/lib/ballena --listen /ip4/0.0.0.0/tcp/7400 \\\n" +
			"    --bootstrap /ip4/10.0.0.1/tcp/7400/p2p/12D3KooW... --psk fleet.psk --auto-fetch 'api*'\n" +
			"ballena node --data /var/lib/ballena --listen /ip4/0.0.0.0/tcp/7400 --psk fleet.psk --metrics-listen 127.0.0.1:9464\n" +
			"ballena node --data /var/lib/ballena --listen /ip4/0.0.0.0/tcp/7400 --bulk-listen 0.0.0.0:7401 --psk fleet.psk\n" +
			"ballena node --data /var/lib/ballena --psk fleet.psk --registry-listen 127.0.0.1:5000 --registry-map registry.example.com/team/=\n" +
			"ballena node psk generate fleet.psk",
		Description: "The node's identity is DATA/node.key (libp2p-marshalled ed25519, 0600); its peer ID\n" +
			"is the machine's name in the mesh. It prints its full addresses at start: give one of\n" +
			"them to other nodes' --bootstrap. Announcements and fetched releases are verified\n" +
			"against --trust (default DATA/trust.yaml; re-read on SIGHUP). SIGTERM stops it cleanly.\n" +
			"Listening beyond loopback needs --psk (or --open-mesh to accept an open mesh); --allow-peers\n" +
			"narrows the mesh to listed peer IDs. --bt-listen is outside the PSK: keep it on loopback\n" +
			"or a trusted network. --metrics-listen serves Prometheus metrics at /metrics over plain\n" +
			"HTTP, without auth: keep it on loopback or a trusted network. --registry-listen serves the\n" +
			"node's verified images to containerd and Docker (see `ballena registry config containerd`).",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "listen", Value: cli.NewStringSlice("/ip4/0.0.0.0/tcp/7400"),
				Usage: "libp2p listen multiaddr; repeatable (QUIC only without --psk)"},
			&cli.StringSliceFlag{Name: "bootstrap", Usage: "multiaddr with /p2p/PEERID of a node to join through; repeatable"},
			&cli.StringFlag{Name: "psk", Usage: "fleet pre-shared key file (libp2p private network): only holders can connect; needed to listen beyond loopback"},
			&cli.BoolFlag{Name: "open-mesh", Usage: "listen beyond loopback without --psk: anyone who can connect may list and download every release"},
			&cli.StringFlag{Name: "allow-peers", Usage: "file of peer IDs, one per line: connections with any other peer are refused both ways (re-read on SIGHUP)"},
			&cli.DurationFlag{Name: "partial-timeout", Value: swarm.DefaultPartialTimeout,
				Usage: "remove a partial download no fetch has wanted for this long (0: never); ballena gc removes them all at once"},
			&cli.StringFlag{Name: "trust", Usage: "trust policy (YAML); default DATA/trust.yaml"},
			&cli.StringSliceFlag{Name: "auto-fetch", Usage: "fetch announced releases whose name (or name@version) matches this glob; repeatable"},
			&cli.StringFlag{Name: "upload-limit", Usage: "cap peer upload, e.g. 50MiB (per second); default unlimited"},
			&cli.StringFlag{Name: "download-limit", Usage: "cap peer download, e.g. 100MiB (per second); default unlimited"},
			&cli.StringFlag{Name: "bt-listen", Usage: "plain TCP BitTorrent listener for standard clients, e.g. 127.0.0.1:6881"},
			&cli.StringFlag{Name: "tracker-listen", Usage: "HTTP tracker for standard clients, e.g. 127.0.0.1:6880 (default with --bt-listen: its host, any port)"},
			&cli.StringFlag{Name: "bulk-listen", Usage: "HOST:PORT where peers open bulk data connections (TLS with node identities, under --psk; " +
				"only from peers with a libp2p connection), e.g. 0.0.0.0:7401 for a firewall; default: the first --listen IP, any port; " +
				"'off': piece data in libp2p streams"},
			&cli.BoolFlag{Name: "mdns", Usage: "also find nodes on the local link with mDNS"},
			&cli.DurationFlag{Name: "timer-slack", Value: timerslack.Default,
				Usage: "how late Linux may wake the node's threads from timed sleeps, so wake-ups coalesce (less CPU per GiB moved); 0 keeps the kernel's (50µs)"},
			&cli.IntFlag{Name: "procs",
				Usage: "threads that run the node's Go code at once (GOMAXPROCS); 0: one per 256MiB/s of --upload-limit plus --download-limit when both are set, " +
					"else every core (the GOMAXPROCS environment variable, when set, decides instead)"},
			metricsListenFlag,
			cgroupParentFlag,
			&cli.StringFlag{Name: "subids", Usage: "START:COUNT host uids/gids that tasks' user namespaces map to, 65536 per task (default 1073741824:67108864)"},
			&cli.BoolFlag{Name: "no-userns", Usage: "run tasks without user namespaces (uid 0 in a task is then host uid 0, without capabilities)"},
		}, append(agentFlags(), registryFlags()...)...),
		Subcommands: []*cli.Command{pskCommand(), nodeDrainCommand()},
		Action: func(c *cli.Context) error {
			cfg, err := nodeConfig(c)
			if err != nil {
				return err
			}
			n := c.Int("procs")
			if n < 0 {
				return usageErrorf("node: --procs %d: want 0 (sized to the caps) or more", n)
			}
			switch d := c.Duration("timer-slack"); {
			case d < 0:
				return usageErrorf("node: --timer-slack %v: want a duration of 0 or more, e.g. 1ms", d)
			case d > 0:
				// Process-wide, so it is the command's to set, not the daemon's.
				// Tasks keep the slack the node was started with.
				if cfg.TaskTimerSlack, err = timerslack.Get(); err != nil {
					cfg.Logger.Warn("timer slack left alone", "err", err)
				} else if err := timerslack.Set(d); err != nil {
					cfg.Logger.Warn("timer slack not set; the node runs, with more CPU per GiB moved", "err", err)
				}
			}
			// Process-wide, like the timer slack.
			if n > 0 {
				runtime.GOMAXPROCS(n)
			} else {
				n = procs.Set(cfg.Swarm.UploadLimit, cfg.Swarm.DownloadLimit)
			}
			if n > 0 {
				cfg.Logger.Info("Go threads (GOMAXPROCS) set", "procs", n)
			}
			return runNode(c.Context, cfg)
		},
	}
}

func pskCommand() *cli.Command {
	return &cli.Command{
		Name:  "psk",
		Usage: "manage the fleet pre-shared key",
		Subcommands: []*cli.Command{{
			Name:      "generate",
			Usage:     "write a new fleet pre-shared key (0600); copy it to every node",
			ArgsUsage: "FILE",
			UsageText: "ballena node psk generate fleet.psk",
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageErrorf("psk generate: want one FILE, e.g. fleet.psk")
				}
				if err := swarm.GeneratePSK(c.Args().First()); err != nil {
					if errors.Is(err, os.ErrExist) {
						return usageErrorf("psk generate: %s exists; remove it first or pick another name", c.Args().First())
					}
					return err
				}
				fmt.Fprintf(c.App.Writer, "wrote %s\n", c.Args().First())
				return nil
			},
		}},
	}
}

// nodeConfig turns the node's flags into a daemon.Config. Every bad flag is
// reported here, before anything starts.
func nodeConfig(c *cli.Context) (daemon.Config, error) {
	cfg := daemon.Config{
		DataDir:       c.String("data"),
		TrustPath:     trustPath(c),
		TrustRequired: c.IsSet("trust"),
		CgroupParent:  c.String("cgroup-parent"),
		MetricsListen: c.String("metrics-listen"),
		Logger:        slog.Default(),
		Stdout:        c.App.Writer,
		SubIDs:        c.String("subids"),
		NoUserNS:      c.Bool("no-userns"),
	}
	if _, _, err := launcher.ParseSubIDs(cfg.SubIDs); err != nil {
		return cfg, usageErrorf("--subids: %v", err)
	}
	if c.NArg() > 0 {
		return cfg, usageErrorf("node: unexpected argument %q (subcommands: psk, drain)", c.Args().First())
	}
	sc := swarm.NodeConfig{
		Listen:        c.StringSlice("listen"),
		AutoFetch:     c.StringSlice("auto-fetch"),
		PlainListen:   c.String("bt-listen"),
		TrackerListen: c.String("tracker-listen"),
		MDNS:          c.Bool("mdns"),
		OpenMesh:      c.Bool("open-mesh"),
		AllowPeers:    c.String("allow-peers"),
		BulkListen:    c.String("bulk-listen"),
	}
	if sc.BulkListen != "" && sc.BulkListen != swarm.BulkOff {
		if _, _, err := net.SplitHostPort(sc.BulkListen); err != nil {
			return cfg, usageErrorf("node: --bulk-listen %q: want HOST:PORT, e.g. 0.0.0.0:7401, or off", sc.BulkListen)
		}
	}
	if sc.PartialTimeout = c.Duration("partial-timeout"); sc.PartialTimeout == 0 {
		sc.PartialTimeout = -1 // never
	}
	if sc.TrackerListen != "" && sc.PlainListen == "" {
		return cfg, usageErrorf("node: --tracker-listen needs --bt-listen: the tracker hands out that address")
	}
	if sc.TrackerListen == "" && sc.PlainListen != "" {
		// Standard clients find the node through the tracker named in the exported .torrent.
		host, _, err := net.SplitHostPort(sc.PlainListen)
		if err != nil {
			return cfg, usageErrorf("node: --bt-listen %q: want HOST:PORT, e.g. 127.0.0.1:6881", sc.PlainListen)
		}
		sc.TrackerListen = net.JoinHostPort(host, "0")
	}
	var err error
	if sc.Bootstrap, err = swarm.ParseAddrInfos(c.StringSlice("bootstrap")); err != nil {
		return cfg, usageErrorf("node: --bootstrap: %v", err)
	}
	if p := c.String("psk"); p != "" {
		if sc.PSK, err = swarm.LoadPSK(p); err != nil {
			return cfg, usageErrorf("node: --psk: %v", err)
		}
	}
	if c.IsSet("listen") || c.Command.Name == "node" {
		if err := swarm.CheckClosedMesh(sc.Listen, sc.PSK, sc.OpenMesh); err != nil {
			return cfg, usageErrorf("node: %v", err)
		}
	}
	if sc.AllowPeers != "" {
		if _, err := swarm.NewGate(sc.AllowPeers); err != nil {
			return cfg, usageErrorf("node: --%v", err)
		}
	}
	for flag, dst := range map[string]*int64{"upload-limit": &sc.UploadLimit, "download-limit": &sc.DownloadLimit} {
		if s := c.String(flag); s != "" {
			if *dst, err = units.ParseBytes(strings.TrimSuffix(strings.TrimSuffix(s, "/s"), "ps")); err != nil {
				return cfg, usageErrorf("node: --%s: %v", flag, err)
			}
		}
	}
	for _, l := range c.StringSlice("label") {
		if v, ok := strings.CutPrefix(l, "rack="); ok {
			sc.Rack = v // rack-aware peers (swarm/rackconn.go)
		}
	}
	cfg.Swarm = sc
	if err := registryConfig(c, &cfg); err != nil {
		return cfg, err
	}
	cfg.Placement, err = agentConfig(c)
	return cfg, err
}

// runNode runs the daemon that cfg describes until ctx ends.
func runNode(ctx context.Context, cfg daemon.Config) error {
	d, err := daemon.New(ctx, cfg)
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

// metricsListenFlag is --metrics-listen of node, server and dev.
var metricsListenFlag = &cli.StringFlag{Name: "metrics-listen",
	Usage: "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 (plain HTTP, no auth: loopback or a trusted network)"}
