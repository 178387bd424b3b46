// Package daemon is the node daemon, `ballena node`: one process per machine that
// holds the artifact store, runs the swarm node (mesh and BitTorrent engine), the
// launcher, the placement agent when the machine joins a cell, and the local API
// that the CLI on the same machine talks to. cmd/ballena turns flags into a Config;
// everything else about wiring the rooms together lives here.
//
// Files: daemon.go builds and runs a Daemon from a Config; agent.go joins it to a
// placement cell (the placement agent itself is launcher.Agent); api.go serves every
// route of the local API; errors.go classifies errors into the API's codes.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/launcher"
	"ballena.dev/registry"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// Config is everything a node daemon needs. The zero value of each optional
// field means "the default" or "off".
type Config struct {
	DataDir string // store, node identity, local API socket
	// TrustPath is the trust policy file; default DataDir/trust.yaml. With
	// TrustRequired a missing file is an error; otherwise the node starts trusting
	// nothing and says so (a SIGHUP reloads the policy once it exists).
	TrustPath     string
	TrustRequired bool

	// Swarm configures the mesh and the torrent engine. DataDir, Store, Policy and
	// Logger are filled in by New.
	Swarm swarm.NodeConfig

	CgroupParent string // cgroup (v1 or v2 path) under which tasks run
	// SubIDs is the subordinate range of host uids and gids that tasks' user
	// namespaces map to, "START:COUNT" (65536 per running task); empty means
	// the launcher's default, 1073741824:67108864.
	SubIDs string
	// TaskTimerSlack, when set, is the timer slack tasks start with
	// (launcher.Config.TaskTimerSlack): the node's own, when it widens it.
	TaskTimerSlack time.Duration
	// NoUserNS runs tasks without user namespaces (uid 0 in a task is then
	// uid 0 on the host, without capabilities); `ballena status` says so.
	NoUserNS bool

	// MetricsListen, when set, serves the node's metrics (swarm, launcher, Go
	// runtime, process) in the Prometheus text format at http://ADDR/metrics.
	MetricsListen string
	// Metrics is the registry the node's metrics go in; default a new one
	// (NewRegistry). `ballena dev` passes the one its server registers in too.
	Metrics   *prometheus.Registry
	Placement *AgentConfig // nil: the machine runs only what is started by hand

	// RegistryListen, when set, serves the verified images the node holds (or
	// fetches from the mesh on demand) as a read-only OCI registry at
	// http://ADDR/v2/, for containerd, Docker and Kubernetes (package registry).
	RegistryListen string
	// RegistryMap maps upstream references to release names for mirror requests.
	RegistryMap []registry.Mapping

	Logger *slog.Logger
	Stdout io.Writer // the node's addresses, one per line, for scripts; default os.Stdout
	// BeforeClose runs once the local API has stopped serving and before the rooms
	// close: `ballena dev` stops its tasks there, while the launcher still runs.
	BeforeClose func(*Daemon)
}

// Daemon is a running node.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	st       *artifact.Store
	node     *swarm.Node
	launcher *launcher.Launcher
	agent    *launcher.Agent // nil unless the machine joins a cell
	mux      *http.ServeMux
	cancel   context.CancelFunc
	// metricsURL is where the metrics are served; "" without MetricsListen.
	metricsURL string
	// policy is the trust policy in force (swapped on SIGHUP), for the registry.
	policy atomic.Pointer[signing.Policy]
	// registryURL is where the OCI registry answers; "" without RegistryListen.
	registryURL  string
	registryDone chan struct{} // closed when the registry stopped serving
}

