package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
)

// swarmRun is what one swarm run measured.
type swarmRun struct {
	rel      artifact.Release
	seedBlob string    // the blob, for the HTTP baseline
	finish   []float64 // seconds from start until each leecher held the verified blob
	setup    float64
	cpu      float64   // CPU seconds of all node processes
	seedSent int64     // piece bytes the seed uploaded
	received int64     // piece bytes all leechers received
	idleDown []float64 // per leecher: seconds of its download with nothing arriving
	idleUp   []float64 // per leecher: seconds of its download with verified pieces and nothing sent
}

// runEngines runs the seed and leechers as processes of this program, each a
// swarm.Engine on its own libp2p host.
func runEngines(ctx context.Context, work string, n int, F, capB int64) (swarmRun, error) {
	var sw swarmRun
	setup := time.Now()
	seedDir := filepath.Join(work, "seed")
	blob, rel, err := makeBlob(seedDir, F)
	if err != nil {
		return sw, err
	}
	sw.rel, sw.seedBlob = rel, blob
	self, err := os.Executable()
	if err != nil {
		return sw, err
	}
	nodes := make([]*node, n+1)
	var wg sync.WaitGroup
	var startErr error
	var mu sync.Mutex
	for i := range nodes {
		dir := seedDir
		if i > 0 {
			dir = filepath.Join(work, fmt.Sprintf("leech%02d", i))
		}
		wg.Go(func() {
			nd, err := startNode(ctx, self, dir, capB)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				startErr = errors.Join(startErr, err)
			}
			nodes[i] = nd
		})
	}
	wg.Wait()
	defer func() {
		for _, nd := range nodes {
			if nd != nil {
				nd.stop()
			}
		}
	}()
	if startErr != nil {
		return sw, startErr
	}
	seed := nodes[0]
	if err := seed.call(cmd{Op: "seed", Rel: rel}); err != nil {
		return sw, err
	}
	var all []peer.AddrInfo
	for _, nd := range nodes {
		all = append(all, nd.ai)
	}
	for _, nd := range nodes {
		if err := nd.call(cmd{Op: "peers", Rel: rel, Peers: all}); err != nil {
			return sw, err
		}
	}
	sw.setup = time.Since(setup).Seconds()
	start := time.Now()
	for _, nd := range nodes[1:] {
		nd.send(cmd{Op: "download", Rel: rel})
	}
	for _, nd := range nodes[1:] {
		m, err := nd.wait(ctx, func(m msg) bool { return m.Done != nil })
		if err != nil {
			return sw, fmt.Errorf("leecher %s: %w", nd.dir, err)
		}
		if m.Done.Err != "" {
			return sw, fmt.Errorf("leecher %s: %s", nd.dir, m.Done.Err)
		}
		sw.finish = append(sw.finish, m.Done.At.Sub(start).Seconds())
		sw.received += m.Done.Read
		sw.idleDown = append(sw.idleDown, m.Done.IdleDown)
		sw.idleUp = append(sw.idleUp, m.Done.IdleUp)
	}
	fmt.Fprintf(os.Stderr, "benchswarm: swarm done in %.1fs; now the HTTP baseline\n", slices.Max(sw.finish))
	st, err := seed.stats()
	if err != nil {
		return sw, err
	}
	sw.seedSent = st.Uploaded
	for _, nd := range nodes {
		c, err := nd.exit()
		if err != nil {
			return sw, err
		}
		sw.cpu += c
	}
	for _, nd := range nodes[1:] {
		if err := verifyBlob(filepath.Join(nd.dir, "blobs", rel.Digest), rel.Digest); err != nil {
			return sw, err
		}
	}
	return sw, nil
}
