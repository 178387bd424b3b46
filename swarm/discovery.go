package swarm

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
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

// mdnsService is the mDNS service name, so that only Ballena nodes answer each other.
const mdnsService = "_ballena._udp"

// Connecting to a peer found by mDNS.
//
// Two nodes on a link usually find each other in the same mDNS exchange (each
// one's query is answered by the other, and the answers are multicast), so if
// both dial at once their SYNs cross. libp2p's TCP transport dials from the
// port it listens on (SO_REUSEPORT), so crossing SYNs are a TCP simultaneous
// open: one connection on which both sides are the initiator, both send a TLS
// ClientHello, and both handshakes fail. The mDNS client reports each peer only
// once per record (its cache lives for the record's TTL, about an hour), so a
// failed dial would leave the two nodes apart for that long.
//
// So only one side dials first: the node with the smaller peer ID dials at
// once; the other waits mdnsYield for that connection and dials only if it does
// not come (the smaller one cannot reach it, or did not hear of it). Failed
// dials are tried again, a bounded number of times.
const (
	// mdnsYield is how long the node with the greater peer ID waits for the
	// other to connect before each of its own dials. On a link the other's dial
	// takes milliseconds; this only delays the fallback.
	mdnsYield = 3 * time.Second
	// mdnsDialTimeout bounds one connect attempt.
	mdnsDialTimeout = 15 * time.Second
	// mdnsAttempts bounds the connect attempts per discovered peer; the pause
	// between them starts at mdnsRetry and doubles, with jitter.
	mdnsAttempts = 5
	mdnsRetry    = time.Second
)

// StartMDNS announces and discovers nodes on the local link and connects to
// those it finds. Close the returned closer to stop.
func StartMDNS(ctx context.Context, h host.Host, log *slog.Logger) (io.Closer, error) {
	ctx, cancel := context.WithCancel(ctx)
	m := &mdnsConnector{ctx: ctx, cancel: cancel, h: h, log: log, dials: map[peer.ID]*mdnsDial{}}
	m.notifiee = &network.NotifyBundle{ConnectedF: m.connected}
	h.Network().Notify(m.notifiee)
	m.svc = mdns.NewMdnsService(h, mdnsService, m)
	if err := m.svc.Start(); err != nil {
		m.Close()
		return nil, fmt.Errorf("mdns: %w", err)
	}
	return m, nil
}

// mdnsConnector is the mDNS service's notifee: it connects to the peers found.
type mdnsConnector struct {
	ctx      context.Context // ends on Close
	cancel   context.CancelFunc
	h        host.Host
	log      *slog.Logger
	svc      mdns.Service
	notifiee network.Notifiee

	mu     sync.Mutex
	closed bool
	dials  map[peer.ID]*mdnsDial // peers being connected to
	wg     sync.WaitGroup
}

// mdnsDial is one peer being connected to.
type mdnsDial struct {
	connected chan struct{} // closed when a connection to the peer opens
	done      bool          // connected is closed
}

// HandlePeerFound starts connecting to a peer mDNS found, unless that already
// runs; then the addresses found are added for its next attempt.
func (m *mdnsConnector) HandlePeerFound(pi peer.AddrInfo) {
	if pi.ID == m.h.ID() {
		return
	}
	m.h.Peerstore().AddAddrs(pi.ID, pi.Addrs, peerstore.TempAddrTTL)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.dials[pi.ID] != nil {
		return
	}
	d := &mdnsDial{connected: make(chan struct{})}
	m.dials[pi.ID] = d
	m.wg.Go(func() {
		m.connect(pi, d.connected)
		m.mu.Lock()
		delete(m.dials, pi.ID)
		m.mu.Unlock()
	})
}

// connected is the network notifiee's callback for every new connection.
func (m *mdnsConnector) connected(_ network.Network, c network.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d := m.dials[c.RemotePeer()]; d != nil && !d.done {
		d.done = true
		close(d.connected)
	}
}

// connect dials pi until a connection to it exists (ours or its), at most
// mdnsAttempts times, yielding to its dial if its peer ID is the smaller.
func (m *mdnsConnector) connect(pi peer.AddrInfo, connected <-chan struct{}) {
	yield := time.Duration(0)
	if pi.ID < m.h.ID() {
		yield = mdnsYield
	}
	wait, retry := yield, mdnsRetry
	for attempt := 1; ; attempt++ {
		if m.h.Network().Connectedness(pi.ID) == network.Connected {
			return
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-connected:
			case <-m.ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		if m.ctx.Err() != nil || m.h.Network().Connectedness(pi.ID) == network.Connected {
			return
		}
		ctx, cancel := context.WithTimeout(m.ctx, mdnsDialTimeout)
		if attempt > 1 {
			// The swarm keeps failed addresses in a dial backoff (5s and up);
			// these few, bounded attempts are meant to reach them.
			ctx = network.WithForceDirectDial(ctx, "mdns retry")
		}
		err := m.h.Connect(ctx, pi) // and every address found since, which the peerstore holds
		cancel()
		if err == nil {
			m.log.Info("mdns: connected", "peer", pi.ID)
			return
		}
		if m.ctx.Err() != nil {
			return
		}
		if attempt == mdnsAttempts {
			m.log.Warn("mdns: cannot connect to a peer on the link", "peer", pi.ID, "attempts", attempt, "err", err)
			return
		}
		m.log.Debug("mdns: connect", "peer", pi.ID, "attempt", attempt, "err", err)
		wait = yield + retry + rand.N(retry/2)
		retry *= 2
	}
}

// Close stops announcing and discovering, and the connect attempts running.
func (m *mdnsConnector) Close() error {
	var err error
	if m.svc != nil {
		err = m.svc.Close()
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	m.h.Network().StopNotify(m.notifiee)
	return err
}
