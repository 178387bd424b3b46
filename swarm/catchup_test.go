package swarm

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

func fakeList(n, payload int) []knownAnswer {
	out := make([]knownAnswer, n)
	for i := range out {
		out[i] = knownAnswer{
			Release:  artifact.Release{Name: "api", Version: "1.0.0"},
			Envelope: &signing.Envelope{PayloadType: "x", Payload: []byte(strings.Repeat("a", payload))},
		}
	}
	return out
}

// TestCatchUpLimits: list answers are capped in count and bytes by the node
// that answers and by the node that asks, and a peer gets one list per
// interval.
func TestCatchUpLimits(t *testing.T) {
	if got := len(capList(fakeList(1000, 10))); got != maxList {
		t.Errorf("capped 1000 small entries to %d, want %d", got, maxList)
	}
	big := capList(fakeList(100, 100<<10))
	b, _ := json.Marshal(lookupAnswer{List: big})
	if len(b) > maxListBytes || len(big) == 0 {
		t.Errorf("capped 100 entries of 100 KiB to %d entries, %d bytes; want at most %d bytes", len(big), len(b), maxListBytes)
	}

	// A node answers one list per peer per interval.
	a := ntNode(t, ntOpts{})
	asker := ntNode(t, ntOpts{bootstrap: []*Node{a}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := asker.Host().Connect(ctx, addrInfo(a.Host())); err != nil {
		t.Fatal(err)
	}
	// The first list may have gone to the asker's own catch-up; either way, of
	// two in a row, the second is refused.
	_, _ = listKnown(ctx, asker.Host(), a.ID())
	if _, err := listKnown(ctx, asker.Host(), a.ID()); err == nil || !strings.Contains(err.Error(), "too often") {
		t.Fatalf("a second list within %s: %v; want it refused", listInterval, err)
	}

	// A hostile peer's list: the asker keeps at most maxList entries, and
	// reads no more than maxListBytes.
	hostile := testHost(t, nil)
	var answer atomic.Pointer[lookupAnswer]
	answer.Store(&lookupAnswer{List: fakeList(3*maxList, 10)})
	hostile.SetStreamHandler(LookupProtocol, func(s network.Stream) {
		defer s.Close()
		_, _ = readLookupRequest(s)
		_ = json.NewEncoder(s).Encode(answer.Load())
	})
	if err := a.Host().Connect(ctx, addrInfo(hostile)); err != nil {
		t.Fatal(err)
	}
	list, err := listKnown(ctx, a.Host(), hostile.ID())
	if err != nil || len(list) != maxList {
		t.Fatalf("read %d entries (%v) of a hostile %d-entry list; want %d", len(list), err, 3*maxList, maxList)
	}
	answer.Store(&lookupAnswer{List: fakeList(10, maxListBytes/8)})
	if _, err := listKnown(ctx, a.Host(), hostile.ID()); err == nil {
		t.Fatal("read a list larger than the byte cap")
	}

	// A seeder buffers a few pipelined requests per connection, not tens of MiB.
	e := newTestEngine(t, EngineConfig{})
	if got := e.clientConfig().MaxAllocPeerRequestDataPerConn; got > 8<<20 {
		t.Errorf("request data per connection capped at %d bytes", got)
	}
	// A leecher does not take over a request the moment another peer lags:
	// the bytes may be on the wire already (the 8-leecher bench got 5-7% twice).
	if got := e.clientConfig().StealRequestGrace; got < 100*time.Millisecond {
		t.Errorf("requests may be stolen after %v", got)
	}
}
