package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// NodeConfig configures a Node.
type NodeConfig struct {
	// DataDir holds node.key (see KeyFile) and the engine's state under torrent/.
	DataDir   string
	Listen    []string        // libp2p multiaddrs; default /ip4/0.0.0.0/tcp/0 (needs PSK or OpenMesh)
	Bootstrap []peer.AddrInfo // peers to join the mesh through
	PSK       pnet.PSK        // fleet private network key, nil for none
	// OpenMesh accepts listening beyond loopback without a PSK; without it
	// NewNode refuses (see CheckClosedMesh).
	OpenMesh bool
	// AllowPeers is an allowlist file, one peer ID per line: connections with
	// any other peer are refused in both directions. "" allows every peer.
	// ReloadAllowlist re-reads it.
	AllowPeers string
	// PartialTimeout removes a partial download that no fetch wants once it has
	// been left alone this long; 0 means DefaultPartialTimeout, <0 never.
	PartialTimeout time.Duration
	MDNS           bool            // find peers on the local link too
	Store          *artifact.Store // where blobs and signed releases live
	Policy         *signing.Policy // what this node trusts; nil trusts nothing
	// AutoFetch globs, matched against a release's name and its name@version:
	// matching announced releases are fetched at once.
	AutoFetch []string
	// AutoFetchTimeout bounds an automatic fetch, its retries included;
	// default 10 minutes.
	AutoFetchTimeout time.Duration

	UploadLimit, DownloadLimit int64  // bytes per second, 0 unlimited
	Rack                       string // the machine's rack label: prefer same-rack peers
	PlainListen, TrackerListen string // for standard BitTorrent clients; "" disables
	// BulkListen is where peers' bulk connections come in (see
	// EngineConfig.BulkListen): "" beside the libp2p listener, BulkOff none.
	BulkListen   string
	StallTimeout time.Duration
	Logger       *slog.Logger
	Now          func() time.Time // for tests; default time.Now
	// Metrics, when set, is where the node registers its metrics (see
	// metrics.go); the node daemon serves them.
	Metrics prometheus.Registerer
}

// Node is one machine in the mesh: a libp2p host with the DHT, release gossip,
// the release lookup protocol and the BitTorrent engine, over one artifact store.
type Node struct {
	cfg    NodeConfig
	log    *slog.Logger
	h      host.Host
	gate   *Gate
	disc   *Discovery
	gossip *Gossip
	engine *Engine
	st     *artifact.Store
	mdns   io.Closer
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	policy   *signing.Policy
	known    map[artifact.Ref]knownRelease // verified announcements and lookups
	holders  map[string]map[peer.ID]bool   // digest -> nodes that announced or hold it
	jobs     map[string]*fetchJob          // running fetches by digest
	autos    map[string]bool               // digests being auto-fetched, retries included
	provided map[string]bool               // digests this node advertises
	newInfo  chan struct{}                 // closed and replaced when known or holders change

	lists *perPeerClock // list requests answered, per peer
	asks  *perPeerClock // catch-ups asked, per peer
}

