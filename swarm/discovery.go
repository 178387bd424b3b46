package swarm

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
)

// DHTPrefix keeps Ballena's DHT apart from the public IPFS one: nodes only
// answer queries on /ballena/kad/1.0.0.
const DHTPrefix = "/ballena"

// reprovideInterval is well within the DHT's 48h provider record validity.
const reprovideInterval = 12 * time.Hour

// DigestCID is the DHT key of a blob: CIDv1, raw codec, whose multihash digest is
// the blob's sha256. Any IPFS tool computes the same CID for the same bytes.
func DigestCID(digest string) (cid.Cid, error) {
	b, err := hex.DecodeString(digest)
	if err != nil || len(b) != 32 {
		return cid.Undef, fmt.Errorf("digest %q is not a hex sha256", digest)
	}
	m, err := mh.Encode(b, mh.SHA2_256)
	if err != nil {
		return cid.Undef, err
	}
	return cid.NewCidV1(cid.Raw, m), nil
}

// Discovery finds which nodes hold a blob through kad-dht provider records.
type Discovery struct {
	h   host.Host
	dht *dht.IpfsDHT
	log *slog.Logger
}

// NewDiscovery starts a DHT server on h with Ballena's protocol prefix. Every
// fleet node serves the DHT: fleets are small enough, and a loopback or LAN
// address would otherwise keep a node in client mode forever.
func NewDiscovery(h host.Host, bootstrap []peer.AddrInfo, log *slog.Logger) (*Discovery, error) {
	d, err := dht.New(h,
		dht.ProtocolPrefix(DHTPrefix),
		dht.Mode(dht.ModeServer),
		dht.BootstrapPeers(bootstrap...),
	)
	if err != nil {
		return nil, fmt.Errorf("dht: %w", err)
	}
	return &Discovery{h: h, dht: d, log: log}, nil
}

// Bootstrap fills the routing table from the bootstrap and connected peers.
func (d *Discovery) Bootstrap(ctx context.Context) error {
	return d.dht.Bootstrap(ctx)
}

// RoutingTableSize is how many DHT peers this node knows.
func (d *Discovery) RoutingTableSize() int { return d.dht.RoutingTable().Size() }

// WaitReady blocks until the routing table holds at least one peer, which a
// provide or lookup needs, or ctx ends.
func (d *Discovery) WaitReady(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for d.dht.RoutingTable().Size() == 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("dht: no routing peers: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Provide records this node as a holder of digest, locally at once and on the
// DHT peers closest to its key.
func (d *Discovery) Provide(ctx context.Context, digest string) error {
	c, err := DigestCID(digest)
	if err != nil {
		return err
	}
	if err := d.dht.Provide(ctx, c, true); err != nil {
		return fmt.Errorf("dht provide %s: %w", short(digest), err)
	}
	return nil
}

// FindProviders streams up to max holders of digest (never this node) until
// the lookup ends or ctx does.
func (d *Discovery) FindProviders(ctx context.Context, digest string, max int) (<-chan peer.AddrInfo, error) {
	c, err := DigestCID(digest)
	if err != nil {
		return nil, err
	}
	in := d.dht.FindProvidersAsync(ctx, c, max)
	out := make(chan peer.AddrInfo)
	go func() {
		defer close(out)
		for pi := range in {
			if pi.ID == d.h.ID() {
				continue
			}
			select {
			case out <- pi:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Close stops the DHT.
func (d *Discovery) Close() error { return d.dht.Close() }

// FindPeer looks up a node's addresses on the DHT.
func (d *Discovery) FindPeer(ctx context.Context, p peer.ID) (peer.AddrInfo, error) {
	return d.dht.FindPeer(ctx, p)
}
