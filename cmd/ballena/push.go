package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/internal/units"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// pushResult is what `publish --bootstrap` reports, as JSON with --json.
type pushResult struct {
	Release  artifact.Release    `json:"release"`
	Wanted   int                 `json:"wanted"`
	Replicas []swarm.HoldReceipt `json:"replicas"` // each checked: proof recomputed, signature verified
	// BytesSent is the piece data this node uploaded; the fleet spread the rest.
	BytesSent int64   `json:"bytesSent"`
	Seconds   float64 `json:"seconds"`
	PeerID    string  `json:"peerId"` // the pushing node's identity
}

// pushConfig is the throwaway node's side of `publish --bootstrap`.
type pushConfig struct {
	bootstrap  []peer.AddrInfo
	listen     []string
	allowPeers string
	identity   string
	want       int
	timeout    time.Duration
	psk        []byte
	upload     int64 // bytes per second, 0 unlimited
}

func pushFlagsConfig(c *cli.Context) (pushConfig, error) {
	pc := pushConfig{want: c.Int("wait-replicas"), timeout: c.Duration("timeout"), allowPeers: c.String("allow-peers"),
		identity: c.String("identity"), listen: c.StringSlice("listen")}
	var err error
	if pc.bootstrap, err = swarm.ParseAddrInfos(c.StringSlice("bootstrap")); err != nil {
		return pc, usageErrorf("publish: --bootstrap: %v", err)
	}
	if pc.want < 1 {
		return pc, usageErrorf("publish: --wait-replicas must be at least 1: a pushing node that leaves before anyone holds the release takes it away")
	}
	if pc.timeout <= 0 {
		return pc, usageErrorf("publish: --timeout must be positive")
	}
	if p := c.String("psk"); p != "" {
		if pc.psk, err = swarm.LoadPSK(p); err != nil {
			return pc, usageErrorf("publish: --psk: %v", err)
		}
	}
	if s := c.String("upload-limit"); s != "" {
		if pc.upload, err = units.ParseBytes(strings.TrimSuffix(strings.TrimSuffix(s, "/s"), "ps")); err != nil {
			return pc, usageErrorf("publish: --upload-limit: %v", err)
		}
	}
	if len(pc.listen) == 0 {
		pc.listen = []string{"/ip4/127.0.0.1/tcp/0"}
		if pc.psk != nil {
			pc.listen = []string{"/ip4/0.0.0.0/tcp/0"}
		}
	}
	if err := swarm.CheckClosedMesh(pc.listen, pc.psk, false); err != nil {
		return pc, usageErrorf("publish: %v", err)
	}
	if pc.allowPeers != "" {
		if _, err := swarm.NewGate(pc.allowPeers); err != nil {
			return pc, usageErrorf("publish: --%v", err)
		}
	}
	return pc, nil
}

// pushCommand runs `publish --envelope FILE --bootstrap ...`.
func pushCommand(c *cli.Context, input string, rel artifact.Release, env *signing.Envelope) error {
	pc, err := pushFlagsConfig(c)
	if err != nil {
		return err
	}
	view := newPushView(c.App.ErrWriter, rel.Ref().String(), pc.want)
	res, err := push(c.Context, pc, input, rel, env, view, slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelWarn})))
	view.finish()
	if c.Bool("json") && res != nil {
		if perr := printJSON(c.App.Writer, res); perr != nil && err == nil {
			err = perr
		}
	} else if err == nil {
		fmt.Fprintf(c.App.Writer, "published %s sha256:%s (%s): %d of %d replicas confirmed in %.1fs (%s); sent %s (%.2f copies)\n",
			rel.Ref(), rel.Digest, units.FormatBytes(rel.Size), len(res.Replicas), res.Wanted, res.Seconds,
			strings.Join(holderNames(res.Replicas), ", "), units.FormatBytes(res.BytesSent), copies(res.BytesSent, rel.Size))
	}
	return err
}

func holderNames(rs []swarm.HoldReceipt) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Holder.String())
	}
	return out
}

func copies(sent, size int64) float64 {
	if size == 0 {
		return 0
	}
	return float64(sent) / float64(size)
}

