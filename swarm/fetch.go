package swarm

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// ErrNobodyHas means no node in reach knows the release or holds its blob. It
// wraps artifact.ErrNotFound.
var ErrNobodyHas = fmt.Errorf("nobody has it: %w", artifact.ErrNotFound)

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
