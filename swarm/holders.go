package swarm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
)

// awaitHolder hands the engine the holders stage 1 found and waits for the
// job's first source. If ctx ends before there is one, it cancels the job,
// which leaves nothing behind, and fails with ErrNobodyHas.
func (n *Node) awaitHolder(ctx context.Context, j *fetchJob, holders []peer.ID) error {
	for _, p := range holders {
		j.addSource(n, p, nil)
	}
	select {
	case <-j.sourced:
	case <-j.done:
	case <-ctx.Done():
		if j.sources.Load() == 0 {
			j.cancel()
			<-j.done
			return fmt.Errorf("no node in reach holds sha256 %s: %w", short(j.rel.Digest), ErrNobodyHas)
		}
	}
	return nil
}

// findHolders keeps feeding the engine holders found through gossip, the DHT
// and connected peers until the job ends; new leechers become sources too.
func (n *Node) findHolders(ctx context.Context, j *fetchJob) {
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

func (n *Node) holdersOf(digest string) []peer.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Collect(maps.Keys(n.holders[digest]))
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
	if len(s) < maxKnownPeers {
		s[p] = true
	}
}
