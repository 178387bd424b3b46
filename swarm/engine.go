package swarm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	alog "github.com/anacrolix/log"
	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"golang.org/x/time/rate"
)

// BlobStore is where the engine finds blobs to seed and puts finished downloads.
// *artifact.Store satisfies it.
type BlobStore interface {
	BlobPath(digest string) string
	HasBlob(digest string) bool
	// TempDir is on the same filesystem as the blobs.
	TempDir() string
	// AdoptHashed moves path into place as the blob of digest, which the
	// caller computed from path's bytes after their last write.
	AdoptHashed(ctx context.Context, path, digest string) error
}

// EngineConfig configures an Engine.
type EngineConfig struct {
	// DataDir holds the engine's own state: piece completion and cached torrent info.
	DataDir string
	// Host carries the peer wire between fleet nodes. Nil means plain TCP only.
	Host host.Host
	// PlainListen is a TCP address for standard BitTorrent clients, such as
	// "127.0.0.1:0". Empty disables it.
	PlainListen string
	// TrackerListen is a TCP address for the HTTP tracker that standard clients
	// announce to, such as "127.0.0.1:0". Empty disables it. It hands out
	// PlainListen's address, so it needs PlainListen.
	TrackerListen string
	// UploadLimit and DownloadLimit cap the node's peer traffic in bytes per
	// second; 0 is unlimited.
	UploadLimit, DownloadLimit int64
	// StallTimeout fails a download that verified no piece for this long; 0 means
	// DefaultStallTimeout.
	StallTimeout time.Duration
	// PartialTimeout removes a partial download that no transfer wants once its
	// files have not been written for this long; 0 leaves them (RemovePartials
	// still can).
	PartialTimeout time.Duration
	// NoSuperSeed turns off super-seeding (see superseeder.go) on the
	// torrents this node seeds from its store; for measurements.
	NoSuperSeed bool
	// Rack is this node's rack label; with one, the node prefers peers of its
	// own rack for the pieces they hold (see rackconn.go).
	Rack string
	// BulkListen is where the node takes bulk connections (bulkconn.go),
	// host:port: "" for the IP of the host's first TCP listen address at any
	// port, BulkOff for none, so the peer wire runs in libp2p streams only.
	BulkListen string
	// PSK and Gate are the host's, for bulk connections: they let in whom
	// the host would.
	PSK    pnet.PSK
	Gate   *Gate
	Store  BlobStore
	Logger *slog.Logger
}

// Engine moves artifact blobs between nodes with BitTorrent: over libp2p streams
// between fleet nodes and, optionally, over plain TCP for standard clients.
type Engine struct {
	cfg        EngineConfig
	log        *slog.Logger
	cl         *torrent.Client
	addrs      *peerAddrs
	p2p        *p2pTransport
	bulk       *bulkNet // nil: libp2p streams only
	plain      net.Listener
	tracker    *tracker
	bolt       storage.PieceCompletion
	completion *trustedCompletion
	samples    atomic.Int64 // sampling rounds done, for tests to await
	ss         *superSeeder
	racks      *racks        // nil: rack-blind
	up         *rate.Limiter // nil: no upload cap

	mu        sync.Mutex
	transfers map[string]*transfer      // by digest
	known     map[metainfo.Hash]peerSet // peers learned before or during a transfer
	stopRates context.CancelFunc
	notifiee  network.Notifiee // forgets peers that have gone; nil without a host
}

// NewEngine starts a BitTorrent client on cfg.Host and cfg.PlainListen.
func NewEngine(ctx context.Context, cfg EngineConfig) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("swarm engine: no blob store")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("swarm engine: no data dir")
	}
	if cfg.Host == nil && cfg.PlainListen == "" {
		return nil, errors.New("swarm engine: neither a libp2p host nor a plain listen address")
	}
	if cfg.TrackerListen != "" && cfg.PlainListen == "" {
		return nil, errors.New("swarm engine: the tracker needs a plain listen address to hand out")
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	dir := filepath.Join(cfg.DataDir, "bt")
	if err := os.MkdirAll(filepath.Join(dir, "info"), 0o700); err != nil {
		return nil, fmt.Errorf("swarm engine: %w", err)
	}
	bolt, err := openBoltCompletion(dir)
	if err != nil {
		return nil, fmt.Errorf("swarm engine: piece completion db in %s: %w", dir, err)
	}
	e := &Engine{
		cfg:        cfg,
		log:        lg,
		addrs:      newPeerAddrs(),
		bolt:       bolt,
		completion: newTrustedCompletion(bolt),
		transfers:  make(map[string]*transfer),
		known:      make(map[metainfo.Hash]peerSet),
	}
	if cfg.UploadLimit > 0 {
		e.up = rate.NewLimiter(rate.Limit(cfg.UploadLimit), limiterBurst(cfg.UploadLimit))
	}
	tc := e.clientConfig()
	cl, err := torrent.NewClient(tc)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("swarm engine: %w", err)
	}
	e.cl = cl
	if cfg.Host != nil {
		if !cfg.NoSuperSeed {
			e.ss = newSuperSeeder()
		}
		e.watchPeers(cfg.Host)
		e.serveInfo()
		e.p2p = newP2PTransport(cfg.Host, e.addrs, e.ss, e.up, lg)
		if cfg.BulkListen != BulkOff {
			e.bulk, err = newBulkNet(cfg.Host, bulkConfig{
				listen: cfg.BulkListen, psk: cfg.PSK, gate: cfg.Gate, log: lg,
				deliver: func(c net.Conn, p peer.ID) bool { return e.p2p.deliver(c, p) },
			})
			if err != nil {
				e.Close()
				return nil, fmt.Errorf("swarm engine: %w", err)
			}
			e.p2p.bulk = e.bulk
		}
		if cfg.Rack != "" {
			e.racks = newRacks(cfg.Host, cfg.Rack, e.numPieces, lg)
			e.p2p.racks = e.racks
		}
		cl.AddListener(e.p2p)
		cl.AddDialer(e.p2p)
	}
	if cfg.PlainListen != "" {
		ln, err := net.Listen("tcp", cfg.PlainListen)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("swarm engine: plain listener: %w", err)
		}
		e.plain = ln
		cl.AddListener(limitedListener{ln, e.up})
		cl.AddDialer(plainDialer{e.up})
	}
	if cfg.TrackerListen != "" {
		tr, err := startTracker(cfg.TrackerListen, e.plain.Addr().(*net.TCPAddr), e.hasInfoHash, lg)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("swarm engine: tracker: %w", err)
		}
		e.tracker = tr
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.stopRates = cancel
	go e.sampleRates(rctx)
	if cfg.PartialTimeout > 0 {
		go e.sweepPartials(rctx)
	}
	return e, nil
}