// push stores the release in a temporary store, runs a node over it that
// joins the fleet, seeds and announces it, and waits until pc.want peers
// prove they hold it. The result is returned on timeout too, with the
// replicas reached.
func push(ctx context.Context, pc pushConfig, input string, rel artifact.Release, env *signing.Envelope,
	view *pushView, log *slog.Logger) (*pushResult, error) {
	start := time.Now()
	tmp, err := os.MkdirTemp("", "ballena-push-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	nodeDir := filepath.Join(tmp, "node")
	if err := os.Mkdir(nodeDir, 0o700); err != nil {
		return nil, err
	}
	if pc.identity != "" {
		key, err := swarm.LoadIdentity(pc.identity)
		if err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("publish: --identity: %w", err))
		}
		b, err := crypto.MarshalPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(nodeDir, swarm.KeyFile), b, 0o600); err != nil {
			return nil, err
		}
	}
	st, err := artifact.Open(filepath.Join(tmp, "store"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	// Stored before the node starts: it seeds what its store holds, and peers
	// that catch up when they connect find it at once.
	if _, err := st.Import(ctx, input, env); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, pc.timeout)
	defer cancel()
	n, err := swarm.NewNode(ctx, swarm.NodeConfig{
		DataDir: nodeDir, Listen: pc.listen, Bootstrap: pc.bootstrap, PSK: pc.psk, AllowPeers: pc.allowPeers,
		Store: st, PartialTimeout: -1, Logger: log, UploadLimit: pc.upload,
	})
	if err != nil {
		return nil, fmt.Errorf("publish: start the pushing node: %w", err)
	}
	res := &pushResult{Release: rel, Wanted: pc.want, PeerID: n.ID().String()}
	defer func() {
		if err := n.Close(); err != nil {
			log.Warn("close the pushing node", "err", err)
		}
	}()
	w := &replicaWait{n: n, rel: rel, want: pc.want, asked: map[peer.ID]time.Time{}, busy: map[peer.ID]bool{},
		confirmed: map[peer.ID]swarm.HoldReceipt{}, log: log}
	runCtx, stop := context.WithCancel(ctx)
	err = w.run(runCtx, env, view)
	res.BytesSent = bytesSent(n, rel.Digest)
	stop()
	w.wg.Wait() // proofs and DHT lookups in flight end with runCtx
	res.Replicas = w.receipts()
	res.Seconds = time.Since(start).Seconds()
	if err != nil {
		return res, err
	}
	return res, nil
}

func bytesSent(n *swarm.Node, digest string) int64 {
	for _, tr := range n.Engine().Transfers() {
		if tr.Digest == digest {
			return tr.BytesUploaded
		}
	}
	return 0
}

// replicaWait asks peers for hold proofs until enough have given one.
type replicaWait struct {
	n    *swarm.Node
	rel  artifact.Release
	want int
	log  *slog.Logger

	wg        sync.WaitGroup
	mu        sync.Mutex
	asked     map[peer.ID]time.Time // last time each peer was asked
	busy      map[peer.ID]bool      // asked, no answer yet
	confirmed map[peer.ID]swarm.HoldReceipt
	providers []peer.ID // from the DHT
	lastErr   error     // a proof that failed its check, for the timeout message
}

// Spacing. A peer that does not hold the release yet answers at once and is
// asked again after askEvery; the release is re-announced every announceEvery
// for nodes that joined since.
const (
	askEvery       = 500 * time.Millisecond
	announceEvery  = 10 * time.Second
	providersEvery = 3 * time.Second
)

