package swarm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	alog "github.com/anacrolix/log"
	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	pp "github.com/anacrolix/torrent/peer_protocol"
	"github.com/anacrolix/torrent/storage"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"ballena.dev/artifact"
)

// ErrUnavailable means no peer served an artifact's bytes within the stall timeout.
var ErrUnavailable = errors.New("unavailable")

// DefaultStallTimeout is how long a download may go without receiving any data
// before it fails.
const DefaultStallTimeout = 30 * time.Second

// BlobStore is where the engine finds blobs to seed and puts finished downloads.
// *artifact.Store satisfies it.
type BlobStore interface {
	BlobPath(digest string) string
	HasBlob(digest string) bool
	// TempDir is on the same filesystem as the blobs.
	TempDir() string
	// AdoptFile re-hashes path against wantDigest and moves it into place.
	AdoptFile(ctx context.Context, path, wantDigest string) error
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
	// StallTimeout fails a download that received no data for this long; 0 means
	// DefaultStallTimeout.
	StallTimeout time.Duration
	// NoSuperSeed turns off super-seeding (see p2pconn_superseed.go) on the
	// torrents this node seeds from its store; for measurements.
	NoSuperSeed bool
	Store       BlobStore
	Logger      *slog.Logger
}

// Progress is a snapshot of one download.
type Progress struct {
	Digest       string
	Have, Total  int64
	Peers        int
	DownloadRate float64 // bytes per second
}

// TransferStats describes one torrent the engine runs.
type TransferStats struct {
	Digest          string  `json:"digest"`
	Name            string  `json:"name"`
	InfoHash        string  `json:"infoHash"`
	Seeding         bool    `json:"seeding"`
	BytesHave       int64   `json:"bytesHave"`
	BytesTotal      int64   `json:"bytesTotal"`
	UploadRate      float64 `json:"uploadRate"`   // bytes per second
	DownloadRate    float64 `json:"downloadRate"` // bytes per second
	Peers           int     `json:"peers"`
	BytesUploaded   int64   `json:"bytesUploaded"`   // piece data sent
	BytesDownloaded int64   `json:"bytesDownloaded"` // piece data received, useful or not
	// While the download ran, in steps of sampleEvery: time in which no piece
	// data arrived, and time in which none was sent although the node held
	// verified pieces. Where a swarm loses time against the fluid bound.
	DownloadIdleSeconds float64 `json:"downloadIdleSeconds,omitempty"`
	UploadIdleSeconds   float64 `json:"uploadIdleSeconds,omitempty"`
}

// Engine moves artifact blobs between nodes with BitTorrent: over libp2p streams
// between fleet nodes and, optionally, over plain TCP for standard clients.
type Engine struct {
	cfg        EngineConfig
	log        *slog.Logger
	cl         *torrent.Client
	addrs      *peerAddrs
	p2p        *p2pTransport
	plain      net.Listener
	tracker    *tracker
	bolt       storage.PieceCompletion
	completion *trustedCompletion
	samples    atomic.Int64 // sampling rounds done, for tests to await
	ss         *superSeeder
	up         *rate.Limiter // nil: no upload cap

	mu        sync.Mutex
	transfers map[string]*transfer      // by digest
	known     map[metainfo.Hash]peerSet // peers learned before or during a transfer
	stopRates context.CancelFunc
}

type peerSet map[string]torrent.PeerInfo

