package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"ballena.dev/internal/poll"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestDigestCID(t *testing.T) {
	sum := sha256.Sum256([]byte("hello"))
	c, err := DigestCID(hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatal(err)
	}
	// What `ipfs add --raw-leaves --cid-version 1` prints for "hello".
	const want = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
	if c.String() != want {
		t.Fatalf("cid %s, want %s", c, want)
	}
	if _, err := DigestCID("abc"); err == nil {
		t.Fatal("a short digest made a CID")
	}
}

// Three DHT nodes in a line, a - b - c: a finds c as the holder of a digest
// through the DHT although a never connected to c.
func TestProvidersAcrossLine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := testLogger(t)
	ha, hb, hc := testHost(t, nil), testHost(t, nil), testHost(t, nil)
	info := func(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }
	db, err := NewDiscovery(hb, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	da, err := NewDiscovery(ha, []peer.AddrInfo{info(hb)}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer da.Close()
	dc, err := NewDiscovery(hc, []peer.AddrInfo{info(hb)}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for _, h := range []host.Host{ha, hc} {
		if _, err := ConnectAll(ctx, h, []peer.AddrInfo{info(hb)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []*Discovery{da, dc} {
		if err := d.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// a was told only of b; whatever it knows of c, it learned through the DHT.

	sum := sha256.Sum256([]byte("blob held by c"))
	digest := hex.EncodeToString(sum[:])
	// Ready routing tables do not mean b has taken c's record yet (in one run
	// of twenty-odd, a found nothing): c provides again, as its periodic
	// reprovide would, until a finds it.
	var found []peer.AddrInfo
	poll.Until(t, 30*time.Second, "a to find c as the provider", func() bool {
		if err := dc.Provide(ctx, digest); err != nil {
			t.Fatal(err)
		}
		ch, err := da.FindProviders(ctx, digest, 10)
		if err != nil {
			t.Fatal(err)
		}
		found = found[:0]
		for pi := range ch {
			found = append(found, pi)
		}
		return len(found) > 0
	})
	if len(found) != 1 || found[0].ID != hc.ID() {
		t.Fatalf("providers %v, want only c (%s)", found, hc.ID())
	}
	if len(found[0].Addrs) == 0 {
		t.Fatal("provider record came without addresses")
	}
	// a can reach c with what it learned.
	if err := ha.Connect(ctx, found[0]); err != nil {
		t.Fatalf("connect to the provider: %v", err)
	}
}
