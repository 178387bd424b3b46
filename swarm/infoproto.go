package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// InfoProtocol asks a fleet peer for a torrent's info dictionary: the asker
// writes the 20-byte infohash, the peer answers with the bencoded info, or
// nothing if it has none, and closes. The asker keeps the answer only if it
// hashes to the infohash, so it trusts no peer's word.
//
// BitTorrent's own metadata exchange (BEP 9) falls short inside a fleet: a
// peer tells the size of the info once per connection, in its extended
// handshake. Two nodes that connect while both wait for the info never learn
// it from each other over that connection, even after one of them got it, and
// with the first holder gone they would wait for ever.
const InfoProtocol = "/ballena/info/1.0.0"

// maxInfoBytes bounds an answer: anacrolix's own limit on metadata_size.
const maxInfoBytes = 16 << 20

const (
	infoAskAfter   = time.Second     // BEP 9 usually delivers first
	infoAskEvery   = 3 * time.Second // then a round of asks this often
	infoAskPeers   = 4               // peers asked per round
	infoAskTimeout = 10 * time.Second
)

// errNoInfo means the peer has no info for the infohash.
var errNoInfo = errors.New("peer has no info for it")

func (e *Engine) serveInfo() {
	e.cfg.Host.SetStreamHandler(InfoProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(infoAskTimeout))
		var ih metainfo.Hash
		if _, err := io.ReadFull(s, ih[:]); err != nil {
			_ = s.Reset()
			return
		}
		if b := e.heldInfo(ih); b != nil {
			_, _ = s.Write(b)
		}
	})
}

// heldInfo returns the info of a torrent this engine has, or nil.
func (e *Engine) heldInfo(ih metainfo.Hash) []byte {
	e.mu.Lock()
	var t *torrent.Torrent
	for _, tr := range e.transfers {
		if tr.ih == ih && tr.t != nil {
			t = tr.t
		}
	}
	e.mu.Unlock()
	if t == nil || t.Info() == nil {
		return nil
	}
	return t.Metainfo().InfoBytes
}

// askInfo asks p for ih's info and checks the answer against ih.
func (e *Engine) askInfo(ctx context.Context, p peer.ID, ih metainfo.Hash) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, infoAskTimeout)
	defer cancel()
	s, err := e.cfg.Host.NewStream(ctx, p, InfoProtocol)
	if err != nil {
		return nil, fmt.Errorf("ask %s for info: %w", p, err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if _, err := s.Write(ih[:]); err != nil {
		return nil, fmt.Errorf("ask %s for info: %w", p, err)
	}
	_ = s.CloseWrite()
	b, err := io.ReadAll(io.LimitReader(s, maxInfoBytes+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("ask %s for info: %w", p, err)
	case len(b) == 0:
		return nil, errNoInfo
	case len(b) > maxInfoBytes:
		return nil, fmt.Errorf("ask %s for info: answer over %d bytes", p, maxInfoBytes)
	case metainfo.HashBytes(b) != ih:
		return nil, fmt.Errorf("ask %s for info: answer does not hash to %s", p, ih)
	}
	return b, nil
}

// fillInfo asks the transfer's peers for its info over InfoProtocol until
// the torrent has it or ctx ends; anacrolix's metadata exchange runs beside
// it, and whichever comes first sets it.
func (e *Engine) fillInfo(ctx context.Context, tr *transfer, t *torrent.Torrent) {
	wait := time.NewTimer(infoAskAfter)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.GotInfo():
			return
		case <-wait.C:
		}
		peers := e.infoSources(tr, t)
		rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
		got := make(chan []byte, infoAskPeers)
		asked := min(len(peers), infoAskPeers)
		for _, p := range peers[:asked] {
			go func() {
				b, err := e.askInfo(ctx, p, tr.ih)
				if err != nil && !errors.Is(err, errNoInfo) {
					e.log.Debug("torrent info", "peer", p, "err", err)
				}
				got <- b
			}()
		}
		for range asked {
			if b := <-got; b != nil {
				if err := t.SetInfoBytes(b); err != nil {
					e.log.Debug("torrent info", "infohash", tr.ih, "err", err)
				}
			}
		}
		wait.Reset(infoAskEvery)
	}
}

// infoSources lists the fleet peers known to take part in tr: those given
// to AddPeers and those connected to its torrent.
func (e *Engine) infoSources(tr *transfer, t *torrent.Torrent) []peer.ID {
	seen := make(map[peer.ID]bool)
	var out []peer.ID
	add := func(addr string) {
		if id, ok := e.addrs.peerOf(addr); ok && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	e.mu.Lock()
	for addr := range e.known[tr.ih] {
		add(addr)
	}
	e.mu.Unlock()
	for _, c := range t.PeerConns() {
		add(c.RemoteAddr.String())
	}
	return out
}
