package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// ReleaseTopic is the gossipsub topic on which nodes announce signed releases.
const ReleaseTopic = "/ballena/releases/1"

// maxAnnouncement bounds one announcement; an envelope with a few signatures
// and provenance is a few KiB.
const maxAnnouncement = 1 << 20

// Announcement is what travels on ReleaseTopic: the signed envelope and, for
// readers that do not parse the statement, the release record it signs. A
// receiver trusts only what the envelope signs and drops an announcement whose
// record differs from it.
type Announcement struct {
	Release  artifact.Release  `json:"release"`
	Envelope *signing.Envelope `json:"envelope"`
}

// VerifyFunc checks an envelope against the local trust policy and returns the
// release it signs.
type VerifyFunc func(env *signing.Envelope) (artifact.Release, error)

// AnnouncementHandler receives announcements that passed verification; from is
// the node that published it, which holds the blob.
type AnnouncementHandler func(from peer.ID, rel artifact.Release, env *signing.Envelope)

// Gossip announces and receives signed releases over gossipsub.
type Gossip struct {
	rejected atomic.Int64 // announcements that failed verification

	scoreMu sync.Mutex
	scores  map[peer.ID]float64 // last gossipsub scores, refreshed every second

	h      host.Host
	ps     *pubsub.PubSub
	topic  *pubsub.Topic
	sub    *pubsub.Subscription
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger
}

// Gossip scoring. A fleet shares one trust policy, so an announcement that
// fails verification here is garbage, not a matter of taste: it is rejected,
// which is an invalid delivery in the sender's score. The penalty is the
// square of the count times invalidWeight, so one stray envelope costs -10,
// and the third puts the sender under the graylist threshold: its messages
// are then ignored without being verified, and it is pruned from the mesh.
// Honest peers earn a little for first deliveries and time in the mesh.
const (
	invalidWeight     = -10
	gossipThreshold   = -20
	publishThreshold  = -40
	graylistThreshold = -80
)

func scoreParams() (*pubsub.PeerScoreParams, *pubsub.PeerScoreThresholds) {
	topic := &pubsub.TopicScoreParams{
		TopicWeight:                    1,
		TimeInMeshWeight:               0.01,
		TimeInMeshQuantum:              time.Second,
		TimeInMeshCap:                  100,
		FirstMessageDeliveriesWeight:   1,
		FirstMessageDeliveriesDecay:    pubsub.ScoreParameterDecay(time.Hour),
		FirstMessageDeliveriesCap:      10,
		InvalidMessageDeliveriesWeight: invalidWeight,
		InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(time.Hour),
	}
	params := &pubsub.PeerScoreParams{
		Topics:            map[string]*pubsub.TopicScoreParams{ReleaseTopic: topic},
		TopicScoreCap:     50,
		AppSpecificScore:  func(peer.ID) float64 { return 0 },
		AppSpecificWeight: 1,
		// Fleet machines may share an address (NAT, one host in tests): no colocation penalty.
		IPColocationFactorWeight: 0,
		BehaviourPenaltyWeight:   -1,
		BehaviourPenaltyDecay:    pubsub.ScoreParameterDecay(10 * time.Minute),
		DecayInterval:            time.Second,
		DecayToZero:              0.01,
		RetainScore:              time.Hour,
	}
	thresholds := &pubsub.PeerScoreThresholds{
		GossipThreshold:             gossipThreshold,
		PublishThreshold:            publishThreshold,
		GraylistThreshold:           graylistThreshold,
		AcceptPXThreshold:           0, // peer exchange from any peer in good standing, as before scoring
		OpportunisticGraftThreshold: 2,
	}
	return params, thresholds
}