type transfer struct {
	rel      artifact.Release
	ih       metainfo.Hash
	t        *torrent.Torrent
	staging  string        // staging dir for downloads; "" when seeding from the store
	done     chan struct{} // closed when the download ended
	err      error         // why it ended, nil if the blob is in the store
	seeding  bool
	lastAt   time.Time
	lastUp   int64
	lastDown int64
	upRate   float64
	downRate float64

	sampleAt             time.Time
	sampleUp, sampleDown int64
	idleUp, idleDown     time.Duration
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
	bolt, err := storage.NewBoltPieceCompletion(dir)
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
		e.p2p = newP2PTransport(cfg.Host, e.addrs, e.ss, e.up)
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
	return e, nil
}

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
	// With the default (1 MiB) a seeder stalls after about 2 MiB.
	tc.MaxAllocPeerRequestDataPerConn = 32 << 20
	tc.DropMutuallyCompletePeers = true
	// The default (64 MiB) is counted over requestable pieces in request order,
	// and pieces no peer shows come first: with super-seeding most pieces are
	// hidden at first, so past 64 MiB of them a leecher would stop requesting.
	tc.MaxUnverifiedBytes = 0
	tc.Slogger = e.log.With("component", "torrent")
	tc.Logger = alog.Default.WithFilterLevel(alog.Warning)
	// The upload cap is on the connections (see uploadLimitedConn).
	if e.cfg.DownloadLimit > 0 {
		tc.DownloadRateLimiter = rate.NewLimiter(rate.Limit(e.cfg.DownloadLimit), limiterBurst(e.cfg.DownloadLimit))
	}
	return tc
}

// fetchChunkSize is the request size of a download: a whole piece, up to
// 1 MiB. Fleet peers are anacrolix engines that serve any length; requesting
// 16 KiB chunks (the BitTorrent default) multiplies the per-request work
// (request planning, messages, writes, syscalls) by the pieces' sixteen chunks,
// and on a loaded node that work, not the link, bounds the rate.
func fetchChunkSize(pieceLength int64) pp.Integer {
	if pieceLength <= 0 {
		return 0 // the default
	}
	return pp.Integer(min(pieceLength, 1<<20))
}

// limiterBurst is the rate limiters' burst. Reads and writes are cut to fit it,
// so it only trades wake-ups against how far the cap may overshoot over a
// short window.
func limiterBurst(limit int64) int {
	return int(max(256<<10, min(limit/8, 1<<20)))
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

// Seed serves a blob that is already in the store until Drop.
func (e *Engine) Seed(ctx context.Context, rel artifact.Release) error {
	if err := checkRelease(rel); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if !e.cfg.Store.HasBlob(rel.Digest) {
		return fmt.Errorf("seed %s: %w", short(rel.Digest), artifact.ErrNotFound)
	}
	e.mu.Lock()
	if tr, ok := e.transfers[rel.Digest]; ok {
		e.mu.Unlock()
		if tr.seeding {
			return nil
		}
		// A download of the same blob is running; it seeds once done.
		return nil
	}
	e.mu.Unlock()
	infoBytes, err := e.infoBytes(ctx, rel)
	if err != nil {
		return fmt.Errorf("seed %s: %w", short(rel.Digest), err)
	}
	ih := metainfo.HashBytes(infoBytes)
	// The store verified the blob's sha256 when it took it in, and the infohash we
	// just checked binds these piece hashes to it: skip re-hashing every piece.
	e.completion.trust(ih)
	if e.ss != nil {
		var info metainfo.Info
		if err := bencode.Unmarshal(infoBytes, &info); err != nil {
			return fmt.Errorf("seed %s: %w", short(rel.Digest), err)
		}
		e.ss.add(ih, &info)
	}
	blob := e.cfg.Store.BlobPath(rel.Digest)
	t, _ := e.cl.AddTorrentOpt(torrent.AddTorrentOpts{
		InfoHash:  ih,
		InfoBytes: infoBytes,
		Storage:   blobStorage{path: blob, readOnly: true, completion: e.completion},
	})
	done := make(chan struct{})
	close(done)
	tr := &transfer{rel: rel, ih: ih, t: t, done: done, seeding: true}
	e.mu.Lock()
	e.transfers[rel.Digest] = tr
	e.addKnownLocked(tr)
	e.mu.Unlock()
	// A finished download may have left its staging link behind in a crash.
	os.RemoveAll(e.stagingDir(rel.Digest))
	e.log.Debug("seeding", "digest", short(rel.Digest), "infohash", ih.HexString())
	return nil
}

// Download fetches a blob from peers into a staging dir, checks every piece and
// then the whole blob against rel.Digest, moves it into the store, and keeps
// seeding it. A download that was interrupted, even by kill -9, resumes from the
// pieces it had verified. It fails with ErrUnavailable when no data arrives for
// the stall timeout; if nothing had arrived at all it leaves nothing behind.
func (e *Engine) Download(ctx context.Context, rel artifact.Release, progress func(Progress)) error {
	if err := checkRelease(rel); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if e.cfg.Store.HasBlob(rel.Digest) {
		return e.Seed(ctx, rel)
	}
	ih := metainfo.NewHashFromHex(rel.InfoHash)
	e.mu.Lock()
	tr, ok := e.transfers[rel.Digest]
	if !ok {
		tr = &transfer{rel: rel, ih: ih, staging: e.stagingDir(rel.Digest), done: make(chan struct{})}
		e.transfers[rel.Digest] = tr
		e.mu.Unlock()
		go e.run(tr)
	} else {
		e.mu.Unlock()
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tr.done:
			if progress != nil {
				progress(e.progress(tr))
			}
			return tr.err
		case <-ctx.Done():
			// The transfer goes on for other callers and for the swarm; Drop ends it.
			return fmt.Errorf("download %s: %w", short(rel.Digest), ctx.Err())
		case <-tick.C:
			if progress != nil {
				progress(e.progress(tr))
			}
		}
	}
}

