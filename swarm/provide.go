package swarm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"ballena.dev/artifact"
)

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

// offer seeds a blob the store already holds and advertises it.
func (n *Node) offer(ctx context.Context, rel artifact.Release) {
	if err := n.engine.Seed(ctx, rel); err != nil {
		n.log.Warn("cannot seed", "release", rel.Ref(), "err", err)
	}
	n.advertise(rel.Digest)
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
		ds := slices.Collect(maps.Keys(n.provided))
		n.mu.Unlock()
		for _, d := range ds {
			n.provide(d)
		}
	}
}