// stealRequestGrace is how long a peer keeps a request before another may
// take it over (see clientConfig).
const stealRequestGrace = 500 * time.Millisecond

func (e *Engine) clientConfig() *torrent.ClientConfig {
	tc := torrent.NewDefaultClientConfig()
	tc.DataDir = filepath.Join(e.cfg.DataDir, "bt")
	// Every torrent brings its own storage (blobStorage); without this the client
	// opens a second bbolt completion db in DataDir and waits a second for its lock.
	tc.DefaultStorage = storage.NewFileWithCompletion(tc.DataDir, storage.NewMapPieceCompletion())
	tc.Seed = true
	// Our own listeners and dialers only: libp2p streams and, if asked, plain TCP.
	tc.DisableTCP = true
	tc.DisableUTP = true
	tc.NoDHT = true
	tc.DisableTrackers = true
	tc.DisablePEX = true // peers come from the mesh; PEX would spread synthetic addresses
	tc.DisableWebseeds = true
	tc.DisableWebtorrent = true
	tc.NoDefaultPortForwarding = true
	tc.DisableAcceptRateLimiting = true
	// libp2p already encrypts; MSE on top would only burn CPU.
	tc.HeaderObfuscationPolicy = torrent.HeaderObfuscationPolicy{}
	// The piece data a seeder holds in memory for one connection's requests:
	// maxPipelinedRequests requests of fetchChunkSize's largest chunk. With the
	// default (1 MiB, one such request) a seeder stalls after about 2 MiB; a
	// peer that asks for more than this waits for its earlier requests to go out.
	tc.MaxAllocPeerRequestDataPerConn = maxPipelinedRequests * maxChunk
	tc.DropMutuallyCompletePeers = true
	// A request another peer holds may be stolen only after this long. Without
	// it, a leecher near the end re-requests pieces whose bytes the holder has
	// already put on the (rate-limited) wire, and both copies arrive: 8 capped
	// leechers received 5-7% of the blob twice and finished in 1.16-1.19× the
	// fluid bound; with 500ms, none twice, in 1.10-1.11× (README, benchmarks).
	tc.StealRequestGrace = stealRequestGrace
	// The default (64 MiB) is counted over requestable pieces in request order,
	// and pieces no peer shows come first: with super-seeding most pieces are
	// hidden at first, so past 64 MiB of them a leecher would stop requesting.
	tc.MaxUnverifiedBytes = 0
	tc.Slogger = slog.New(quietHandler{e.log.Handler()}).With("component", "torrent")
	tc.Logger = alog.Default.WithFilterLevel(alog.Warning)
	// The upload cap is on the connections (see uploadLimitedConn).
	if e.cfg.DownloadLimit > 0 {
		tc.DownloadRateLimiter = rate.NewLimiter(rate.Limit(e.cfg.DownloadLimit), limiterBurst(e.cfg.DownloadLimit))
	}
	return tc
}

// PlainAddr is the plain TCP BitTorrent address, or nil.
func (e *Engine) PlainAddr() net.Addr {
	if e.plain == nil {
		return nil
	}
	return e.plain.Addr()
}

// TrackerURL is the announce URL of the engine's HTTP tracker, or "".
func (e *Engine) TrackerURL() string {
	if e.tracker == nil {
		return ""
	}
	return e.tracker.url()
}

// Close stops every transfer and the client. Verified pieces stay for a resume.
func (e *Engine) Close() error {
	if e.stopRates != nil {
		e.stopRates()
	}
	if e.tracker != nil {
		e.tracker.close()
	}
	if e.p2p != nil {
		e.cfg.Host.RemoveStreamHandler(InfoProtocol)
		e.p2p.Close()
	}
	if e.bulk != nil {
		e.bulk.Close()
	}
	if e.notifiee != nil {
		e.cfg.Host.Network().StopNotify(e.notifiee)
	}
	if e.ss != nil {
		e.ss.close()
	}
	if e.racks != nil {
		e.racks.close()
	}
	if e.plain != nil {
		e.plain.Close()
	}
	var errs []error
	if e.cl != nil {
		errs = append(errs, e.cl.Close()...)
	}
	e.mu.Lock()
	trs := slices.Collect(maps.Values(e.transfers))
	e.mu.Unlock()
	for _, tr := range trs {
		<-tr.done
	}
	errs = append(errs, e.bolt.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("swarm engine close: %w", err)
	}
	return nil
}

func (e *Engine) hasInfoHash(ih metainfo.Hash) bool {
	_, ok := e.cl.Torrent(ih)
	return ok
}

func short(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}
