package swarm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/internal/poll"
)

// A node proves it holds a release only once it has fetched it; the asker
// checks the proof against its own copy and the signature against the peer ID.
func TestConfirmHolder(t *testing.T) {
	pub, priv := ntKey(t)
	src := ntNode(t, ntOpts{trust: []ed25519.PublicKey{pub}})
	fleet := ntNode(t, ntOpts{bootstrap: []*Node{src}, trust: []ed25519.PublicKey{pub}})
	waitGossip(t, src, fleet)
	rel := ntPublish(t, src, "api", "1.0.0", 3<<20, priv)
	ctx := context.Background()

	if _, err := src.ConfirmHolder(ctx, fleet.ID(), rel); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("before the fetch: %v, want ErrNotHeld", err)
	}
	if _, err := fleet.Fetch(ctx, rel.Ref(), nil); err != nil {
		t.Fatal(err)
	}
	r, err := src.ConfirmHolder(ctx, fleet.ID(), rel)
	if err != nil {
		t.Fatal(err)
	}
	if r.Holder != fleet.ID() || r.Asker != src.ID() || r.Digest != rel.Digest || r.Ref != rel.Ref() {
		t.Fatalf("receipt %+v", r)
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	// A receipt changed after signing, or claimed for another peer, fails.
	forged := r
	forged.Nonce = bytes.Clone(r.Nonce)
	forged.Nonce[0] ^= 1
	if err := forged.Verify(); err == nil {
		t.Error("a receipt with another nonce verified")
	}
	forged = r
	forged.Holder = src.ID()
	if err := forged.Verify(); err == nil {
		t.Error("a receipt claimed for another peer verified")
	}
	// Asked again at once, the holder refuses to hash again for the same peer.
	if _, err := src.ConfirmHolder(ctx, fleet.ID(), rel); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "too often") {
		t.Errorf("second proof at once: %v, want a refusal", err)
	}

	// A holder whose blob changed on disk cannot prove it holds the release.
	blob := fleet.st.BlobPath(rel.Digest)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.Chmod(blob, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var last error
	poll.Until(t, 10*time.Second, "the next proof", func() bool {
		_, last = src.ConfirmHolder(ctx, fleet.ID(), rel)
		return last == nil || !errors.Is(last, ErrNotHeld)
	})
	if last == nil || !strings.Contains(last.Error(), "proof") {
		t.Fatalf("corrupt holder: %v, want a wrong proof", last)
	}

	// The asker must hold the blob to check a proof at all.
	if _, err := fleet.ConfirmHolder(ctx, peer.ID("nobody"), ntRelease{}.Release); err == nil {
		t.Error("confirm without the blob succeeded")
	}
}