// run drives one download to its end and records why it ended in tr.err.
func (e *Engine) run(tr *transfer) {
	err := e.fetch(tr)
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		tr.err = err
		if e.transfers[tr.rel.Digest] == tr {
			delete(e.transfers, tr.rel.Digest)
		}
		if tr.t != nil {
			tr.t.Drop()
		}
	} else {
		tr.seeding = true
	}
	close(tr.done)
}

func (e *Engine) fetch(tr *transfer) error {
	rel := tr.rel
	if err := os.MkdirAll(tr.staging, 0o700); err != nil {
		return fmt.Errorf("download %s: %w", short(rel.Digest), err)
	}
	// Reserve the blob's room now, from the signed size: anacrolix opens the
	// storage only once the info arrives and swallows an error there, so a full
	// disk would look like a swarm with nothing to give.
	staged := filepath.Join(tr.staging, rel.Digest)
	fresh, err := reserve(staged, rel.Size)
	if err != nil {
		os.Remove(tr.staging) // only if empty: a partial download stays for a resume
		return fmt.Errorf("download %s: %w", short(rel.Digest), err)
	}
	opts := torrent.AddTorrentOpts{
		InfoHash:  tr.ih,
		Storage:   blobStorage{path: staged, fresh: fresh, completion: e.completion},
		ChunkSize: fetchChunkSize(rel.PieceLength),
	}
	if b, err := e.cachedInfo(tr.ih); err == nil {
		opts.InfoBytes = b
	}
	t, _ := e.cl.AddTorrentOpt(opts)
	e.mu.Lock()
	tr.t = t
	dropped := e.transfers[rel.Digest] != tr
	e.addKnownLocked(tr)
	e.mu.Unlock()
	if dropped { // Drop ran before the torrent existed
		t.Drop()
		os.RemoveAll(tr.staging)
		return fmt.Errorf("download %s: dropped", short(rel.Digest))
	}

	stall := time.NewTimer(e.cfg.StallTimeout)
	defer stall.Stop()
	cleanup := func(err error) error {
		// Keep verified pieces for a later resume; leave nothing if there are none.
		if verifiedBytes(t) == 0 {
			t.Drop()
			os.RemoveAll(tr.staging)
		}
		return err
	}
	select {
	case <-t.GotInfo():
	case <-stall.C:
		return cleanup(fmt.Errorf("download %s: no peer holds it (none sent its torrent info within %s): %w",
			short(rel.Digest), e.cfg.StallTimeout, ErrUnavailable))
	case <-e.cl.Closed():
		return cleanup(fmt.Errorf("download %s: engine closed", short(rel.Digest)))
	}
	if err := checkInfo(t.Info(), rel); err != nil {
		return cleanup(fmt.Errorf("download %s: %w", short(rel.Digest), err))
	}
	e.saveInfo(tr.ih, t.Metainfo().InfoBytes)
	t.DownloadAll()

	lastHave, lastRead := int64(-1), int64(-1)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	retried := false
	for {
		complete := t.Complete().On()
		select {
		case <-complete:
			err := e.finish(tr)
			if err == nil {
				return nil
			}
			if retried || !errors.Is(err, errAdopt) {
				return cleanup(err)
			}
			// Pieces passed their hashes but the whole did not: re-check every piece
			// from disk and fetch again what fails.
			retried = true
			e.log.Warn("blob failed its sha256 after all pieces passed; re-verifying", "digest", short(rel.Digest))
			if err := t.VerifyData(); err != nil {
				return cleanup(fmt.Errorf("download %s: re-verify: %w", short(rel.Digest), err))
			}
		case <-tick.C:
			st := t.Stats()
			have, read := t.BytesCompleted(), st.BytesReadData.Int64()
			if have != lastHave || read != lastRead {
				lastHave, lastRead = have, read
				stall.Reset(e.cfg.StallTimeout)
			}
		case <-stall.C:
			return cleanup(fmt.Errorf("download %s: no data from any peer for %s (have %d of %d bytes): %w",
				short(rel.Digest), e.cfg.StallTimeout, verifiedBytes(t), rel.Size, ErrUnavailable))
		case <-t.Closed():
			return cleanup(fmt.Errorf("download %s: dropped", short(rel.Digest)))
		case <-e.cl.Closed():
			return fmt.Errorf("download %s: engine closed", short(rel.Digest))
		}
	}
}

