package swarm

import (
	"maps"
	"net"
	"slices"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p/core/peer"
)

type peerSet map[string]torrent.PeerInfo

// AddPeers tells the engine about fleet nodes that hold or fetch infoHash (hex).
// Peers given before the transfer starts are remembered for it.
func (e *Engine) AddPeers(infoHash string, peers []peer.ID) {
	var pis []torrent.PeerInfo
	for _, id := range peers {
		if e.cfg.Host != nil && id == e.cfg.Host.ID() {
			continue
		}
		pis = append(pis, torrent.PeerInfo{Addr: p2pAddr(e.addrs.addrOf(id)), Source: torrent.PeerSourceDirect})
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
