package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/pnet"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// ErrNobodyHas means no node in reach knows the release or holds its blob. It
// wraps artifact.ErrNotFound.
var ErrNobodyHas = fmt.Errorf("nobody has it: %w", artifact.ErrNotFound)

// NodeConfig configures a Node.
type NodeConfig struct {
	// DataDir holds node.key (see KeyFile) and the engine's state under torrent/.
	DataDir   string
	Listen    []string        // libp2p multiaddrs; default /ip4/0.0.0.0/tcp/0
	Bootstrap []peer.AddrInfo // peers to join the mesh through
	PSK       pnet.PSK        // fleet private network key, nil for none
	MDNS      bool            // find peers on the local link too
	Store     *artifact.Store // where blobs and signed releases live
	Policy    *signing.Policy // what this node trusts; nil trusts nothing
	// AutoFetch globs, matched against a release's name and its name@version:
	// matching announced releases are fetched at once.
	AutoFetch []string
	// AutoFetchTimeout bounds an automatic fetch; default 10 minutes.
	AutoFetchTimeout time.Duration

	UploadLimit, DownloadLimit int64  // bytes per second, 0 unlimited
	PlainListen, TrackerListen string // for standard BitTorrent clients; "" disables
	StallTimeout               time.Duration
	Logger                     *slog.Logger
	Now                        func() time.Time // for tests; default time.Now
}

// Node is one machine in the mesh: a libp2p host with the DHT, release gossip,
// the release lookup protocol and the BitTorrent engine, over one artifact store.
type Node struct {
	cfg    NodeConfig
	log    *slog.Logger
	h      host.Host
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
	provided map[string]bool               // digests this node advertises
	newInfo  chan struct{}                 // closed and replaced when known or holders change
}

