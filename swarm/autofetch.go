package swarm

import (
	"context"
	"encoding/json"
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
	n.wg.Go(func() {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AutoFetchTimeout)
		defer cancel()
		n.log.Info("auto-fetching", "release", rel.Ref())
		if _, err := n.Fetch(ctx, rel.Ref(), nil); err != nil {
			n.log.Warn("auto-fetch failed", "release", rel.Ref(), "err", err)
		}
	})
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
