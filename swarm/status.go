package swarm

import (
	"fmt"
	"slices"
	"strings"

	"ballena.dev/artifact"
)

// PeerStatus is one connected peer.
type PeerStatus struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

// Status is what `ballena status` shows.
type Status struct {
	ID        string             `json:"id"`
	Addrs     []string           `json:"addrs"`
	Peers     []PeerStatus       `json:"peers"`
	DHTPeers  int                `json:"dhtPeers"`
	Holds     []artifact.Release `json:"holds"`
	Transfers []TransferStats    `json:"transfers"`
	Gate      GateStatus         `json:"gate"`
	Gossip    GossipStatus       `json:"gossip"`
	// BannedPeers sent pieces that failed their hash checks; the engine no
	// longer connects to them.
	BannedPeers []string `json:"bannedPeers,omitempty"`
	// RevokedTasks, filled in by the node daemon, are the live tasks whose
	// artifact's signing key has been revoked: they run on but will not restart.
	RevokedTasks []RevokedTask `json:"revokedTasks,omitempty"`
}

// RevokedTask is a live task whose artifact's signing key has been revoked.
type RevokedTask struct {
	ID       string `json:"id"`
	Artifact string `json:"artifact"`
	Reason   string `json:"reason"`
}

// Status reports the node's identity, peers, holdings and transfers.
func (n *Node) Status() (Status, error) {
	s := Status{ID: n.h.ID().String(), Addrs: FullAddrs(n.h), DHTPeers: n.disc.RoutingTableSize(),
		Gate: n.gate.Status(), Gossip: n.gossip.Status()}
	for _, p := range n.engine.BannedPeers() {
		s.BannedPeers = append(s.BannedPeers, p.String())
	}
	for _, p := range n.h.Network().Peers() {
		ps := PeerStatus{ID: p.String()}
		for _, c := range n.h.Network().ConnsToPeer(p) {
			ps.Addrs = append(ps.Addrs, c.RemoteMultiaddr().String())
		}
		s.Peers = append(s.Peers, ps)
	}
	slices.SortFunc(s.Peers, func(a, b PeerStatus) int { return strings.Compare(a.ID, b.ID) })
	rels, err := n.st.Releases()
	if err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	for _, r := range rels {
		if n.st.HasBlob(r.Digest) {
			s.Holds = append(s.Holds, r)
		}
	}
	s.Transfers = n.engine.Transfers()
	slices.SortFunc(s.Transfers, func(a, b TransferStats) int { return strings.Compare(a.Name, b.Name) })
	return s, nil
}
