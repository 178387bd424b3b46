package swarm

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

type knownRelease struct {
	rel artifact.Release
	env *signing.Envelope
}

// notifyLocked wakes everyone waiting for news about releases or holders. Callers hold n.mu.
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
	if err := n.gossip.Announce(ctx, rel, env); err != nil {
		return err
	}
	n.log.Info("release announced", "release", rel.Ref(), "digest", rel.Digest)
	return nil
}

// answerLookup answers the lookup protocol from the store and the verified cache.
func (n *Node) answerLookup(ref artifact.Ref) (artifact.Release, *signing.Envelope, bool, bool) {
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

// answerList answers list requests: releases held here, then verified
// announcements heard.
func (n *Node) answerList() []knownAnswer {
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
