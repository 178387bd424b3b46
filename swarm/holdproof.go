package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/internal/ctxio"
)

// HoldProtocol lets a node prove to a peer that it holds a release, so that a
// publisher (a CI runner pushing a release, for instance) can count replicas
// without taking anyone's word for it. One JSON request, one JSON answer.
//
// The asker sends name@version, the digest and a fresh 32-byte nonce. A node
// that stores the signed release and its blob (which a node adopts only
// after the blob hashed to the signed digest and the envelope passed its own
// trust policy) answers with
//
//	proof = sha256("ballena-hold-proof-v1" || nonce || asker ID || holder ID || blob)
//
// and its peer key's signature over a receipt naming both peers, the release,
// the nonce and the proof. The asker, which holds the blob itself, recomputes
// the proof: only a node with every byte of the blob can answer, the nonce
// stops replays, and the peer IDs in the hash stop one node from passing on
// another's answer. The signature makes the receipt checkable later by anyone
// who has the holder's peer ID.
//
// A node computes one proof at a time and at most one per asking peer every
// holdProofInterval; an answer that it does not hold costs it nothing.
const HoldProtocol = "/ballena/hold/1.0.0"

const (
	holdProofDomain   = "ballena-hold-proof-v1"
	holdReceiptDomain = "ballena-hold-receipt-v1"
	holdNonceSize     = 32
	holdProofInterval = 2 * time.Second
	// holdProofTimeout bounds one exchange, hashing included: 1 GiB/s over a
	// large blob, with room to wait for another asker's proof.
	holdProofTimeout = 2 * time.Minute
	maxHoldMessage   = 8 << 10
)

type holdRequest struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Digest  string `json:"digest"`
	Nonce   []byte `json:"nonce"`
}

type holdAnswer struct {
	Held  bool   `json:"held"`
	Proof []byte `json:"proof,omitempty"`
	Sig   []byte `json:"sig,omitempty"`
	Error string `json:"error,omitempty"`
}

// HoldReceipt is a checked answer of HoldProtocol: Holder proved, to Asker,
// that it holds the blob of Ref with sha256 Digest, and signed it.
type HoldReceipt struct {
	Holder peer.ID      `json:"holder"`
	Asker  peer.ID      `json:"asker"`
	Ref    artifact.Ref `json:"ref"`
	Digest string       `json:"digest"`
	Nonce  []byte       `json:"nonce"`
	Proof  []byte       `json:"proof"`
	Sig    []byte       `json:"sig"` // by Holder's peer key over Message()
}

// Message is what the holder signs.
func (r HoldReceipt) Message() []byte {
	return fmt.Appendf(nil, "%s\nasker %s\nholder %s\nrelease %s\nsha256 %s\nnonce %x\nproof %x\n",
		holdReceiptDomain, r.Asker, r.Holder, r.Ref, r.Digest, r.Nonce, r.Proof)
}

// Verify checks the receipt's signature against the holder's peer ID. It does
// not recompute the proof: that needs the blob (see Node.ConfirmHolder).
func (r HoldReceipt) Verify() error {
	pub, err := r.Holder.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("hold receipt of %s: holder's key: %w", r.Holder, err)
	}
	ok, err := pub.Verify(r.Message(), r.Sig)
	if err != nil || !ok {
		return fmt.Errorf("hold receipt of %s: signature does not verify against its peer ID", r.Holder)
	}
	return nil
}

// ErrNotHeld means the asked peer does not (yet) hold the release.
var ErrNotHeld = errors.New("peer does not hold the release")

// holdProof hashes the proof over blob.
func holdProof(ctx context.Context, blob io.Reader, nonce []byte, asker, holder peer.ID) ([]byte, error) {
	h := sha256.New()
	h.Write([]byte(holdProofDomain))
	h.Write(nonce)
	h.Write([]byte(asker))
	h.Write([]byte(holder))
	if _, err := io.Copy(h, ctxio.Reader(ctx, blob)); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func holdProofOfFile(ctx context.Context, path string, nonce []byte, asker, holder peer.ID) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return holdProof(ctx, f, nonce, asker, holder)
}

// serveHold answers HoldProtocol from st, signing with h's key.
func serveHold(ctx context.Context, h host.Host, st *artifact.Store, log *slog.Logger) {
	key := h.Peerstore().PrivKey(h.ID())
	busy := make(chan struct{}, 1) // one proof at a time
	clock := newPerPeerClock(holdProofInterval)
	h.SetStreamHandler(HoldProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(holdProofTimeout))
		var req holdRequest
		if err := json.NewDecoder(io.LimitReader(s, maxHoldMessage)).Decode(&req); err != nil {
			_ = s.Reset()
			return
		}
		asker := s.Conn().RemotePeer()
		ans := answerHold(ctx, st, key, h.ID(), asker, req, busy, clock)
		if err := json.NewEncoder(s).Encode(ans); err != nil {
			log.Debug("hold proof: answer", "peer", asker, "err", err)
		}
	})
}