func (w *replicaWait) run(ctx context.Context, env *signing.Envelope, view *pushView) error {
	// Join: bootstrap peers first, announce once the release topic has a peer.
	for len(w.n.Host().Network().Peers()) == 0 {
		select {
		case <-ctx.Done():
			return withCode(exitUnavailable, fmt.Errorf("publish %s: no bootstrap peer reachable within the timeout: check --bootstrap and --psk", w.rel.Ref()))
		case <-time.After(100 * time.Millisecond):
		}
	}
	gossipWait, cancelGossip := context.WithTimeout(ctx, 5*time.Second)
	for len(w.n.Gossip().Peers()) == 0 && gossipWait.Err() == nil {
		select {
		case <-gossipWait.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	cancelGossip()
	if err := w.n.Announce(ctx, w.rel, env); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	lastAnnounce, lastProviders := time.Now(), time.Time{}
	done := make(chan struct{}, 1)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		got := w.count()
		view.update(got, bytesSent(w.n, w.rel.Digest), len(w.n.Host().Network().Peers()))
		if got >= w.want {
			return nil
		}
		now := time.Now()
		if now.Sub(lastAnnounce) >= announceEvery {
			lastAnnounce = now
			if err := w.n.Announce(ctx, w.rel, env); err != nil && ctx.Err() == nil {
				w.log.Warn("announce again", "err", err)
			}
		}
		if now.Sub(lastProviders) >= providersEvery {
			lastProviders = now
			w.wg.Go(func() { w.findProviders(ctx) })
		}
		for _, p := range w.candidates(now) {
			w.wg.Go(func() {
				w.ask(ctx, p)
				select {
				case done <- struct{}{}:
				default:
				}
			})
		}
		select {
		case <-ctx.Done():
			got := w.count()
			msg := fmt.Sprintf("publish %s: %d of %d replicas confirmed before the timeout", w.rel.Ref(), got, w.want)
			if got > 0 {
				msg += " (" + strings.Join(holderNames(w.receipts()), ", ") + ")"
			}
			msg += "; fleet nodes fetch announced releases that match their --auto-fetch"
			w.mu.Lock()
			if w.lastErr != nil {
				msg += "; last refusal: " + w.lastErr.Error()
			}
			w.mu.Unlock()
			return withCode(exitUnavailable, errors.New(msg))
		case <-tick.C:
		case <-done:
		}
	}
}

func (w *replicaWait) findProviders(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ch, err := w.n.Discovery().FindProviders(ctx, w.rel.Digest, 50)
	if err != nil {
		return
	}
	for pi := range ch {
		if pi.ID == w.n.ID() {
			continue
		}
		if len(pi.Addrs) > 0 {
			w.n.Host().Peerstore().AddAddrs(pi.ID, pi.Addrs, peerstore.TempAddrTTL)
		}
		w.mu.Lock()
		if !slices.Contains(w.providers, pi.ID) {
			w.providers = append(w.providers, pi.ID)
		}
		w.mu.Unlock()
	}
}

// candidates are connected peers and DHT providers not confirmed, not being
// asked, and not asked within askEvery; each is marked busy.
func (w *replicaWait) candidates(now time.Time) []peer.ID {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []peer.ID
	for _, p := range append(w.n.Host().Network().Peers(), w.providers...) {
		if _, ok := w.confirmed[p]; ok || w.busy[p] || now.Sub(w.asked[p]) < askEvery || slices.Contains(out, p) || p == w.n.ID() {
			continue
		}
		w.busy[p] = true
		out = append(out, p)
	}
	return out
}

func (w *replicaWait) ask(ctx context.Context, p peer.ID) {
	r, err := w.n.ConfirmHolder(ctx, p, w.rel)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.busy[p] = false
	w.asked[p] = time.Now()
	switch {
	case err == nil:
		w.confirmed[p] = r
	case errors.Is(err, swarm.ErrNotHeld), ctx.Err() != nil:
	default:
		// Not a protocol peer, unreachable, or a wrong proof: ask again later,
		// and say so if the wait runs out.
		if !strings.Contains(err.Error(), "protocols not supported") {
			w.lastErr = err
		}
		w.log.Debug("hold proof", "peer", p, "err", err)
	}
}

func (w *replicaWait) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.confirmed)
}

func (w *replicaWait) receipts() []swarm.HoldReceipt {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]swarm.HoldReceipt, 0, len(w.confirmed))
	for _, r := range w.confirmed {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b swarm.HoldReceipt) int { return strings.Compare(a.Holder.String(), b.Holder.String()) })
	return out
}

// pushView shows confirmed replicas and bytes sent: a progress bar on a
// terminal, elsewhere a plain line when something changed, at most one a second.
type pushView struct {
	w     io.Writer
	label string
	want  int
	bar   *progressbar.ProgressBar
	last  time.Time
	shown string
	start time.Time
}

func newPushView(w io.Writer, label string, want int) *pushView {
	v := &pushView{w: w, label: label, want: want, start: time.Now()}
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		v.bar = progressbar.NewOptions(want,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label+" replicas"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(20),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return v
}

func (v *pushView) update(replicas int, sent int64, peers int) {
	if v == nil {
		return
	}
	if v.bar != nil {
		v.bar.Describe(fmt.Sprintf("%s: sent %s, %d peers; replicas", v.label, units.FormatBytes(sent), peers))
		_ = v.bar.Set(replicas)
		return
	}
	line := fmt.Sprintf("%s: %d of %d replicas confirmed, sent %s, %d peers", v.label, replicas, v.want, units.FormatBytes(sent), peers)
	if line == v.shown || (time.Since(v.last) < time.Second && replicas < v.want) {
		return
	}
	v.last, v.shown = time.Now(), line
	fmt.Fprintf(v.w, "%s (%.1fs)\n", line, time.Since(v.start).Seconds())
}

func (v *pushView) finish() {
	if v != nil && v.bar != nil {
		_ = v.bar.Finish()
	}
}