// NewNode starts a node: identity from DataDir, host, DHT, gossip, lookup and
// engine; it seeds and advertises every blob the store holds a release for.
func NewNode(ctx context.Context, cfg NodeConfig) (_ *Node, err error) {
	if cfg.Store == nil {
		return nil, errors.New("swarm node: no store")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PartialTimeout == 0 {
		cfg.PartialTimeout = DefaultPartialTimeout
	}
	if cfg.AutoFetchTimeout == 0 {
		cfg.AutoFetchTimeout = 10 * time.Minute
	}
	for _, g := range cfg.AutoFetch {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("auto-fetch glob %q: %w", g, err)
		}
	}
	pol := cfg.Policy
	if pol == nil {
		pol = signing.PolicyForKeys()
	}
	if err := CheckClosedMesh(cfg.Listen, cfg.PSK, cfg.OpenMesh); err != nil {
		return nil, err
	}
	gate, err := NewGate(cfg.AllowPeers)
	if err != nil {
		return nil, err
	}
	key, err := LoadIdentity(filepath.Join(cfg.DataDir, KeyFile))
	if err != nil {
		return nil, err
	}
	h, err := NewHost(HostConfig{Key: key, Listen: cfg.Listen, PSK: cfg.PSK, Gate: gate, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	n := &Node{
		cfg: cfg, log: cfg.Logger, h: h, gate: gate, st: cfg.Store, ctx: ctx, cancel: cancel,
		policy:   pol,
		known:    make(map[artifact.Ref]knownRelease),
		holders:  make(map[string]map[peer.ID]bool),
		jobs:     make(map[string]*fetchJob),
		autos:    make(map[string]bool),
		provided: make(map[string]bool),
		newInfo:  make(chan struct{}),
		lists:    newPerPeerClock(listInterval),
		asks:     newPerPeerClock(listInterval),
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if n.disc, err = NewDiscovery(h, cfg.Bootstrap, n.log); err != nil {
		return nil, err
	}
	n.engine, err = NewEngine(ctx, EngineConfig{
		DataDir:        filepath.Join(cfg.DataDir, "torrent"),
		Host:           h,
		PlainListen:    cfg.PlainListen,
		TrackerListen:  cfg.TrackerListen,
		UploadLimit:    cfg.UploadLimit,
		Rack:           cfg.Rack,
		BulkListen:     cfg.BulkListen,
		PSK:            cfg.PSK,
		Gate:           gate,
		DownloadLimit:  cfg.DownloadLimit,
		StallTimeout:   cfg.StallTimeout,
		PartialTimeout: max(cfg.PartialTimeout, 0),
		Store:          cfg.Store,
		Logger:         n.log,
	})
	if err != nil {
		return nil, err
	}
	if n.gossip, err = NewGossip(ctx, h, n.verify, n.announced, n.log); err != nil {
		return nil, err
	}
	serveLookup(h, n.answerLookup, n.answerList, n.lists, n.log)
	serveHold(ctx, h, n.st, n.log)
	if len(cfg.AutoFetch) > 0 {
		if err := n.watchPeers(); err != nil {
			return nil, err
		}
	}
	if cfg.MDNS {
		if n.mdns, err = StartMDNS(ctx, h, n.log); err != nil {
			return nil, err
		}
	}
	if err := n.seedHeld(ctx); err != nil {
		return nil, err
	}
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(nodeCollector{n}); err != nil {
			return nil, fmt.Errorf("swarm node: metrics: %w", err)
		}
	}
	n.wg.Go(n.keepConnected)
	n.wg.Go(n.reprovide)
	return n, nil
}

// Host is the node's libp2p host.
func (n *Node) Host() host.Host { return n.h }

// ID is the node's peer ID, its name in the mesh.
func (n *Node) ID() peer.ID { return n.h.ID() }

// Engine is the node's BitTorrent engine.
func (n *Node) Engine() *Engine { return n.engine }

// Gossip is the node's release gossip.
func (n *Node) Gossip() *Gossip { return n.gossip }

// Discovery is the node's DHT.
func (n *Node) Discovery() *Discovery { return n.disc }

// SetPolicy replaces the trust policy, for instance after trust.yaml changed.
func (n *Node) SetPolicy(p *signing.Policy) {
	if p == nil {
		p = signing.PolicyForKeys()
	}
	n.mu.Lock()
	n.policy = p
	n.mu.Unlock()
}

func (n *Node) verify(env *signing.Envelope) (artifact.Release, error) {
	n.mu.Lock()
	pol := n.policy
	n.mu.Unlock()
	rel, _, err := artifact.VerifyEnvelope(env, pol, n.cfg.Now())
	return rel, err
}

// keepConnected dials the bootstrap peers until the node has a peer, and again
// whenever it loses them all, then refreshes the DHT.
func (n *Node) keepConnected() {
	if len(n.cfg.Bootstrap) == 0 {
		return
	}
	wait := time.Duration(0)
	warned := false
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = 5 * time.Second
		if len(n.h.Network().Peers()) > 0 {
			continue
		}
		ok, err := ConnectAll(n.ctx, n.h, n.cfg.Bootstrap)
		if ok == 0 {
			if !warned {
				n.log.Warn("no bootstrap peer reachable yet; retrying every 5s", "err", err)
				warned = true
			} else {
				n.log.Debug("no bootstrap peer reachable yet", "err", err)
			}
			continue
		}
		warned = false
		if err != nil {
			n.log.Debug("some bootstrap peers unreachable", "err", err)
		}
		n.log.Info("joined the mesh", "bootstrap_peers", ok)
		if err := n.disc.Bootstrap(n.ctx); err != nil {
			n.log.Warn("dht bootstrap", "err", err)
		}
	}
}

// ReloadAllowlist re-reads the allowlist file (SIGHUP) and closes the
// connections of peers no longer on it. On error the old list stays.
func (n *Node) ReloadAllowlist() error {
	if err := n.gate.Reload(); err != nil {
		return err
	}
	allowed := n.gate.Allowed()
	if allowed == nil {
		return nil
	}
	for _, p := range n.h.Network().Peers() {
		if !slices.Contains(allowed, p) {
			n.log.Info("closing connection to a peer no longer on the allowlist", "peer", p)
			_ = n.h.Network().ClosePeer(p)
		}
	}
	return nil
}

// RemovePartials removes every partial download no fetch is running for
// (`ballena gc`), and returns their digests.
func (n *Node) RemovePartials() ([]string, error) { return n.engine.RemovePartials(0) }

// Drop stops seeding digest and fetching it; the garbage collector calls it for
// every blob it removes. The DHT record lapses on its own.
func (n *Node) Drop(digest string) error {
	n.mu.Lock()
	delete(n.provided, digest)
	j := n.jobs[digest]
	n.mu.Unlock()
	if j != nil {
		j.cancel()
	}
	return n.engine.Drop(digest)
}

// Close stops the node: engine, gossip, DHT and host. Verified pieces of
// unfinished downloads stay for a resume.
func (n *Node) Close() error {
	n.cancel()
	var errs []error
	if n.mdns != nil {
		errs = append(errs, n.mdns.Close())
	}
	if n.gossip != nil {
		errs = append(errs, n.gossip.Close())
	}
	if n.engine != nil {
		errs = append(errs, n.engine.Close())
	}
	n.wg.Wait()
	if n.disc != nil {
		errs = append(errs, n.disc.Close())
	}
	errs = append(errs, n.h.Close())
	return errors.Join(errs...)
}