var errAdopt = errors.New("store refused the download")

// finish hands the staged blob to the store, which re-hashes it against the
// signed digest. The store gets a hard link, so the torrent goes on seeding from
// the staging path without a pause; the link is the same inode and no piece is
// written after completion.
func (e *Engine) finish(tr *transfer) error {
	rel := tr.rel
	staged := filepath.Join(tr.staging, rel.Digest)
	link := staged + ".adopt"
	os.Remove(link)
	if err := os.Link(staged, link); err != nil {
		return fmt.Errorf("download %s: link for adoption: %w", short(rel.Digest), err)
	}
	if err := e.cfg.Store.AdoptFile(context.Background(), link, rel.Digest); err != nil {
		os.Remove(link)
		// Most likely the sha256 did not match although every piece passed.
		return fmt.Errorf("download %s: %w: %w", short(rel.Digest), errAdopt, err)
	}
	e.completion.trust(tr.ih)
	e.log.Debug("downloaded", "digest", short(rel.Digest), "bytes", rel.Size)
	return nil
}

// AddPeers tells the engine about fleet nodes that hold or fetch infoHash (hex).
// Peers given before the transfer starts are remembered for it.
func (e *Engine) AddPeers(infoHash string, peers []peer.ID) {
	var pis []torrent.PeerInfo
	for _, id := range peers {
		if e.cfg.Host != nil && id == e.cfg.Host.ID() {
			continue
		}
		pis = append(pis, torrent.PeerInfo{Addr: p2pAddr(e.addrs.addrOf(id)), Source: torrent.PeerSourceDirect})
	}
	e.addPeerInfos(infoHash, pis)
}

