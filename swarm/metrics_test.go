package swarm

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	"ballena.dev/internal/metricstest"

	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
)

// TestMetricsAfterAFetch: after one node fetched a release from another, the
// seeder's metrics show the bytes sent and the fetcher's the bytes received and
// the pieces verified; both hold the release and seed it.
func TestMetricsAfterAFetch(t *testing.T) {
	pub, priv := ntKey(t)
	seedReg, leechReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	seed := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}, metrics: seedReg})
	const size = 3<<20 + 12345
	rel := ntPublish(t, seed, "api", "1.4.0", size, priv)
	leech := ntNode(t, ntOpts{bootstrap: []*Node{seed}, trust: []ed25519.PublicKey{pub}, metrics: leechReg})
	poll.Until(t, 20*time.Second, "connection", func() bool { return len(leech.Host().Network().Peers()) > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := leech.Fetch(ctx, rel.Ref(), nil); err != nil {
		t.Fatal(err)
	}
	pieces := float64((int64(size) + artifact.PieceLength(size) - 1) / artifact.PieceLength(size))

	s, l := metricstest.Gather(t, seedReg), metricstest.Gather(t, leechReg)
	for _, c := range []struct {
		what     string
		got      float64
		min, max float64
	}{
		{"seed sent bytes", s["ballena_swarm_sent_bytes_total"], size, 2 * size},
		{"leech received bytes", l["ballena_swarm_received_bytes_total"], size, 2 * size},
		{"leech pieces verified", l["ballena_swarm_pieces_verified_total"], pieces, pieces},
		{"leech pieces failed", l["ballena_swarm_pieces_failed_total"], 0, 0},
		{"seed peers", s["ballena_swarm_peers"], 1, 1},
		{"leech peers", l["ballena_swarm_peers"], 1, 1},
		{"seed releases held", s["ballena_swarm_releases_held"], 1, 1},
		{"leech releases held", l["ballena_swarm_releases_held"], 1, 1},
		{"leech seeding", l["ballena_swarm_transfers{state=seeding}"], 1, 1},
		{"leech downloading", l["ballena_swarm_transfers{state=downloading}"], 0, 0},
		// Both nodes take bulk connections on loopback: the peer wire never
		// falls back to a libp2p stream.
		{"bulk peer wire connections", l["ballena_swarm_peer_wire_connections_total{carrier=bulk}"] + s["ballena_swarm_peer_wire_connections_total{carrier=bulk}"], 1, 8},
		{"stream peer wire connections", l["ballena_swarm_peer_wire_connections_total{carrier=stream}"] + s["ballena_swarm_peer_wire_connections_total{carrier=stream}"], 0, 0},
		{"seed bulk connections refused", s["ballena_swarm_bulk_refused_total"], 0, 0},
	} {
		if c.got < c.min || c.got > c.max {
			t.Errorf("%s: %v, want in [%v, %v]", c.what, c.got, c.min, c.max)
		}
	}
}
