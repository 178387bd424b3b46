package swarm

// Standard BitTorrent clients (aria2c, qBittorrent, transmission) cannot speak
// libp2p, so a node can export what it holds over plain TCP. A client finds the
// node through a minimal HTTP tracker (BEP 3 with compact peers, BEP 23) that the
// node runs itself and names in the exported .torrent's announce URL. We chose a
// tracker over a web seed (BEP 19): the client then talks real BitTorrent to the
// engine, so piece hashes, rate limits and transfer stats apply to it as to fleet
// peers, and clients that announce are handed to each other to share the load.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
)

const (
	trackerInterval = 60 * time.Second
	trackerPeerTTL  = 3 * trackerInterval
	trackerMaxPeers = 50
)

type tracker struct {
	srv   *http.Server
	ln    net.Listener
	self  netip.AddrPort
	holds func(metainfo.Hash) bool
	log   *slog.Logger

	mu    sync.Mutex
	swarm map[metainfo.Hash]map[netip.AddrPort]time.Time // announcers, last seen
}

// startTracker serves /announce on listen, handing out self (the engine's plain
// TCP address) for every infohash that holds reports.
func startTracker(listen string, self *net.TCPAddr, holds func(metainfo.Hash) bool, lg *slog.Logger) (*tracker, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	t := &tracker{
		ln:    ln,
		self:  self.AddrPort(),
		holds: holds,
		log:   lg,
		swarm: make(map[metainfo.Hash]map[netip.AddrPort]time.Time),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /announce", t.announce)
	t.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go t.srv.Serve(ln)
	return t, nil
}

func (t *tracker) url() string {
	return "http://" + t.ln.Addr().String() + "/announce"
}

func (t *tracker) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t.srv.Shutdown(ctx)
}

type announceResponse struct {
	FailureReason string `bencode:"failure reason,omitempty"`
	Interval      int64  `bencode:"interval,omitempty"`
	Complete      int    `bencode:"complete"`
	Incomplete    int    `bencode:"incomplete"`
	Peers         []byte `bencode:"peers"`
}

func (t *tracker) announce(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	resp, err := t.answer(q.Get("info_hash"), q.Get("port"), q.Get("event"), r.RemoteAddr)
	if err != nil {
		resp = announceResponse{FailureReason: err.Error()}
	}
	b, err := bencode.Marshal(resp)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write(b)
}

// trackerMaxSwarm bounds the clients the tracker remembers per torrent, so
// announcing from many ports costs it no more than this.
const trackerMaxSwarm = 1000

func (t *tracker) answer(rawIH, port, event, remote string) (announceResponse, error) {
	if len(rawIH) != 20 {
		return announceResponse{}, errors.New("info_hash must be 20 bytes")
	}
	var ih metainfo.Hash
	copy(ih[:], rawIH)
	if !t.holds(ih) {
		return announceResponse{}, fmt.Errorf("this node does not serve %s", ih.HexString())
	}
	var from netip.AddrPort
	if p, err := strconv.ParseUint(port, 10, 16); err == nil && p != 0 {
		if ra, err := netip.ParseAddrPort(remote); err == nil {
			from = netip.AddrPortFrom(ra.Addr().Unmap(), uint16(p))
		}
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	peers := t.swarm[ih]
	if peers == nil {
		peers = make(map[netip.AddrPort]time.Time)
		t.swarm[ih] = peers
	}
	if from.IsValid() {
		if event == "stopped" {
			delete(peers, from)
		} else if _, ok := peers[from]; ok || len(peers) < trackerMaxSwarm {
			peers[from] = now
		}
	}
	resp := announceResponse{Interval: int64(trackerInterval / time.Second), Complete: 1}
	resp.Peers = appendCompact(resp.Peers, t.self)
	for ap, seen := range peers {
		if now.Sub(seen) > trackerPeerTTL {
			delete(peers, ap)
			continue
		}
		resp.Incomplete++
		if ap == from || ap == t.self || len(resp.Peers)/6 >= trackerMaxPeers {
			continue
		}
		resp.Peers = appendCompact(resp.Peers, ap)
	}
	return resp, nil
}

// appendCompact appends an IPv4 peer in BEP 23 form; IPv6 peers are left out.
func appendCompact(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	if !a.Is4() {
		return b
	}
	ip := a.As4()
	return append(b, ip[0], ip[1], ip[2], ip[3], byte(ap.Port()>>8), byte(ap.Port()))
}
