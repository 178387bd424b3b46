package swarm

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// resolveRelease is stage 1 of a fetch: ref to a release this node's trust
// policy accepts, with the peers known to hold its blob. held says the store
// has the blob already; it is checked against the policy again, which may
// have changed since it was fetched.
func (n *Node) resolveRelease(ctx context.Context, ref artifact.Ref) (rel artifact.Release, env *signing.Envelope, holders []peer.ID, held bool, err error) {
	if rel, env, err := n.st.Release(ref); err == nil && n.st.HasBlob(rel.Digest) {
		if _, err := n.verify(env); err != nil {
			return artifact.Release{}, nil, nil, false, fmt.Errorf("held here, but: %w", err)
		}
		return rel, env, nil, true, nil
	}
	rel, env, holders, err = n.find(ctx, ref)
	return rel, env, holders, false, err
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