func answerHold(ctx context.Context, st *artifact.Store, key crypto.PrivKey, self, asker peer.ID, req holdRequest,
	busy chan struct{}, clock *perPeerClock) holdAnswer {
	if len(req.Nonce) != holdNonceSize || !artifact.ValidDigest(req.Digest) {
		return holdAnswer{Error: "bad request: want a 32-byte nonce and a hex sha256"}
	}
	ref := artifact.Ref{Name: req.Name, Version: req.Version}
	rel, _, err := st.Release(ref)
	if err != nil || rel.Digest != req.Digest || !st.HasBlob(req.Digest) {
		return holdAnswer{}
	}
	if !clock.allow(asker, time.Now()) {
		return holdAnswer{Error: "proof asked too often"}
	}
	ctx, cancel := context.WithTimeout(ctx, holdProofTimeout)
	defer cancel()
	select {
	case busy <- struct{}{}:
		defer func() { <-busy }()
	case <-ctx.Done():
		return holdAnswer{Error: "busy"}
	}
	proof, err := holdProofOfFile(ctx, st.BlobPath(req.Digest), req.Nonce, asker, self)
	if err != nil {
		return holdAnswer{Error: "cannot read the blob"}
	}
	r := HoldReceipt{Holder: self, Asker: asker, Ref: ref, Digest: req.Digest, Nonce: req.Nonce, Proof: proof}
	sig, err := key.Sign(r.Message())
	if err != nil {
		return holdAnswer{Error: "cannot sign"}
	}
	return holdAnswer{Held: true, Proof: proof, Sig: sig}
}

// ConfirmHolder asks p to prove that it holds rel, whose blob this node's store
// must hold: it recomputes the proof from its own copy and checks p's
// signature. It returns ErrNotHeld when p does not hold it yet.
func (n *Node) ConfirmHolder(ctx context.Context, p peer.ID, rel artifact.Release) (HoldReceipt, error) {
	if !n.st.HasBlob(rel.Digest) {
		return HoldReceipt{}, fmt.Errorf("confirm holder: this node does not hold sha256 %s itself", short(rel.Digest))
	}
	nonce := make([]byte, holdNonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return HoldReceipt{}, err
	}
	ans, err := askHold(ctx, n.h, p, holdRequest{Name: rel.Name, Version: rel.Version, Digest: rel.Digest, Nonce: nonce})
	if err != nil {
		return HoldReceipt{}, err
	}
	if !ans.Held {
		if ans.Error != "" {
			return HoldReceipt{}, fmt.Errorf("%w: %s answered: %s", ErrNotHeld, p, ans.Error)
		}
		return HoldReceipt{}, ErrNotHeld
	}
	want, err := holdProofOfFile(ctx, n.st.BlobPath(rel.Digest), nonce, n.h.ID(), p)
	if err != nil {
		return HoldReceipt{}, fmt.Errorf("confirm holder %s: %w", p, err)
	}
	r := HoldReceipt{Holder: p, Asker: n.h.ID(), Ref: rel.Ref(), Digest: rel.Digest, Nonce: nonce, Proof: ans.Proof, Sig: ans.Sig}
	if !bytes.Equal(ans.Proof, want) {
		return HoldReceipt{}, fmt.Errorf("confirm holder %s: its proof of sha256 %s is wrong (%s…): it does not hold the blob",
			p, short(rel.Digest), hex.EncodeToString(ans.Proof[:min(len(ans.Proof), 6)]))
	}
	if err := r.Verify(); err != nil {
		return HoldReceipt{}, fmt.Errorf("confirm holder: %w", err)
	}
	return r, nil
}

func askHold(ctx context.Context, h host.Host, p peer.ID, req holdRequest) (*holdAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, holdProofTimeout)
	defer cancel()
	s, err := h.NewStream(ctx, p, HoldProtocol)
	if err != nil {
		return nil, fmt.Errorf("ask %s for a hold proof: %w", p, err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := json.NewEncoder(s).Encode(req); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("ask %s for a hold proof: %w", p, err)
	}
	_ = s.CloseWrite()
	var ans holdAnswer
	if err := json.NewDecoder(io.LimitReader(s, maxHoldMessage)).Decode(&ans); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("ask %s for a hold proof: %w", p, err)
	}
	return &ans, nil
}