func (e *Engine) addPeerInfos(infoHash string, pis []torrent.PeerInfo) {
	if len(pis) == 0 {
		return
	}
	var ih metainfo.Hash
	if err := ih.FromHexString(infoHash); err != nil {
		e.log.Warn("ignoring peers for a bad infohash", "infohash", infoHash)
		return
	}
	e.mu.Lock()
	set := e.known[ih]
	if set == nil {
		set = make(peerSet)
		e.known[ih] = set
	}
	for _, pi := range pis {
		set[pi.Addr.String()] = pi
	}
	var t *torrent.Torrent
	for _, tr := range e.transfers {
		if tr.ih == ih && tr.t != nil {
			t = tr.t
		}
	}
	e.mu.Unlock()
	if t != nil {
		t.AddPeers(pis)
	}
}

func (e *Engine) addKnownLocked(tr *transfer) {
	var pis []torrent.PeerInfo
	for _, pi := range e.known[tr.ih] {
		pis = append(pis, pi)
	}
	if len(pis) > 0 {
		tr.t.AddPeers(pis)
	}
}

// Drop stops seeding or fetching a blob and removes its staging files.
func (e *Engine) Drop(digest string) error {
	e.mu.Lock()
	tr, ok := e.transfers[digest]
	delete(e.transfers, digest)
	if ok {
		delete(e.known, tr.ih)
		e.completion.distrust(tr.ih)
		if e.ss != nil {
			e.ss.remove(tr.ih)
		}
	}
	e.mu.Unlock()
	if !ok {
		return nil
	}
	e.mu.Lock()
	t := tr.t
	e.mu.Unlock()
	if t != nil {
		t.Drop()
	}
	<-tr.done
	if err := os.RemoveAll(e.stagingDir(digest)); err != nil {
		return fmt.Errorf("drop %s: %w", short(digest), err)
	}
	return nil
}

// Transfers describes every torrent the engine runs.
func (e *Engine) Transfers() []TransferStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]TransferStats, 0, len(e.transfers))
	for _, tr := range e.transfers {
		s := TransferStats{
			Digest:     tr.rel.Digest,
			Name:       tr.rel.Name,
			InfoHash:   tr.ih.HexString(),
			Seeding:    tr.seeding,
			BytesTotal: tr.rel.Size,
		}
		if tr.t != nil {
			st := tr.t.Stats()
			s.BytesHave = verifiedBytes(tr.t)
			s.Peers = st.ActivePeers
			s.BytesUploaded = st.BytesWrittenData.Int64()
			s.BytesDownloaded = st.BytesReadData.Int64()
			s.UploadRate, s.DownloadRate = tr.upRate, tr.downRate
			s.UploadIdleSeconds, s.DownloadIdleSeconds = tr.idleUp.Seconds(), tr.idleDown.Seconds()
		}
		out = append(out, s)
	}
	return out
}

// Pieces reports which pieces of a blob this engine holds verified, or nil if
// it runs no transfer of it.
func (e *Engine) Pieces(digest string) []bool {
	var t *torrent.Torrent
	e.mu.Lock()
	if tr, ok := e.transfers[digest]; ok {
		t = tr.t
	}
	e.mu.Unlock()
	if t == nil || t.Info() == nil {
		return nil
	}
	out := make([]bool, 0, t.NumPieces())
	for _, run := range t.PieceStateRuns() {
		for range run.Length {
			out = append(out, run.Complete)
		}
	}
	return out
}

// verifiedBytes counts the bytes of pieces that passed their hash. anacrolix's
// BytesCompleted also counts chunks of unfinished pieces, which a crash loses.
func verifiedBytes(t *torrent.Torrent) int64 {
	info := t.Info()
	if info == nil {
		return 0
	}
	var n int64
	i := 0
	for _, run := range t.PieceStateRuns() {
		if run.Complete {
			for j := i; j < i+run.Length; j++ {
				n += info.Piece(j).Length()
			}
		}
		i += run.Length
	}
	return n
}

