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

// A fetch takes a signed release from the mesh into this node's store in five
// stages, each owned by one file:
//
//	1 resolve   resolve.go   ref → a release whose envelope this node's policy accepts
//	2 holders   holders.go   peers that hold or fetch the blob, fed to the engine as found
//	3 download  download.go  the torrent: staging room, info, pieces, stall timeout
//	4 verify    verify.go    info against the signed release; pieces against the
//	                         signed infohash; the whole blob against the signed digest
//	5 adopt     adopt.go     the blob into the store, then the release record; advertise
//
// Fetch runs stage 1 and hands stages 2 to 5 to a fetchJob (runJob), which
// outlives a caller that gives up: a transfer that has holders goes on for the
// swarm. The engine runs stages 3 to 5 for the blob in one goroutine per
// transfer (Engine.fetch), because the whole-blob check is made by the store
// while it adopts the file, and a failure there sends the download back to
// re-check its pieces.

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
	// 1. Resolve the release.
	rel, env, holders, held, err := n.resolveRelease(ctx, ref)
	if err != nil {
		return artifact.Release{}, fmt.Errorf("fetch %s: %w", ref, err)
	}
	if held {
		n.offer(ctx, rel)
		return rel, nil
	}
	if n.st.HasBlob(rel.Digest) {
		// The same bytes under another name or version (a rebuild tagged anew):
		// the store hashed them when it took them in, so only the signed record
		// is new.
		if err := n.adoptRelease(rel, env); err != nil {
			return artifact.Release{}, fmt.Errorf("fetch %s: %w", ref, err)
		}
		n.offer(ctx, rel)
		return rel, nil
	}
	// 2. Find holders. The job keeps looking and feeding them to the engine;
	// this call waits only for the first.
	j := n.startJob(rel, env)
	if err := n.awaitHolder(ctx, j, holders); err != nil {
		return artifact.Release{}, fmt.Errorf("fetch %s: %w", ref, err)
	}
	// 3 to 5. The job downloads, verifies and adopts; this call follows the
	// same transfer for progress.
	if err := n.awaitJob(ctx, j, progress); err != nil {
		if ctx.Err() != nil {
			return artifact.Release{}, fmt.Errorf("fetch %s: gave up waiting with %d holders known (the transfer goes on in the background): %w",
				ref, j.sources.Load(), ErrUnavailable)
		}
		return artifact.Release{}, fmt.Errorf("fetch %s: %w", ref, err)
	}
	return rel, nil
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

// startJob starts the job for rel's blob, or returns the one already running.
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

// runJob runs stages 2 to 5 for one blob and records why it ended in j.err.
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
	// 2. Find holders until the job ends. The engine starts only once someone
	// offers the blob, so a fetch of what nobody holds leaves nothing behind:
	// no staged files, no DHT record.
	findCtx, stopFind := context.WithCancel(ctx)
	defer stopFind()
	go n.findHolders(findCtx, j)
	select {
	case <-j.sourced:
	case <-ctx.Done():
		j.err = fmt.Errorf("download %s: %w", j.rel.Ref(), ctx.Err())
		return
	}
	start := time.Now()
	// 3, 4 and the blob's half of 5: download, verify, adopt the blob.
	err := n.engine.Download(ctx, j.rel, nil)
	// 5. Adopt the release record and advertise the blob.
	if err == nil {
		err = n.adoptRelease(j.rel, j.env)
	}
	if err != nil {
		j.err = fmt.Errorf("download %s: %w", j.rel.Ref(), err)
		return
	}
	n.log.Info("release fetched and verified", "release", j.rel.Ref(), "digest", j.rel.Digest, "bytes", j.rel.Size,
		"seconds", time.Since(start).Seconds())
}

// awaitJob follows the job's transfer, reporting progress, until the job
// ends or ctx does.
func (n *Node) awaitJob(ctx context.Context, j *fetchJob, progress func(Progress)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.engine.Download(ctx, j.rel, progress); err != nil {
		return err
	}
	select {
	case <-j.done:
		return j.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