// New checks cfg, opens the store and starts the swarm node and the launcher. A
// bad config is reported before anything starts. The node runs until ctx ends or
// Close is called; Run serves its local API.
func New(ctx context.Context, cfg Config) (_ *Daemon, err error) {
	if cfg.DataDir == "" {
		return nil, usageErrorf("node: no data dir")
	}
	if cfg.TrustPath == "" {
		cfg.TrustPath = filepath.Join(cfg.DataDir, "trust.yaml")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Placement != nil && (cfg.Placement.Server == "" || cfg.Placement.JoinToken == "") {
		return nil, usageErrorf("node: joining a cell needs --server and --join-token-file (the cell's join token)")
	}
	idStart, idCount, err := launcher.ParseSubIDs(cfg.SubIDs)
	if err != nil {
		return nil, usageErrorf("node: --subids: %v", err)
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	sc := cfg.Swarm
	sc.DataDir, sc.Logger = cfg.DataDir, cfg.Logger
	if sc.Policy, err = d.loadPolicy(); err != nil {
		return nil, err
	}
	d.policy.Store(sc.Policy)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("node: data dir: %w", err)
	}
	if d.st, err = artifact.Open(cfg.DataDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	sc.Store = d.st
	ctx, d.cancel = context.WithCancel(ctx)
	var metricsLn net.Listener
	if cfg.MetricsListen != "" {
		if metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return nil, fmt.Errorf("node: metrics listen: %w", err)
		}
		defer func() {
			if err != nil {
				metricsLn.Close()
			}
		}()
		if cfg.Metrics == nil {
			cfg.Metrics = NewRegistry()
		}
	}
	sc.Metrics = registerer(cfg.Metrics)
	if d.node, err = swarm.NewNode(ctx, sc); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	var onEvent func(launcher.Task)
	if cfg.Placement != nil {
		if d.agent, err = d.newAgent(*cfg.Placement); err != nil {
			return nil, err
		}
		onEvent = d.agent.Observe
	}
	d.launcher, err = launcher.New(launcher.Config{
		OnEvent: onEvent,
		DataDir: cfg.DataDir, DB: d.st.DB(), CgroupParent: cfg.CgroupParent, Logger: d.log,
		Verifier:     &launcher.StoreVerifier{Store: d.st, PolicyPath: cfg.TrustPath},
		Metrics:      registerer(cfg.Metrics),
		IDRangeStart: idStart, IDRangeCount: idCount, NoUserNS: cfg.NoUserNS,
		TaskTimerSlack: cfg.TaskTimerSlack,
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if metricsLn != nil {
		ServeMetrics(ctx, metricsLn, cfg.Metrics)
		d.metricsURL = "http://" + metricsLn.Addr().String() + "/metrics"
	}
	if cfg.RegistryListen != "" {
		if err := d.startRegistry(ctx, cfg.Metrics); err != nil {
			return nil, err
		}
	}
	d.routes()
	return d, nil
}

// ID is the node's peer ID, its name in the mesh and in the cell.
func (d *Daemon) ID() string { return d.node.ID().String() }

// MetricsURL is where the node serves its metrics, "" if it does not.
func (d *Daemon) MetricsURL() string { return d.metricsURL }

// Launcher is the node's launcher.
func (d *Daemon) Launcher() *launcher.Launcher { return d.launcher }

// Logger is the node's logger.
func (d *Daemon) Logger() *slog.Logger { return d.log }

// loadPolicy reads the trust policy. A missing default policy is allowed (the
// node then trusts nothing, and says so); a missing required one is an error.
func (d *Daemon) loadPolicy() (*signing.Policy, error) {
	pol, err := signing.LoadPolicy(d.cfg.TrustPath)
	if errors.Is(err, os.ErrNotExist) && !d.cfg.TrustRequired {
		d.log.Warn("no trust policy: every announcement and fetch will be refused until one exists (then send SIGHUP)",
			"path", d.cfg.TrustPath)
		return signing.PolicyForKeys(), nil
	}
	if err != nil {
		return nil, usageErrorf("node: --trust: %v", err)
	}
	return pol, nil
}

// Run serves the local API until ctx ends (SIGTERM, SIGINT), then stops
// everything. SIGHUP re-reads the trust policy and the allowlist.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.Close()
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
					d.policy.Store(pol)
					d.log.Info("trust policy reloaded", "path", d.cfg.TrustPath)
				}
				if d.cfg.Swarm.AllowPeers != "" {
					if err := d.node.ReloadAllowlist(); err != nil {
						d.log.Error("allowlist not reloaded; the old one stays", "err", err)
					} else {
						d.log.Info("allowlist reloaded", "path", d.cfg.Swarm.AllowPeers)
					}
				}
			}
		}
	}()
	addrs := swarm.FullAddrs(d.node.Host())
	d.log.Info("node started", "id", d.node.ID(), "addrs", strings.Join(addrs, " "),
		"socket", localapi.SocketPath(d.cfg.DataDir))
	// Also on stdout, one per line, for scripts and for other nodes' --bootstrap.
	out := d.cfg.Stdout
	fmt.Fprintf(out, "node %s\n", d.node.ID())
	for _, a := range addrs {
		fmt.Fprintf(out, "listening %s\n", a)
	}
	if a := d.node.Engine().PlainAddr(); a != nil {
		fmt.Fprintf(out, "bittorrent %s\n", a)
	}
	if u := d.node.Engine().TrackerURL(); u != "" {
		fmt.Fprintf(out, "tracker %s\n", u)
	}
	if d.metricsURL != "" {
		fmt.Fprintf(out, "metrics %s\n", d.metricsURL)
	}
	if d.registryURL != "" {
		fmt.Fprintf(out, "registry %s\n", d.registryURL)
	}
	if d.agent != nil {
		go func() {
			if err := d.agent.Run(ctx, d.launcher); err != nil {
				d.log.Error("placement agent stopped", "err", err)
			}
		}()
	}
	err := localapi.Serve(ctx, d.cfg.DataDir, d.mux)
	d.log.Info("node stopping")
	if d.cfg.BeforeClose != nil {
		d.cfg.BeforeClose(d)
	}
	return err
}

// Close stops the rooms in reverse order of their start. Run calls it.
func (d *Daemon) Close() {
	if d.cancel != nil {
		d.cancel()
	}
	if d.registryDone != nil {
		<-d.registryDone // no request reads the store once it closes
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

// registerer is reg as a Registerer, nil (no metrics) when reg is.
func registerer(reg *prometheus.Registry) prometheus.Registerer {
	if reg == nil {
		return nil
	}
	return reg
}