// BannedPeers lists the fleet peers this engine banned for sending bad data.
func (e *Engine) BannedPeers() []peer.ID {
	var out []peer.ID
	for _, s := range e.cl.BadPeerIPs() {
		if id, ok := e.addrs.peerOf(net.JoinHostPort(s, "1")); ok {
			out = append(out, id)
		}
	}
	return out
}

// MetaInfo returns a standard v1 .torrent for a blob this engine holds. Its
// announce URL is the engine's HTTP tracker, which points standard clients at
// the plain TCP listener (see tracker.go for why a tracker and not a web seed).
func (e *Engine) MetaInfo(rel artifact.Release) (*metainfo.MetaInfo, error) {
	if err := checkRelease(rel); err != nil {
		return nil, fmt.Errorf("torrent: %w", err)
	}
	b, err := e.infoBytes(context.Background(), rel)
	if err != nil {
		return nil, fmt.Errorf("torrent %s: %w", short(rel.Digest), err)
	}
	mi := &metainfo.MetaInfo{
		InfoBytes:    b,
		CreatedBy:    "ballena",
		CreationDate: rel.PublishedAt.Unix(),
		Comment:      rel.Ref().String(),
	}
	if u := e.TrackerURL(); u != "" {
		mi.Announce = u
		mi.AnnounceList = [][]string{{u}}
	}
	return mi, nil
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
		e.p2p.Close()
	}
	if e.ss != nil {
		e.ss.close()
	}
	if e.plain != nil {
		e.plain.Close()
	}
	var errs []error
	if e.cl != nil {
		errs = append(errs, e.cl.Close()...)
	}
	e.mu.Lock()
	trs := make([]*transfer, 0, len(e.transfers))
	for _, tr := range e.transfers {
		trs = append(trs, tr)
	}
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

func (e *Engine) progress(tr *transfer) Progress {
	p := Progress{Digest: tr.rel.Digest, Total: tr.rel.Size}
	e.mu.Lock()
	t := tr.t
	p.DownloadRate = tr.downRate
	e.mu.Unlock()
	if t != nil {
		p.Have = verifiedBytes(t)
		p.Peers = t.Stats().ActivePeers
	}
	return p
}

// sampleEvery is the resolution of idle time; rates average over a second.
const sampleEvery = 250 * time.Millisecond

// sampleRates updates each transfer's rates once a second and its idle time
// every sampleEvery and, every few seconds, offers running downloads their
// known peers again: anacrolix forgets a peer once it connected, so without
// this a dropped connection, or a holder that restarted, would not be dialed
// again.
func (e *Engine) sampleRates(ctx context.Context) {
	const perSecond = int(time.Second / sampleEvery)
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if n%(5*perSecond) == 0 {
				e.redial()
			}
			e.mu.Lock()
			for _, tr := range e.transfers {
				// A seed has no idle time to count: its rates once a second do.
				if tr.t == nil || (tr.seeding && n%perSecond != 0) {
					continue
				}
				st := tr.t.Stats()
				up, down := st.BytesWrittenData.Int64(), st.BytesReadData.Int64()
				if !tr.seeding && !tr.sampleAt.IsZero() {
					dt := now.Sub(tr.sampleAt)
					if down == tr.sampleDown {
						tr.idleDown += dt
					}
					if up == tr.sampleUp && verifiedBytes(tr.t) > 0 {
						tr.idleUp += dt
					}
				}
				tr.sampleAt, tr.sampleUp, tr.sampleDown = now, up, down
				if n%perSecond != 0 {
					continue
				}
				if !tr.lastAt.IsZero() {
					dt := now.Sub(tr.lastAt).Seconds()
					tr.upRate = float64(up-tr.lastUp) / dt
					tr.downRate = float64(down-tr.lastDown) / dt
				}
				tr.lastAt, tr.lastUp, tr.lastDown = now, up, down
			}
			e.mu.Unlock()
			e.samples.Add(1)
		}
	}
}

