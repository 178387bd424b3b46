package swarm

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. Everything is read at scrape time: bytes and pieces from the
// counters the BitTorrent client keeps anyway (nothing is added to the data
// path), peers from the libp2p host, releases from the store, transfers from
// the engine's table.

var (
	descSent = prometheus.NewDesc("ballena_swarm_sent_bytes_total",
		"Piece data sent to peers.", nil, nil)
	descReceived = prometheus.NewDesc("ballena_swarm_received_bytes_total",
		"Piece data received from peers, useful or not.", nil, nil)
	descVerified = prometheus.NewDesc("ballena_swarm_pieces_verified_total",
		"Downloaded pieces that passed their hash check.", nil, nil)
	descFailed = prometheus.NewDesc("ballena_swarm_pieces_failed_total",
		"Downloaded pieces that failed their hash check.", nil, nil)
	descPeers = prometheus.NewDesc("ballena_swarm_peers",
		"Peers connected in the mesh.", nil, nil)
	descHeld = prometheus.NewDesc("ballena_swarm_releases_held",
		"Releases in this node's store.", nil, nil)
	descWireConns = prometheus.NewDesc("ballena_swarm_peer_wire_connections_total",
		"Peer wire connections opened with other nodes, by carrier: bulk (a TCP connection of its own) or stream (in the libp2p connection).",
		[]string{"carrier"}, nil)
	descBulkRefused = prometheus.NewDesc("ballena_swarm_bulk_refused_total",
		"Incoming bulk connections refused: a failed handshake, a peer not on the allowlist or without a libp2p connection.", nil, nil)
	descTransfers = prometheus.NewDesc("ballena_swarm_transfers",
		"Torrents the engine runs, by state: downloading (active transfers in) or seeding.", []string{"state"}, nil)
)

type nodeCollector struct{ n *Node }

func (nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSent, descReceived, descVerified, descFailed, descPeers, descHeld, descTransfers, descWireConns, descBulkRefused} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	e := c.n.engine
	cs := e.cl.ConnStats()
	ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(cs.BytesWrittenData.Int64()))
	ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(cs.BytesReadData.Int64()))
	ch <- prometheus.MustNewConstMetric(descVerified, prometheus.CounterValue, float64(cs.PiecesDirtiedGood.Int64()))
	ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(cs.PiecesDirtiedBad.Int64()))
	ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(len(c.n.h.Network().Peers())))
	if rels, err := c.n.st.Releases(); err == nil {
		ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(len(rels)))
	} else {
		ch <- prometheus.NewInvalidMetric(descHeld, err)
	}
	ch <- prometheus.MustNewConstMetric(descWireConns, prometheus.CounterValue, float64(e.p2p.opened.bulk.Load()), "bulk")
	ch <- prometheus.MustNewConstMetric(descWireConns, prometheus.CounterValue, float64(e.p2p.opened.stream.Load()), "stream")
	var refused int64
	if e.bulk != nil {
		refused = e.bulk.refused.Load()
	}
	ch <- prometheus.MustNewConstMetric(descBulkRefused, prometheus.CounterValue, float64(refused))
	var down, seed int
	e.mu.Lock()
	for _, tr := range e.transfers {
		if tr.seeding {
			seed++
		} else {
			down++
		}
	}
	e.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descTransfers, prometheus.GaugeValue, float64(down), "downloading")
	ch <- prometheus.MustNewConstMetric(descTransfers, prometheus.GaugeValue, float64(seed), "seeding")
}