type knownRelease struct {
	rel artifact.Release
	env *signing.Envelope
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
	key, err := LoadIdentity(filepath.Join(cfg.DataDir, KeyFile))
	if err != nil {
		return nil, err
	}
	h, err := NewHost(HostConfig{Key: key, Listen: cfg.Listen, PSK: cfg.PSK, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	n := &Node{
		cfg: cfg, log: cfg.Logger, h: h, st: cfg.Store, ctx: ctx, cancel: cancel,
		policy:   pol,
		known:    make(map[artifact.Ref]knownRelease),
		holders:  make(map[string]map[peer.ID]bool),
		jobs:     make(map[string]*fetchJob),
		provided: make(map[string]bool),
		newInfo:  make(chan struct{}),
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
		DataDir:       filepath.Join(cfg.DataDir, "torrent"),
		Host:          h,
		PlainListen:   cfg.PlainListen,
		TrackerListen: cfg.TrackerListen,
		UploadLimit:   cfg.UploadLimit,
		DownloadLimit: cfg.DownloadLimit,
		StallTimeout:  cfg.StallTimeout,
		Store:         cfg.Store,
		Logger:        n.log,
	})
	if err != nil {
		return nil, err
	}
	if n.gossip, err = NewGossip(ctx, h, n.verify, n.announced, n.log); err != nil {
		return nil, err
	}
	ServeLookup(h, n.resolve, n.listKnown, n.log)
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

// seedHeld seeds every stored release whose blob is here and advertises it.
func (n *Node) seedHeld(ctx context.Context) error {
	rels, err := n.st.Releases()
	if err != nil {
		return fmt.Errorf("swarm node: %w", err)
	}
	seen := make(map[string]bool)
	for _, rel := range rels {
		if seen[rel.Digest] || !n.st.HasBlob(rel.Digest) {
			continue
		}
		seen[rel.Digest] = true
		if err := n.engine.Seed(ctx, rel); err != nil {
			n.log.Warn("cannot seed", "release", rel.Ref(), "err", err)
			continue
		}
		n.advertise(rel.Digest)
	}
	return nil
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

// reprovide renews the DHT records of what this node holds before they expire.
func (n *Node) reprovide() {
	t := time.NewTicker(reprovideInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		var ds []string
		for d := range n.provided {
			ds = append(ds, d)
		}
		n.mu.Unlock()
		for _, d := range ds {
			n.provide(d)
		}
	}
}

// advertise marks digest as provided by this node and publishes a DHT record in
// the background.
func (n *Node) advertise(digest string) {
	n.mu.Lock()
	already := n.provided[digest]
	n.provided[digest] = true
	n.mu.Unlock()
	if !already {
		n.wg.Go(func() { n.provide(digest) })
	}
}

func (n *Node) provide(digest string) {
	ctx, cancel := context.WithTimeout(n.ctx, time.Minute)
	defer cancel()
	// A provide before the routing table has peers only records us locally:
	// wait for the mesh, it is what makes the record findable.
	if err := n.disc.WaitReady(ctx); err != nil {
		n.log.Debug("dht provide postponed", "sha256", short(digest), "err", err)
	}
	if err := n.disc.Provide(ctx, digest); err != nil && n.ctx.Err() == nil {
		n.log.Warn("dht provide", "sha256", short(digest), "err", err)
		return
	}
	n.log.Debug("advertised", "sha256", short(digest))
}

// notify wakes everyone waiting for news about releases or holders. Callers hold n.mu.
func (n *Node) notifyLocked() {
	close(n.newInfo)
	n.newInfo = make(chan struct{})
}

// announced handles a verified announcement from origin.
func (n *Node) announced(origin peer.ID, rel artifact.Release, env *signing.Envelope) {
	n.learn(origin, rel, env)
	n.maybeAutoFetch(rel)
}

// learn caches a verified release and, when holder is not empty, a node that holds it.
func (n *Node) learn(holder peer.ID, rel artifact.Release, env *signing.Envelope) {
	n.mu.Lock()
	n.known[rel.Ref()] = knownRelease{rel, env}
	n.addHolderLocked(rel.Digest, holder)
	job := n.jobs[rel.Digest]
	n.notifyLocked()
	n.mu.Unlock()
	if job != nil && holder != "" {
		job.addSource(n, holder, nil)
	}
}

func (n *Node) maybeAutoFetch(rel artifact.Release) {
	if !n.autoFetches(rel) || n.st.HasBlob(rel.Digest) {
		return
	}
	n.wg.Go(func() {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AutoFetchTimeout)
		defer cancel()
		n.log.Info("auto-fetching", "release", rel.Ref())
		if _, err := n.Fetch(ctx, rel.Ref(), nil); err != nil {
			n.log.Warn("auto-fetch failed", "release", rel.Ref(), "err", err)
		}
	})
}

func (n *Node) addHolderLocked(digest string, p peer.ID) {
	if p == n.h.ID() || p == "" {
		return
	}
	s := n.holders[digest]
	if s == nil {
		s = make(map[peer.ID]bool)
		n.holders[digest] = s
	}
	s[p] = true
}

func (n *Node) autoFetches(rel artifact.Release) bool {
	for _, g := range n.cfg.AutoFetch {
		if ok, _ := path.Match(g, rel.Name); ok {
			return true
		}
		if ok, _ := path.Match(g, rel.Ref().String()); ok {
			return true
		}
	}
	return false
}

// resolve answers the lookup protocol from the store and the verified cache.
func (n *Node) resolve(ref artifact.Ref) (artifact.Release, *signing.Envelope, bool, bool) {
	if rel, env, err := n.st.Release(ref); err == nil {
		return rel, env, n.st.HasBlob(rel.Digest) || n.fetching(rel.Digest), true
	}
	n.mu.Lock()
	k, ok := n.known[ref]
	n.mu.Unlock()
	if !ok {
		return artifact.Release{}, nil, false, false
	}
	return k.rel, k.env, n.fetching(k.rel.Digest), true
}

func (n *Node) fetching(digest string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	j := n.jobs[digest]
	return j != nil && j.sources.Load() > 0
}

// listKnown answers list requests: releases held here, then verified
// announcements heard.
func (n *Node) listKnown() []knownAnswer {
	var out []knownAnswer
	seen := make(map[artifact.Ref]bool)
	if rels, err := n.st.Releases(); err == nil {
		for _, r := range rels {
			if _, env, err := n.st.Release(r.Ref()); err == nil && n.st.HasBlob(r.Digest) {
				out = append(out, knownAnswer{Release: r, Envelope: env, Have: true})
				seen[r.Ref()] = true
			}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for ref, k := range n.known {
		if !seen[ref] {
			out = append(out, knownAnswer{Release: k.rel, Envelope: k.env})
		}
	}
	return out
}

// watchPeers catches up on announcements missed while a peer was out of
// reach: each newly connected peer is asked what it knows, and every entry
// goes through the same checks as a gossiped announcement.
func (n *Node) watchPeers() error {
	sub, err := n.h.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		return fmt.Errorf("swarm node: %w", err)
	}
	// The DHT may have dialled the bootstrap peers already.
	for _, p := range n.h.Network().Peers() {
		n.wg.Go(func() { n.catchUp(p) })
	}
	n.wg.Go(func() {
		defer sub.Close()
		for {
			select {
			case <-n.ctx.Done():
				return
			case e, ok := <-sub.Out():
				if !ok {
					return
				}
				ev := e.(event.EvtPeerConnectednessChanged)
				if ev.Connectedness == network.Connected {
					n.wg.Go(func() { n.catchUp(ev.Peer) })
				}
			}
		}
	})
	return nil
}

func (n *Node) catchUp(p peer.ID) {
	// The peer may not speak the lookup protocol (yet): identify runs first.
	list, err := listKnown(n.ctx, n.h, p)
	if err != nil {
		n.log.Debug("catch-up", "peer", p, "err", err)
		return
	}
	// Learn everything; auto-fetch only the newest version of each name, as a
	// node that had been listening all along would hold it.
	newest := make(map[string]artifact.Release)
	for _, k := range list {
		b, err := json.Marshal(Announcement{Release: k.Release, Envelope: k.Envelope})
		if err != nil {
			continue
		}
		rel, env, err := checkAnnouncement(b, n.verify)
		if err != nil {
			n.log.Debug("catch-up: dropped", "peer", p, "release", k.Release.Ref(), "err", err)
			continue
		}
		holder := peer.ID("")
		if k.Have {
			holder = p
		}
		n.learn(holder, rel, env)
		if cur, ok := newest[rel.Name]; !ok || signing.CompareVersions(rel.Version, cur.Version) > 0 {
			newest[rel.Name] = rel
		}
	}
	for _, rel := range newest {
		n.maybeAutoFetch(rel)
	}
}

// Announce makes a release stored here available to the fleet: it seeds the
// blob, advertises it on the DHT and announces the signed release on gossip.
func (n *Node) Announce(ctx context.Context, rel artifact.Release, env *signing.Envelope) error {
	if err := n.engine.Seed(ctx, rel); err != nil {
		return fmt.Errorf("announce %s: %w", rel.Ref(), err)
	}
	n.mu.Lock()
	n.known[rel.Ref()] = knownRelease{rel, env}
	n.notifyLocked()
	n.mu.Unlock()
	n.advertise(rel.Digest)
	return n.gossip.Announce(ctx, rel, env)
}

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

// Fetch finds the signed release ref in the mesh, verifies it against the
// trust policy, downloads its blob from every holder it finds, stores both and
// seeds the blob. It returns at once if the store already holds it. When ctx
// ends before anyone was found to hold the blob, it removes every trace of the
// attempt and returns an error wrapping ErrNobodyHas; a refusal by the trust
// policy wraps the signing error.
func (n *Node) Fetch(ctx context.Context, ref artifact.Ref, progress func(Progress)) (artifact.Release, error) {
	if rel, env, err := n.st.Release(ref); err == nil && n.st.HasBlob(rel.Digest) {
		// Held already; the policy may have changed since it was fetched.
		if _, err := n.verify(env); err != nil {
			return artifact.Release{}, fmt.Errorf("fetch %s: held here, but: %w", ref, err)
		}
		if err := n.engine.Seed(ctx, rel); err != nil {
			n.log.Warn("cannot seed", "release", ref, "err", err)
		}
		n.advertise(rel.Digest)
		return rel, nil
	}
	rel, env, holders, err := n.find(ctx, ref)
	if err != nil {
		return artifact.Release{}, fmt.Errorf("fetch %s: %w", ref, err)
	}
	j := n.startJob(rel, env)
	for _, p := range holders {
		j.addSource(n, p, nil)
	}
	// The engine starts only once someone offers the blob, so a fetch of what
	// nobody holds leaves nothing behind: no staged files, no DHT record.
	select {
	case <-j.sourced:
	case <-j.done:
	case <-ctx.Done():
		if j.sources.Load() == 0 {
			j.cancel()
			<-j.done
			return artifact.Release{}, fmt.Errorf("fetch %s: no node in reach holds sha256 %s: %w", ref, short(rel.Digest), ErrNobodyHas)
		}
	}
	err = ctx.Err()
	if err == nil {
		err = n.engine.Download(ctx, rel, progress)
	}
	if err == nil {
		select {
		case <-j.done:
			err = j.err
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err == nil {
		return rel, nil
	}
	if ctx.Err() != nil {
		return artifact.Release{}, fmt.Errorf("fetch %s: gave up waiting with %d holders known (the transfer goes on in the background): %w",
			ref, j.sources.Load(), ErrUnavailable)
	}
	return artifact.Release{}, fmt.Errorf("fetch %s: %w", ref, err)
}

// find resolves ref to a verified signed release: from the store, from
// announcements, or by asking connected peers, until ctx ends. It also returns
// the peers known to hold the blob.
func (n *Node) find(ctx context.Context, ref artifact.Ref) (artifact.Release, *signing.Envelope, []peer.ID, error) {
	var refusal error
	for {
		n.mu.Lock()
		wake := n.newInfo
		k, ok := n.known[ref]
		n.mu.Unlock()
		if !ok {
			if rel, env, err := n.st.Release(ref); err == nil {
				k, ok = knownRelease{rel, env}, true
			}
		}
		if ok {
			rel, err := n.verify(k.env)
			if err == nil && rel.Ref() == ref {
				return rel, k.env, n.holdersOf(rel.Digest), nil
			}
			if err == nil {
				err = fmt.Errorf("the envelope signs %s: %w", rel.Ref(), signing.ErrSubjectMismatch)
			}
			refusal = err
		}
		rel, env, holders, err := n.ask(ctx, ref)
		if err == nil {
			n.mu.Lock()
			n.known[ref] = knownRelease{rel, env}
			for _, p := range holders {
				n.addHolderLocked(rel.Digest, p)
			}
			n.mu.Unlock()
			return rel, env, n.holdersOf(rel.Digest), nil
		}
		if signing.IsVerification(err) {
			refusal = err
		}
		if refusal != nil {
			// Someone has it, but this node must not trust it: waiting will not help.
			return artifact.Release{}, nil, nil, refusal
		}
		select {
		case <-ctx.Done():
			return artifact.Release{}, nil, nil, fmt.Errorf("no node in reach knows this release (%d peers connected): %w",
				len(n.h.Network().Peers()), ErrNobodyHas)
		case <-wake:
		case <-time.After(time.Second):
		}
	}
}

// ask queries every connected peer for ref and returns the first answer that
// verifies, with the peers that said they hold the blob.
func (n *Node) ask(ctx context.Context, ref artifact.Ref) (artifact.Release, *signing.Envelope, []peer.ID, error) {
	peers := n.h.Network().Peers()
	type result struct {
		p   peer.ID
		ans *lookupAnswer
		err error
	}
	results := make(chan result, len(peers))
	actx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	for _, p := range peers {
		go func() {
			ans, err := lookup(actx, n.h, p, ref)
			results <- result{p, ans, err}
		}()
	}
	var (
		found   *knownRelease
		holders []peer.ID
		refusal error
	)
	for range peers {
		r := <-results
		if r.err != nil {
			continue
		}
		rel, err := n.verify(r.ans.Envelope)
		if err == nil && (rel.Ref() != ref) {
			err = fmt.Errorf("peer %s answered with %s: %w", r.p, rel.Ref(), signing.ErrSubjectMismatch)
		}
		if err != nil {
			n.log.Warn("lookup answer refused", "peer", r.p, "release", ref, "err", err)
			refusal = err
			continue
		}
		if found == nil {
			found = &knownRelease{rel, r.ans.Envelope}
		}
		if r.ans.Have && rel.Digest == found.rel.Digest {
			holders = append(holders, r.p)
		}
	}
	if found != nil {
		return found.rel, found.env, holders, nil
	}
	if refusal != nil {
		return artifact.Release{}, nil, nil, refusal
	}
	return artifact.Release{}, nil, nil, errNotKnown
}

func (n *Node) holdersOf(digest string) []peer.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []peer.ID
	for p := range n.holders[digest] {
		out = append(out, p)
	}
	return out
}

// fetchJob is one blob being fetched; it outlives a Fetch call that gives up,
// so that a transfer with holders goes on for the swarm.
type fetchJob struct {
	rel     artifact.Release
	env     *signing.Envelope
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	sources atomic.Int32
	sourced chan struct{} // closed when the first source is handed to the engine

	mu   sync.Mutex
	seen map[peer.ID]bool
}

func (n *Node) startJob(rel artifact.Release, env *signing.Envelope) *fetchJob {
	n.mu.Lock()
	defer n.mu.Unlock()
	if j := n.jobs[rel.Digest]; j != nil {
		return j
	}
	ctx, cancel := context.WithCancel(n.ctx)
	j := &fetchJob{rel: rel, env: env, cancel: cancel, done: make(chan struct{}), sourced: make(chan struct{}),
		seen: make(map[peer.ID]bool)}
	n.jobs[rel.Digest] = j
	n.wg.Go(func() { n.runJob(ctx, j) })
	return j
}

func (n *Node) runJob(ctx context.Context, j *fetchJob) {
	defer func() {
		n.mu.Lock()
		if n.jobs[j.rel.Digest] == j {
			delete(n.jobs, j.rel.Digest)
		}
		n.mu.Unlock()
		j.cancel()
		close(j.done)
	}()
	findCtx, stopFind := context.WithCancel(ctx)
	defer stopFind()
	go n.findSources(findCtx, j)
	select {
	case <-j.sourced:
	case <-ctx.Done():
		j.err = fmt.Errorf("download %s: %w", j.rel.Ref(), ctx.Err())
		return
	}
	start := time.Now()
	err := n.engine.Download(ctx, j.rel, nil)
	if err == nil {
		err = n.st.PutRelease(j.rel, j.env)
	}
	if err != nil {
		j.err = fmt.Errorf("download %s: %w", j.rel.Ref(), err)
		return
	}
	n.advertise(j.rel.Digest)
	n.log.Info("fetched", "release", j.rel.Ref(), "sha256", short(j.rel.Digest), "bytes", j.rel.Size,
		"seconds", time.Since(start).Seconds())
}

// findSources keeps feeding the engine holders found through gossip, the DHT
// and connected peers until the job ends; new leechers become sources too.
func (n *Node) findSources(ctx context.Context, j *fetchJob) {
	wait := 500 * time.Millisecond
	for {
		for _, p := range n.holdersOf(j.rel.Digest) {
			j.addSource(n, p, nil)
		}
		if ch, err := n.disc.FindProviders(ctx, j.rel.Digest, 50); err == nil {
			for pi := range ch {
				j.addSource(n, pi.ID, &pi)
			}
		}
		n.mu.Lock()
		wake := n.newInfo
		n.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// addSource hands p to the engine once; the first source makes this node
// advertise the digest, so the swarm forms while the download runs.
func (j *fetchJob) addSource(n *Node, p peer.ID, pi *peer.AddrInfo) {
	if p == n.h.ID() {
		return
	}
	j.mu.Lock()
	if j.seen[p] {
		j.mu.Unlock()
		return
	}
	j.seen[p] = true
	j.mu.Unlock()
	if pi != nil && len(pi.Addrs) > 0 {
		n.h.Peerstore().AddAddrs(p, pi.Addrs, peerstore.TempAddrTTL)
	}
	go func() {
		if n.h.Network().Connectedness(p) != network.Connected && len(n.h.Peerstore().Addrs(p)) == 0 {
			// Heard of through gossip relayed by others: find its addresses.
			ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
			defer cancel()
			found, err := n.disc.FindPeer(ctx, p)
			if err != nil {
				n.log.Debug("cannot find holder's addresses", "peer", p, "err", err)
				j.mu.Lock()
				delete(j.seen, p) // try again on the next round
				j.mu.Unlock()
				return
			}
			n.h.Peerstore().AddAddrs(p, found.Addrs, peerstore.TempAddrTTL)
		}
		n.engine.AddPeers(j.rel.InfoHash, []peer.ID{p})
		if j.sources.Add(1) == 1 {
			n.advertise(j.rel.Digest)
			close(j.sourced)
		}
		n.log.Debug("source", "release", j.rel.Ref(), "peer", p)
	}()
}

// PeerStatus is one connected peer.
type PeerStatus struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// Status is what `ballena status` shows.
type Status struct {
	ID        string             `json:"id"`
	Addrs     []string           `json:"addrs"`
	Peers     []PeerStatus       `json:"peers"`
	DHTPeers  int                `json:"dhtPeers"`
	Holds     []artifact.Release `json:"holds"`
	Transfers []TransferStats    `json:"transfers"`
}

// Status reports the node's identity, peers, holdings and transfers.
func (n *Node) Status() (Status, error) {
	s := Status{ID: n.h.ID().String(), Addrs: FullAddrs(n.h), DHTPeers: n.disc.RoutingTableSize()}
	for _, p := range n.h.Network().Peers() {
		ps := PeerStatus{ID: p.String()}
		for _, c := range n.h.Network().ConnsToPeer(p) {
			ps.Addrs = append(ps.Addrs, c.RemoteMultiaddr().String())
		}
		s.Peers = append(s.Peers, ps)
	}
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].ID < s.Peers[j].ID })
	rels, err := n.st.Releases()
	if err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	for _, r := range rels {
		if n.st.HasBlob(r.Digest) {
			s.Holds = append(s.Holds, r)
		}
	}
	s.Transfers = n.engine.Transfers()
	sort.Slice(s.Transfers, func(i, j int) bool { return s.Transfers[i].Name < s.Transfers[j].Name })
	return s, nil
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
