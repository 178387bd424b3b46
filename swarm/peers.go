package swarm

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/swarm/policy"
)

type peerSet map[string]torrent.PeerInfo

// maxKnownPeers bounds the peers remembered per torrent for dialling.
const maxKnownPeers = 256

// watchPeers forgets a libp2p peer's synthetic address once the peer has no
// connection left, unless a transfer still wants to dial it or it is banned:
// per-peer state lives as long as the peer does.
func (e *Engine) watchPeers(h host.Host) {
	e.notifiee = &network.NotifyBundle{
		DisconnectedF: func(nw network.Network, c network.Conn) {
			p := c.RemotePeer()
			if nw.Connectedness(p) == network.Connected {
				return
			}
			go e.peerGone(p, time.Now())
		},
	}
	h.Network().Notify(e.notifiee)
}

func (e *Engine) peerGone(p peer.ID, gone time.Time) {
	if e.bulk != nil {
		e.bulk.peerGone(p, gone)
	}
	banned := make(map[string]bool)
	for _, ip := range e.cl.BadPeerIPs() {
		banned[ip] = true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.addrs.forget(p, func(ip netip.Addr) bool {
		if banned[ip.String()] {
			return true
		}
		addr := p2pAddr(netip.AddrPortFrom(ip, p2pPort)).String()
		for _, set := range e.known {
			if _, ok := set[addr]; ok {
				return true
			}
		}
		return false
	})
}

// AddPeers tells the engine about fleet nodes that hold or fetch infoHash (hex).
// Peers given before the transfer starts are remembered for it. Given more
// than it keeps (maxKnownPeers), a rack-aware engine keeps those of its own
// rack first (policy.SelectPeers, as the simulator runs it), as far as it
// has learnt their racks.
func (e *Engine) AddPeers(infoHash string, peers []peer.ID) {
	cands := make([]policy.Candidate[peer.ID], 0, len(peers))
	for _, id := range peers {
		if e.cfg.Host != nil && id == e.cfg.Host.ID() {
			continue
		}
		cands = append(cands, policy.Candidate[peer.ID]{ID: id, Rack: e.racks.known(id)})
	}
	self := ""
	if e.racks != nil {
		self = e.racks.self
	}
	var pis []torrent.PeerInfo
	for _, c := range policy.SelectPeers(self, cands, maxKnownPeers) {
		pis = append(pis, torrent.PeerInfo{Addr: p2pAddr(e.addrs.addrOf(c.ID)), Source: torrent.PeerSourceDirect})
	}
	e.addPeerInfos(infoHash, pis)
}

func (e *Engine) addPeerInfos(infoHash string, pis []torrent.PeerInfo) {
	if len(pis) == 0 {
		return
	}
	var ih metainfo.Hash
	if err := ih.FromHexString(infoHash); err != nil {
		e.log.Warn("ignoring peers for a bad infohash", "infohash", infoHash)
		return
	}
	e.mu.Lock()
	set := e.known[ih]
	if set == nil {
		set = make(peerSet)
		e.known[ih] = set
	}
	for _, pi := range pis {
		if len(set) >= maxKnownPeers {
			break // enough to fetch from; the rest would only cost memory
		}
		set[pi.Addr.String()] = pi
	}
	var t *torrent.Torrent
	for _, tr := range e.transfers {
		if tr.ih == ih && tr.t != nil {
			t = tr.t
		}
	}
	e.mu.Unlock()
	if t != nil {
		t.AddPeers(pis)
	}
}

func (e *Engine) addKnownLocked(tr *transfer) {
	if pis := slices.Collect(maps.Values(e.known[tr.ih])); len(pis) > 0 {
		tr.t.AddPeers(pis)
	}
}

func (e *Engine) redial() {
	type job struct {
		t   *torrent.Torrent
		pis []torrent.PeerInfo
	}
	var jobs []job
	e.mu.Lock()
	for _, tr := range e.transfers {
		if tr.seeding || tr.t == nil || len(e.known[tr.ih]) == 0 {
			continue
		}
		jobs = append(jobs, job{t: tr.t, pis: slices.Collect(maps.Values(e.known[tr.ih]))})
	}
	e.mu.Unlock()
	for _, j := range jobs {
		j.t.AddPeers(j.pis)
	}
}

// BannedPeers lists the fleet peers this engine banned for sending bad data.
func (e *Engine) BannedPeers() []peer.ID {
	var out []peer.ID
	for _, s := range e.cl.BadPeerIPs() {
		if id, ok := e.addrs.peerOf(net.JoinHostPort(s, "1")); ok {
			out = append(out, id)
		}
	}
	return out
}
