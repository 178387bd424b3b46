package swarm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// LookupProtocol asks a peer for the signed release of a name@version. One JSON
// request, one JSON answer, then the stream closes.
const LookupProtocol = "/ballena/release/1.0.0"

const lookupTimeout = 10 * time.Second

// Catch-up limits. A list answer carries at most maxList releases and
// maxListBytes of JSON, on both sides: the answering node stops adding entries
// there, the asking node reads no further and verifies no more. A node answers
// one list request per peer per listInterval and asks each peer at most that
// often, so reconnecting in a loop buys a peer nothing.
const (
	maxList      = 256
	maxListBytes = 4 << 20
	listInterval = 30 * time.Second
)

// perPeerClock remembers when something last happened per peer, to space
// repeats; it forgets entries older than the interval, so it stays bounded by
// the peers seen within one interval.
type perPeerClock struct {
	mu    sync.Mutex
	every time.Duration
	last  map[peer.ID]time.Time
}

func newPerPeerClock(every time.Duration) *perPeerClock {
	return &perPeerClock{every: every, last: make(map[peer.ID]time.Time)}
}

// allow says whether p may go now, and if so starts its interval.
func (c *perPeerClock) allow(p peer.ID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.last[p]; ok && now.Sub(t) < c.every {
		return false
	}
	if len(c.last) >= 256 {
		for q, t := range c.last {
			if now.Sub(t) >= c.every {
				delete(c.last, q)
			}
		}
	}
	c.last[p] = now
	return true
}

// forget drops p's interval, so that it may go again at once.
func (c *perPeerClock) forget(p peer.ID) {
	c.mu.Lock()
	delete(c.last, p)
	c.mu.Unlock()
}

// capList keeps the entries of list that fit maxList and maxListBytes.
func capList(list []knownAnswer) []knownAnswer {
	size := 0
	for i, k := range list {
		b, err := json.Marshal(k)
		if err != nil {
			return list[:i]
		}
		size += len(b) + 1
		if i >= maxList || size > maxListBytes-1024 {
			return list[:i]
		}
	}
	return list
}

// lookupRequest asks for one release, or with List for every release the peer
// knows (a node that auto-fetches catches up on announcements it missed).
type lookupRequest struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	List    bool   `json:"list,omitempty"`
}

// knownAnswer is one entry of a list answer.
type knownAnswer struct {
	Release  artifact.Release  `json:"release"`
	Envelope *signing.Envelope `json:"envelope"`
	Have     bool              `json:"have,omitempty"`
}

// lookupAnswer carries the envelope as the peer has it; the asker verifies it
// against its own policy. Have says whether the peer holds or is fetching the
// blob, so the asker can hand it to the engine at once.
type lookupAnswer struct {
	Release  *artifact.Release `json:"release,omitempty"`
	Envelope *signing.Envelope `json:"envelope,omitempty"`
	Have     bool              `json:"have,omitempty"`
	List     []knownAnswer     `json:"list,omitempty"`
	Error    string            `json:"error,omitempty"`
}

// ResolveFunc answers a lookup from what this node knows; ok is false when it
// knows nothing of ref.
type ResolveFunc func(ref artifact.Ref) (rel artifact.Release, env *signing.Envelope, have, ok bool)

// ListFunc lists what this node knows, for list requests.
type ListFunc func() []knownAnswer

// serveLookup answers LookupProtocol on h until h closes. List requests are
// answered once per peer per listInterval (lists, the spacing clock); later
// ones within it get an error answer.
func serveLookup(h host.Host, resolve ResolveFunc, list ListFunc, lists *perPeerClock, log *slog.Logger) {
	h.SetStreamHandler(LookupProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(lookupTimeout))
		req, err := readLookupRequest(s)
		if err != nil {
			_ = s.Reset()
			return
		}
		var ans lookupAnswer
		if req.List {
			if lists.allow(s.Conn().RemotePeer(), time.Now()) {
				ans.List = capList(list())
			} else {
				ans.Error = "list asked too often"
			}
		} else if rel, env, have, ok := resolve(artifact.Ref{Name: req.Name, Version: req.Version}); ok {
			ans = lookupAnswer{Release: &rel, Envelope: env, Have: have}
		} else {
			ans.Error = "not found"
		}
		if err := json.NewEncoder(s).Encode(ans); err != nil {
			log.Debug("lookup: answer", "peer", s.Conn().RemotePeer(), "err", err)
		}
	})
}

// maxLookupRequest bounds a lookup request: a name and a version.
const maxLookupRequest = 4096

// readLookupRequest reads one request, at most maxLookupRequest bytes.
func readLookupRequest(r io.Reader) (lookupRequest, error) {
	var req lookupRequest
	if err := json.NewDecoder(io.LimitReader(r, maxLookupRequest)).Decode(&req); err != nil {
		return req, fmt.Errorf("lookup request: %w", err)
	}
	return req, nil
}

// readLookupAnswer reads one answer, at most limit bytes.
func readLookupAnswer(r io.Reader, limit int64) (*lookupAnswer, error) {
	var ans lookupAnswer
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(r, limit))).Decode(&ans); err != nil {
		return nil, fmt.Errorf("lookup answer: %w", err)
	}
	return &ans, nil
}

// errNotKnown means the asked peer knows no such release.
var errNotKnown = errors.New("peer knows no such release")

// lookup asks one peer for ref. The answer is not verified yet.
func lookup(ctx context.Context, h host.Host, p peer.ID, ref artifact.Ref) (*lookupAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	s, err := h.NewStream(ctx, p, LookupProtocol)
	if err != nil {
		return nil, fmt.Errorf("lookup %s at %s: %w", ref, p, err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := json.NewEncoder(s).Encode(lookupRequest{Name: ref.Name, Version: ref.Version}); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("lookup %s at %s: %w", ref, p, err)
	}
	_ = s.CloseWrite()
	ans, err := readLookupAnswer(s, maxAnnouncement)
	if err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("lookup %s at %s: %w", ref, p, err)
	}
	if ans.Error != "" || ans.Envelope == nil {
		return nil, errNotKnown
	}
	return ans, nil
}

// listKnown asks one peer for every release it knows. Nothing is verified yet.
func listKnown(ctx context.Context, h host.Host, p peer.ID) ([]knownAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	s, err := h.NewStream(ctx, p, LookupProtocol)
	if err != nil {
		return nil, fmt.Errorf("list releases at %s: %w", p, err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := json.NewEncoder(s).Encode(lookupRequest{List: true}); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("list releases at %s: %w", p, err)
	}
	_ = s.CloseWrite()
	ans, err := readLookupAnswer(s, maxListBytes)
	if err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("list releases at %s: %w", p, err)
	}
	if ans.Error != "" {
		return nil, fmt.Errorf("list releases at %s: %s", p, ans.Error)
	}
	if len(ans.List) > maxList {
		return ans.List[:maxList], nil
	}
	return ans.List, nil
}
