package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/launcher"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "run this machine's daemon: a peer in the mesh that seeds, fetches and runs artifacts",
		UsageText: "ballena node --data /var/lib/ballena --listen /ip4/0.0.0.0/tcp/7400 \\\n" +
			"    --bootstrap /ip4/10.0.0.1/tcp/7400/p2p/12D3KooW... --psk fleet.psk --auto-fetch 'api*'\n" +
			"ballena node psk generate fleet.psk",
		Description: "The node's identity is DATA/node.key (libp2p-marshalled ed25519, 0600); its peer ID\n" +
			"is the machine's name in the mesh. It prints its full addresses at start: give one of\n" +
			"them to other nodes' --bootstrap. Announcements and fetched releases are verified\n" +
			"against --trust (default DATA/trust.yaml; re-read on SIGHUP). SIGTERM stops it cleanly.",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "listen", Value: cli.NewStringSlice("/ip4/0.0.0.0/tcp/7400"),
				Usage: "libp2p listen multiaddr; repeatable (QUIC only without --psk)"},
			&cli.StringSliceFlag{Name: "bootstrap", Usage: "multiaddr with /p2p/PEERID of a node to join through; repeatable"},
			&cli.StringFlag{Name: "psk", Usage: "fleet pre-shared key file (libp2p private network): only holders can connect"},
			&cli.StringFlag{Name: "trust", Usage: "trust policy (YAML); default DATA/trust.yaml"},
			&cli.StringSliceFlag{Name: "auto-fetch", Usage: "fetch announced releases whose name (or name@version) matches this glob; repeatable"},
			&cli.StringFlag{Name: "upload-limit", Usage: "cap peer upload, e.g. 50MiB (per second); default unlimited"},
			&cli.StringFlag{Name: "download-limit", Usage: "cap peer download, e.g. 100MiB (per second); default unlimited"},
			&cli.StringFlag{Name: "bt-listen", Usage: "plain TCP BitTorrent listener for standard clients, e.g. 127.0.0.1:6881"},
			&cli.StringFlag{Name: "tracker-listen", Usage: "HTTP tracker for standard clients, e.g. 127.0.0.1:6880 (default with --bt-listen: its host, any port)"},
			&cli.BoolFlag{Name: "mdns", Usage: "also find nodes on the local link with mDNS"},
			cgroupParentFlag,
		}, agentFlags()...),
		Subcommands: []*cli.Command{pskCommand(), nodeDrainCommand()},
		Action: func(c *cli.Context) error {
			d, err := newDaemon(c)
			if err != nil {
				return err
			}
			return d.run(c.Context)
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

// daemon is one `ballena node` process: the store, the swarm node, the
// launcher and the local API that the CLI talks to. Later rooms (a placement
// client) hang off it too.
type daemon struct {
	data      string
	trustPath string
	trustSet  bool
	log       *slog.Logger
	st        *artifact.Store
	node      *swarm.Node
	launcher  *launcher.Launcher
	agent     *launcher.Agent // nil unless --server joins a placement service
	// beforeClose runs when the API has stopped serving, before the rooms close:
	// `ballena dev` stops its tasks there, while the launcher still runs.
	beforeClose func()
	mux         *http.ServeMux
	cancel      context.CancelFunc
}

// newDaemon checks the flags, opens the store and starts the swarm node and
// the launcher. Every bad flag is reported before anything starts.
func newDaemon(c *cli.Context) (_ *daemon, err error) {
	d := &daemon{data: c.String("data"), log: slog.Default(), mux: http.NewServeMux()}
	if c.NArg() > 0 {
		return nil, usageErrorf("node: unexpected argument %q (subcommands: psk, drain)", c.Args().First())
	}
	cfg := swarm.NodeConfig{
		DataDir:     d.data,
		Listen:      c.StringSlice("listen"),
		AutoFetch:   c.StringSlice("auto-fetch"),
		PlainListen: c.String("bt-listen"),
		MDNS:        c.Bool("mdns"),
		Logger:      d.log,
	}
	cfg.TrackerListen = c.String("tracker-listen")
	if cfg.TrackerListen != "" && cfg.PlainListen == "" {
		return nil, usageErrorf("node: --tracker-listen needs --bt-listen: the tracker hands out that address")
	}
	if cfg.TrackerListen == "" && cfg.PlainListen != "" {
		// Standard clients find the node through the tracker named in the exported .torrent.
		host, _, err := net.SplitHostPort(cfg.PlainListen)
		if err != nil {
			return nil, usageErrorf("node: --bt-listen %q: want HOST:PORT, e.g. 127.0.0.1:6881", cfg.PlainListen)
		}
		cfg.TrackerListen = net.JoinHostPort(host, "0")
	}
	if cfg.Bootstrap, err = swarm.ParseAddrInfos(c.StringSlice("bootstrap")); err != nil {
		return nil, usageErrorf("node: --bootstrap: %v", err)
	}
	if p := c.String("psk"); p != "" {
		if cfg.PSK, err = swarm.LoadPSK(p); err != nil {
			return nil, usageErrorf("node: --psk: %v", err)
		}
	}
	for flag, dst := range map[string]*int64{"upload-limit": &cfg.UploadLimit, "download-limit": &cfg.DownloadLimit} {
		if s := c.String(flag); s != "" {
			if *dst, err = parseBytes(strings.TrimSuffix(strings.TrimSuffix(s, "/s"), "ps")); err != nil {
				return nil, usageErrorf("node: --%s: %v", flag, err)
			}
		}
	}
	d.trustPath, d.trustSet = trustPath(c), c.IsSet("trust")
	if cfg.Policy, err = d.loadPolicy(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.data, 0o700); err != nil {
		return nil, fmt.Errorf("node: data dir: %w", err)
	}
	if d.st, err = artifact.Open(d.data); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	cfg.Store = d.st
	ctx, cancel := context.WithCancel(c.Context)
	d.cancel = cancel
	if d.node, err = swarm.NewNode(ctx, cfg); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	var onEvent func(launcher.Task)
	if err := d.newAgent(c); err != nil {
		return nil, err
	}
	if d.agent != nil {
		onEvent = d.agent.Observe
	}
	d.launcher, err = launcher.New(launcher.Config{
		OnEvent: onEvent,
		DataDir: d.data, DB: d.st.DB(), CgroupParent: c.String("cgroup-parent"), Logger: d.log,
		Verifier: &launcher.StoreVerifier{Store: d.st, PolicyPath: d.trustPath},
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	d.routes()
	return d, nil
}

// loadPolicy reads the trust policy. A missing default policy is allowed (the
// node then trusts nothing, and says so); a missing --trust is an error.
func (d *daemon) loadPolicy() (*signing.Policy, error) {
	pol, err := signing.LoadPolicy(d.trustPath)
	if errors.Is(err, os.ErrNotExist) && !d.trustSet {
		d.log.Warn("no trust policy: every announcement and fetch will be refused until one exists (then send SIGHUP)",
			"path", d.trustPath)
		return signing.PolicyForKeys(), nil
	}
	if err != nil {
		return nil, usageErrorf("node: --trust: %v", err)
	}
	return pol, nil
}

func (d *daemon) routes() {
	artifactRoutes(d.mux, d.st, artifactHooks{
		Published: func(ctx context.Context, rel artifact.Release, env *signing.Envelope) error {
			return d.node.Announce(ctx, rel, env)
		},
		Removed: func(digest string) {
			if err := d.node.Drop(digest); err != nil {
				d.log.Warn("stop seeding", "sha256", digest, "err", err)
			}
		},
		Collected: func() {
			// Staged executables and unpacked images of blobs no task uses.
			if dropped, err := d.launcher.Prune(); err != nil {
				d.log.Warn("prune launcher files", "err", err)
			} else if len(dropped) > 0 {
				d.log.Info("pruned launcher files", "digests", len(dropped))
			}
		},
	})
	swarmRoutes(d.mux, d.node, d.st)
	d.launcher.Routes(d.mux)
}

// run serves the local API until ctx ends (SIGTERM, SIGINT), then stops
// everything. SIGHUP re-reads the trust policy.
func (d *daemon) run(ctx context.Context) error {
	defer d.close()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if pol, err := d.loadPolicy(); err != nil {
					d.log.Error("trust policy not reloaded", "err", err)
				} else {
					d.node.SetPolicy(pol)
					d.log.Info("trust policy reloaded", "path", d.trustPath)
				}
			}
		}
	}()
	addrs := swarm.FullAddrs(d.node.Host())
	d.log.Info("node started", "id", d.node.ID(), "addrs", strings.Join(addrs, " "),
		"socket", localapi.SocketPath(d.data))
	// Also on stdout, one per line, for scripts and for other nodes' --bootstrap.
	fmt.Printf("node %s\n", d.node.ID())
	for _, a := range addrs {
		fmt.Printf("listening %s\n", a)
	}
	if a := d.node.Engine().PlainAddr(); a != nil {
		fmt.Printf("bittorrent %s\n", a)
	}
	if u := d.node.Engine().TrackerURL(); u != "" {
		fmt.Printf("tracker %s\n", u)
	}
	if d.agent != nil {
		go func() {
			if err := d.agent.Run(ctx, d.launcher); err != nil {
				d.log.Error("placement agent stopped", "err", err)
			}
		}()
	}
	err := localapi.Serve(ctx, d.data, d.mux)
	d.log.Info("node stopping")
	if d.beforeClose != nil {
		d.beforeClose()
	}
	return err
}

func (d *daemon) close() {
	if d.cancel != nil {
		d.cancel()
	}
	if d.launcher != nil {
		if err := d.launcher.Close(); err != nil {
			d.log.Warn("launcher close", "err", err)
		}
	}
	if d.node != nil {
		if err := d.node.Close(); err != nil {
			d.log.Warn("swarm close", "err", err)
		}
	}
	if d.st != nil {
		if err := d.st.Close(); err != nil {
			d.log.Warn("store close", "err", err)
		}
	}
}
