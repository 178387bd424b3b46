package swarm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// maxList bounds how many releases one list answer carries.
const maxList = 1000

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

// ServeLookup answers LookupProtocol on h until h closes.
func ServeLookup(h host.Host, resolve ResolveFunc, list ListFunc, log *slog.Logger) {
	h.SetStreamHandler(LookupProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(lookupTimeout))
		var req lookupRequest
		if err := json.NewDecoder(io.LimitReader(s, 4096)).Decode(&req); err != nil {
			_ = s.Reset()
			return
		}
		var ans lookupAnswer
		if req.List {
			ans.List = list()
			if len(ans.List) > maxList {
				ans.List = ans.List[:maxList]
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
	var ans lookupAnswer
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(s, maxAnnouncement))).Decode(&ans); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("lookup %s at %s: %w", ref, p, err)
	}
	if ans.Error != "" || ans.Envelope == nil {
		return nil, errNotKnown
	}
	return &ans, nil
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
	var ans lookupAnswer
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(s, 64*maxAnnouncement))).Decode(&ans); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("list releases at %s: %w", p, err)
	}
	return ans.List, nil
}