func (e *Engine) redial() {
	type job struct {
		t   *torrent.Torrent
		pis []torrent.PeerInfo
	}
	var jobs []job
	e.mu.Lock()
	for _, tr := range e.transfers {
		if tr.seeding || tr.t == nil || len(e.known[tr.ih]) == 0 {
			continue
		}
		j := job{t: tr.t}
		for _, pi := range e.known[tr.ih] {
			j.pis = append(j.pis, pi)
		}
		jobs = append(jobs, j)
	}
	e.mu.Unlock()
	for _, j := range jobs {
		j.t.AddPeers(j.pis)
	}
}

func (e *Engine) stagingDir(digest string) string {
	return filepath.Join(e.cfg.Store.TempDir(), "bt-"+digest)
}

// infoBytes returns the bencoded info dict of a blob in the store, from the cache
// or by hashing the blob, checked against rel.InfoHash.
func (e *Engine) infoBytes(ctx context.Context, rel artifact.Release) ([]byte, error) {
	ih := metainfo.NewHashFromHex(rel.InfoHash)
	if b, err := e.cachedInfo(ih); err == nil {
		return b, nil
	}
	if !e.cfg.Store.HasBlob(rel.Digest) {
		return nil, fmt.Errorf("blob %w", artifact.ErrNotFound)
	}
	info, err := artifact.TorrentInfo(e.cfg.Store.BlobPath(rel.Digest), rel.Digest)
	if err != nil {
		return nil, err
	}
	b, err := bencode.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("encode torrent info: %w", err)
	}
	if got := metainfo.HashBytes(b); got != ih {
		return nil, fmt.Errorf("torrent info of the stored blob has infohash %s, release says %s", got.HexString(), rel.InfoHash)
	}
	e.saveInfo(ih, b)
	return b, nil
}

func (e *Engine) infoPath(ih metainfo.Hash) string {
	return filepath.Join(e.cfg.DataDir, "bt", "info", ih.HexString())
}

// cachedInfo returns info bytes saved earlier, if they still hash to ih.
func (e *Engine) cachedInfo(ih metainfo.Hash) ([]byte, error) {
	b, err := os.ReadFile(e.infoPath(ih))
	if err != nil {
		return nil, err
	}
	if metainfo.HashBytes(b) != ih {
		return nil, errors.New("cached torrent info does not match its infohash")
	}
	return b, nil
}

func (e *Engine) saveInfo(ih metainfo.Hash, b []byte) {
	p := e.infoPath(ih)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		os.Rename(tmp, p)
	}
}

func checkRelease(rel artifact.Release) error {
	if !artifact.ValidDigest(rel.Digest) {
		return fmt.Errorf("release digest %q is not a hex sha256", rel.Digest)
	}
	var ih metainfo.Hash
	if err := ih.FromHexString(rel.InfoHash); err != nil {
		return fmt.Errorf("release %s has no valid infohash %q", short(rel.Digest), rel.InfoHash)
	}
	return nil
}

// checkInfo makes sure the torrent describes exactly the signed blob: the
// infohash is signed, but the names and sizes inside are the publisher's word.
func checkInfo(info *metainfo.Info, rel artifact.Release) error {
	switch {
	case info == nil:
		return errors.New("no torrent info")
	case len(info.Files) != 0:
		return errors.New("torrent has several files; want one blob")
	case info.Name != rel.Digest:
		return fmt.Errorf("torrent names %q, want the digest %s", info.Name, rel.Digest)
	case info.Length != rel.Size:
		return fmt.Errorf("torrent is %d bytes, release says %d", info.Length, rel.Size)
	case rel.PieceLength != 0 && info.PieceLength != rel.PieceLength:
		return fmt.Errorf("torrent piece length %d, release says %d", info.PieceLength, rel.PieceLength)
	}
	return nil
}

func short(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}