// NewGossip joins ReleaseTopic. Every message from another node goes through
// verify before it is delivered to handle or forwarded: an announcement that
// the local policy does not trust is rejected here, goes no further, and
// counts against the peer that sent it (see scoreParams). Flood publishing is
// on so that an announcement reaches every subscribed peer even before the
// mesh has formed.
func NewGossip(ctx context.Context, h host.Host, verify VerifyFunc, handle AnnouncementHandler, log *slog.Logger) (*Gossip, error) {
	g := &Gossip{h: h, done: make(chan struct{}), log: log, scores: make(map[peer.ID]float64)}
	params, thresholds := scoreParams()
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerExchange(true),
		pubsub.WithMaxMessageSize(maxAnnouncement),
		pubsub.WithPeerScore(params, thresholds),
		pubsub.WithPeerScoreInspect(g.inspect, time.Second),
	)
	if err != nil {
		return nil, fmt.Errorf("gossipsub: %w", err)
	}
	self := h.ID()
	validate := func(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
		if from == self {
			return pubsub.ValidationAccept // our own publish: the receivers judge it
		}
		rel, env, err := checkAnnouncement(msg.Data, verify)
		if err != nil {
			g.rejected.Add(1)
			log.Warn("rejecting release announcement", "from", from, "origin", msg.GetFrom(), "err", err)
			return pubsub.ValidationReject
		}
		msg.ValidatorData = Announcement{Release: rel, Envelope: env}
		return pubsub.ValidationAccept
	}
	if err := ps.RegisterTopicValidator(ReleaseTopic, validate); err != nil {
		return nil, fmt.Errorf("gossipsub: %w", err)
	}
	topic, err := ps.Join(ReleaseTopic)
	if err != nil {
		return nil, fmt.Errorf("gossipsub: join %s: %w", ReleaseTopic, err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		return nil, fmt.Errorf("gossipsub: subscribe %s: %w", ReleaseTopic, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	g.ps, g.topic, g.sub, g.cancel = ps, topic, sub, cancel
	go g.receive(ctx, handle)
	return g, nil
}

// inspect keeps the scores gossipsub computes, for Score and Status.
func (g *Gossip) inspect(scores map[peer.ID]float64) {
	g.scoreMu.Lock()
	g.scores = scores
	g.scoreMu.Unlock()
}

// Score is p's gossip score as of the last second; ok is false if gossipsub has none.
func (g *Gossip) Score(p peer.ID) (score float64, ok bool) {
	g.scoreMu.Lock()
	defer g.scoreMu.Unlock()
	score, ok = g.scores[p]
	return score, ok
}

// GossipStatus is what the release gossip reports in Status.
type GossipStatus struct {
	Rejected   int64    `json:"rejected"`             // announcements that failed verification
	Graylisted []string `json:"graylisted,omitempty"` // peers whose gossip is ignored for their score
}

// Status reports rejected announcements and graylisted peers.
func (g *Gossip) Status() GossipStatus {
	s := GossipStatus{Rejected: g.rejected.Load()}
	g.scoreMu.Lock()
	for p, sc := range g.scores {
		if sc < graylistThreshold {
			s.Graylisted = append(s.Graylisted, p.String())
		}
	}
	g.scoreMu.Unlock()
	slices.Sort(s.Graylisted)
	return s
}

// checkAnnouncement decodes an announcement, verifies its envelope and checks
// that the record beside it is the one signed.
func checkAnnouncement(data []byte, verify VerifyFunc) (artifact.Release, *signing.Envelope, error) {
	var ann Announcement
	if err := json.Unmarshal(data, &ann); err != nil {
		return artifact.Release{}, nil, fmt.Errorf("announcement: %w", err)
	}
	if ann.Envelope == nil {
		return artifact.Release{}, nil, errors.New("announcement: no envelope")
	}
	rel, err := verify(ann.Envelope)
	if err != nil {
		return artifact.Release{}, nil, fmt.Errorf("announcement of %s: %w", ann.Release.Ref(), err)
	}
	a := ann.Release
	if a.Name != rel.Name || a.Version != rel.Version || a.Digest != rel.Digest ||
		a.Size != rel.Size || a.InfoHash != rel.InfoHash {
		return artifact.Release{}, nil, fmt.Errorf("announcement of %s: record differs from the signed release %s: %w",
			a.Ref(), rel.Ref(), signing.ErrSubjectMismatch)
	}
	return rel, ann.Envelope, nil
}

func (g *Gossip) receive(ctx context.Context, handle AnnouncementHandler) {
	defer close(g.done)
	for {
		msg, err := g.sub.Next(ctx)
		if err != nil {
			return // cancelled or closed
		}
		if msg.ReceivedFrom == g.h.ID() {
			continue
		}
		ann, ok := msg.ValidatorData.(Announcement)
		if !ok {
			continue
		}
		origin := msg.GetFrom()
		g.log.Info("release announcement received", "release", ann.Release.Ref(), "digest", ann.Release.Digest, "by", origin)
		handle(origin, ann.Release, ann.Envelope)
	}
}

// Announce publishes a signed release.
func (g *Gossip) Announce(ctx context.Context, rel artifact.Release, env *signing.Envelope) error {
	b, err := json.Marshal(Announcement{Release: rel, Envelope: env})
	if err != nil {
		return fmt.Errorf("announce %s: %w", rel.Ref(), err)
	}
	if err := g.topic.Publish(ctx, b); err != nil {
		return fmt.Errorf("announce %s: %w", rel.Ref(), err)
	}
	return nil
}

// Peers lists the peers known to be subscribed to ReleaseTopic.
func (g *Gossip) Peers() []peer.ID { return g.topic.ListPeers() }

// Close leaves the topic.
func (g *Gossip) Close() error {
	g.cancel()
	g.sub.Cancel()
	<-g.done
	// Once the node's context is gone pubsub refuses the request; nothing to undo then.
	if err := g.topic.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
