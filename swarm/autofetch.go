package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

func (n *Node) maybeAutoFetch(rel artifact.Release) {
	if !n.autoFetches(rel) {
		return
	}
	if _, _, err := n.st.Release(rel.Ref()); err == nil && n.st.HasBlob(rel.Digest) {
		return // held already; a new release of held bytes still needs its record (Fetch)
	}
	n.mu.Lock()
	running := n.autos[rel.Digest]
	n.autos[rel.Digest] = true
	n.mu.Unlock()
	if running {
		return // a catch-up and the gossip often bring the same release at once
	}
	n.wg.Go(func() {
		defer func() {
			n.mu.Lock()
			delete(n.autos, rel.Digest)
			n.mu.Unlock()
		}()
		n.autoFetch(rel)
	})
}

// Auto-fetch retries: a fetch that found no data (ErrUnavailable: every
// holder gone, or none serving yet) is tried again after autoRetryFirst,
// doubling up to autoRetryMax, until AutoFetchTimeout. Without it a node
// that missed a release would wait for the next announcement or a new
// peer's catch-up, which in a quiet fleet may never come.
const (
	autoRetryFirst = 5 * time.Second
	autoRetryMax   = time.Minute
)

func (n *Node) autoFetch(rel artifact.Release) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AutoFetchTimeout)
	defer cancel()
	n.log.Info("auto-fetching", "release", rel.Ref())
	for wait := autoRetryFirst; ; wait = min(2*wait, autoRetryMax) {
		_, err := n.Fetch(ctx, rel.Ref(), nil)
		if err == nil || n.ctx.Err() != nil { // done, or the node is stopping
			return
		}
		if !errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
			n.log.Warn("auto-fetch failed", "release", rel.Ref(), "err", err)
			return
		}
		n.log.Warn("auto-fetch failed; will retry", "release", rel.Ref(), "in", wait, "err", err)
		select {
		case <-ctx.Done():
			n.log.Warn("auto-fetch gave up", "release", rel.Ref(), "after", n.cfg.AutoFetchTimeout)
			return
		case <-time.After(wait):
		}
	}
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
	if !n.asks.allow(p, time.Now()) {
		return // asked it lately; a peer that reconnects in a loop gets no more work out of us
	}
	// The peer may not speak the lookup protocol (yet): identify runs first.
	list, err := listKnown(n.ctx, n.h, p)
	if err != nil {
		n.asks.forget(p) // only a list that came counts: the next connection asks again
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
