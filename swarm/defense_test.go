package swarm

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
)

// Attacks on the mesh, each against real libp2p hosts on loopback.

func TestClosedMesh(t *testing.T) {
	psk := testPSK(t)
	for _, c := range []struct {
		listen []string
		psk    bool
		open   bool
		ok     bool
	}{
		{[]string{"/ip4/127.0.0.1/tcp/0"}, false, false, true},
		{[]string{"/ip6/::1/tcp/0", "/ip4/127.0.0.2/tcp/7400"}, false, false, true},
		{nil, false, false, false}, // the default is 0.0.0.0
		{[]string{"/ip4/0.0.0.0/tcp/7400"}, false, false, false},
		{[]string{"/ip4/127.0.0.1/tcp/0", "/ip6/::/tcp/0"}, false, false, false},
		{[]string{"/dns4/localhost/tcp/7400"}, false, false, false},
		{[]string{"/ip4/0.0.0.0/tcp/7400"}, true, false, true},
		{[]string{"/ip4/0.0.0.0/tcp/7400"}, false, true, true},
	} {
		var k []byte
		if c.psk {
			k = psk
		}
		err := CheckClosedMesh(c.listen, k, c.open)
		if (err == nil) != c.ok {
			t.Errorf("listen %v psk %v open %v: %v", c.listen, c.psk, c.open, err)
		}
		if err != nil {
			msg := err.Error()
			if !errors.Is(err, ErrOpenMesh) || !strings.Contains(msg, "--psk") || !strings.Contains(msg, "--open-mesh") || strings.Contains(msg, "\n") {
				t.Errorf("refusal %q: want one line naming --psk and --open-mesh", msg)
			}
		}
	}
	// The node itself refuses, whoever builds it.
	st, err := artifact.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = NewNode(context.Background(), NodeConfig{DataDir: t.TempDir(), Listen: []string{"/ip4/0.0.0.0/tcp/0"}, Store: st})
	if !errors.Is(err, ErrOpenMesh) {
		t.Fatalf("a node listening on 0.0.0.0 without a PSK started: %v", err)
	}
}

// identityIn makes the node key in dir and returns its peer ID.
func identityIn(t *testing.T, dir string) peer.ID {
	t.Helper()
	sk, err := LoadIdentity(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func writeAllowlist(t *testing.T, path string, ids ...peer.ID) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# fleet nodes\n\n")
	for _, id := range ids {
		fmt.Fprintf(&b, "%s  # a node\n", id)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAllowlist: a peer that holds the PSK but is not on the allowlist can
// neither connect nor be dialled; a reload lets it in, and one that drops a
// connected peer closes its connection.
func TestAllowlist(t *testing.T) {
	psk := testPSK(t)
	da, db, dc := t.TempDir(), t.TempDir(), t.TempDir()
	idB, idC := identityIn(t, db), identityIn(t, dc)
	allow := filepath.Join(da, "allow")
	writeAllowlist(t, allow, idB)
	a := ntNode(t, ntOpts{dir: da, psk: psk, allow: allow})
	_ = ntNode(t, ntOpts{dir: db, psk: psk, bootstrap: []*Node{a}})
	c := ntNode(t, ntOpts{dir: dc, psk: psk})
	connected := func(x *Node, p peer.ID) bool { return x.Host().Network().Connectedness(p) == network.Connected }
	poll.Until(t, 20*time.Second, "b joined a", func() bool { return connected(a, idB) })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// c's side of the handshake may finish before a refuses it, so its Connect
	// can succeed for a moment; no stream ever gets through.
	_ = c.Host().Connect(ctx, addrInfo(a.Host()))
	if _, err := listKnown(ctx, c.Host(), a.ID()); err == nil {
		t.Fatal("a peer not on the allowlist listed the node's releases")
	}
	poll.Until(t, 10*time.Second, "c's refused connection gone", func() bool { return !connected(c, a.ID()) })
	if err := a.Host().Connect(ctx, addrInfo(c.Host())); err == nil {
		t.Fatal("the node dialled a peer not on its allowlist")
	}
	if connected(a, idC) {
		t.Fatal("connected to a peer not on the allowlist")
	}
	if slices.Contains(a.Gossip().Peers(), idC) {
		t.Fatal("a peer not on the allowlist is on the release topic")
	}
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gate: %+v", st.Gate)
	if st.Gate.Allowed != 1 || st.Gate.Refused[RefusedInbound] < 1 || st.Gate.Refused[RefusedOutbound] < 1 {
		t.Fatalf("status shows %+v; want 1 allowed and both refusals counted", st.Gate)
	}

	// SIGHUP's work: c listed, b no longer.
	writeAllowlist(t, allow, idC)
	if err := a.ReloadAllowlist(); err != nil {
		t.Fatal(err)
	}
	if err := c.Host().Connect(ctx, addrInfo(a.Host())); err != nil {
		t.Fatalf("a newly listed peer cannot connect: %v", err)
	}
	if _, err := listKnown(ctx, c.Host(), a.ID()); err != nil {
		t.Fatalf("a newly listed peer cannot list releases: %v", err)
	}
	poll.Until(t, 20*time.Second, "b's connection closed", func() bool { return !connected(a, idB) })

	// A broken file leaves the list as it was.
	if err := os.WriteFile(allow, []byte("not-a-peer-id\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.ReloadAllowlist(); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("reload of a bad allowlist: %v; want the line named", err)
	}
	if !connected(a, idC) {
		t.Fatal("a bad reload dropped a listed peer")
	}
}

// TestGarbageGossiperPruned: a peer floods the release topic with envelopes
// no trusted key signed. Each is rejected, its score sinks under the graylist
// threshold, and an honest node's announcement still arrives.
func TestGarbageGossiperPruned(t *testing.T) {
	pub, priv := ntKey(t)
	_, rogue := ntKey(t)
	v := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	honest := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}, bootstrap: []*Node{v}})

	// The gossiper is a plain libp2p host with stock gossipsub: no validator,
	// no scruples.
	gh := testHost(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gps, err := pubsub.NewGossipSub(ctx, gh, pubsub.WithFloodPublish(true))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := gps.Join(ReleaseTopic)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()
	if err := gh.Connect(ctx, addrInfo(v.Host())); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "the gossiper on the topic", func() bool {
		return slices.Contains(v.Gossip().Peers(), gh.ID()) && slices.Contains(topic.ListPeers(), v.ID())
	})
	for i := range 5 {
		rel, env := ntSign(t, "api", fmt.Sprintf("9.9.%d", i), 100, rogue)
		b, _ := json.Marshal(Announcement{Release: rel.Release, Envelope: env})
		if err := topic.Publish(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 30*time.Second, "the gossiper graylisted", func() bool {
		s, ok := v.Gossip().Score(gh.ID())
		return ok && s < graylistThreshold
	})
	gs := v.Gossip().Status()
	t.Logf("gossip status: %+v", gs)
	if gs.Rejected < 3 || !slices.Contains(gs.Graylisted, gh.ID().String()) {
		t.Fatalf("status %+v: want the rejections counted and the gossiper graylisted", gs)
	}

	waitGossip(t, honest, v)
	rel := ntPublish(t, honest, "api", "1.0.0", 1000, priv)
	poll.Until(t, 20*time.Second, "the honest announcement", func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		_, ok := v.known[rel.Ref()]
		return ok
	})
	if s, ok := v.Gossip().Score(honest.ID()); ok && s < 0 {
		t.Fatalf("the honest node's score is %v", s)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for ref := range v.known {
		if ref.Version != "1.0.0" {
			t.Errorf("learned %s from the gossiper", ref)
		}
	}
}
