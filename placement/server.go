package placement

import (
	"context"
	"crypto/tls"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"sync/atomic"

	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dgraph-io/badger/v4"
)

// ServerGCPercent is the garbage collector's target (GOGC) that `ballena
// server` runs with unless GOGC is set. A server's heap is mostly its state,
// which lives as long as the cell: at Go's default of 100 it is marked again
// every time the heap doubles, a tenth of a busy server's CPU. 200 trades
// memory (the heap peaks near three times the state rather than two) for
// placements per second.
const ServerGCPercent = 200

// UseServerGC sets the garbage collector's target to ServerGCPercent, unless
// GOGC is set in the environment, and returns what puts the previous one back.
func UseServerGC() (restore func()) {
	if _, set := os.LookupEnv("GOGC"); set {
		return func() {}
	}
	old := debug.SetGCPercent(ServerGCPercent)
	return func() { debug.SetGCPercent(old) }
}

// Options configure a placement server.
type Options struct {
	Dir        string // the server's state: badger, and Raft's log and snapshots under raft/
	AdminToken string // required for every admin request, reads included
	JoinToken  string // required to register a machine; may equal AdminToken
	BatchShare float64
	NodeTTL    time.Duration    // a machine silent this long is down; default 15s
	Now        func() time.Time // injectable clock; default time.Now
	Logger     *slog.Logger
	// Cell makes the server one of a cell of several; nil is a cell of one.
	Cell *CellConfig
	// ForwardTLS is the client TLS configuration used to forward requests to the
	// leader (the cell CA); needed with Cell.
	ForwardTLS *tls.Config
	// Metrics, when set, is where the server registers its metrics (see
	// metrics.go); the caller serves them.
	Metrics prometheus.Registerer
	// Workers is how many evaluations the leader plans at once; 0 means the
	// number of CPUs the process may use, at least 2. A negative value runs none
	// (like Nomad's num_schedulers = 0): evaluations wait, recorded as pending,
	// until a server with workers leads.
	Workers int
}

// DefaultNodeTTL is how long a machine may miss heartbeats before its tasks move.
const DefaultNodeTTL = 15 * time.Second

// commitTimeout bounds how long a write waits for Raft to commit it.
const commitTimeout = 15 * time.Second

// Server is the placement service: the cell's state in badger and memory,
// replicated with Raft; the scheduler on the leader; and the /v1/ HTTP API.
type Server struct {
	opts         Options
	db           *badger.DB
	log          *slog.Logger
	guard        replayGuard
	raft         *raft.Raft
	raftHadState bool
	raftReady    chan struct{} // closed once raft is set
	writes       chan pendingWrite
	writerDone   chan struct{}
	writerOn     bool         // the disk writer runs (set and cleared by Open and Close only)
	writesMu     sync.RWMutex // held to send on writes (read) and to close it
	writesClosed bool
	closers      []func() error
	self         ServerInfo
	proxy        *httputil.ReverseProxy
	fwd          *http.Client
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	inflight     chan inflightBatch
	queueCh      chan struct{}
	m            *metrics

	// The events stream, UI sessions and what nodes report of their releases
	// (events.go, ui.go, fleet.go): memory only, never replicated.
	events eventHub
	ui     uiSessions
	fleet  fleetReports

	transMu sync.Mutex // serializes leadership transitions; before fsmMu
	fsmMu   sync.Mutex // held while an entry or a snapshot is applied; before mu

	broker *evalBroker
	plans  chan *planSubmission

	mu          sync.RWMutex // workers plan under the read lock
	cell        *Cell
	planned     uint64 // last operation computed on the leader's working state
	appliedRaft uint64 // last Raft entry applied to badger and the cell; written under fsmMu and cmu
	origin      string // names the working state; entries computed on it carry it
	leader      bool   // leading, with a working state ready for writes
	servers     map[string]*ServerInfo

	// The commit side has its own lock, taken after mu, never before: entries
	// flow to Raft and are acknowledged while workers hold mu to plan.
	cmu       sync.Mutex
	leading   atomic.Bool // leader, readable without mu
	qorigin   string      // origin, as the commit side sees it
	queue     []*pendingOp
	committed uint64        // last committed operation index
	notify    chan struct{} // closed and replaced on every commit
	stats     CommitStats
}

// CommitStats counts what the server committed through Raft since it started.
type CommitStats struct {
	Entries    uint64 // Raft entries this server appended as leader
	Plans      uint64 // plans the plan applier took
	Replans    uint64 // evaluations planned again after the applier refused part of a plan
	Operations uint64 // operations they carried
	Bytes      uint64
	// SnapshotsRestored counts snapshots installed into this server's state (a
	// follower too far behind for the compacted log).
	SnapshotsRestored uint64
}

// Open opens (or creates) the state in opts.Dir, loads it and starts Raft. A cell
// of one is ready for writes when Open returns; a server of a larger cell answers
// writes once a leader is elected.
func Open(opts Options) (*Server, error) {
	if opts.AdminToken == "" || opts.JoinToken == "" {
		return nil, errors.New("placement server: admin and join tokens are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.NodeTTL <= 0 {
		opts.NodeTTL = DefaultNodeTTL
	}
	if opts.BatchShare == 0 {
		opts.BatchShare = DefaultBatchShare
	}
	if opts.BatchShare < 0 || opts.BatchShare > 1 {
		return nil, fmt.Errorf("placement server: batch share %v is not between 0 and 1", opts.BatchShare)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Workers == 0 {
		opts.Workers = max(2, runtime.GOMAXPROCS(0))
	}
	if opts.Cell != nil && (opts.Cell.Identity == nil || opts.Cell.RaftListener == nil) {
		return nil, errors.New("placement server: a cell needs the server's identity and a Raft listener")
	}
	db, err := openDB(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, db: db, log: opts.Logger, notify: make(chan struct{}), origin: randomID(),
		inflight: make(chan inflightBatch, 16), raftReady: make(chan struct{}),
		writes: make(chan pendingWrite, 64), writerDone: make(chan struct{}), queueCh: make(chan struct{}, 1), self: ServerInfo{Name: "local"},
		broker: newEvalBroker(), plans: make(chan *planSubmission, 64)}
	s.m = newMetrics(s)
	s.closers = append(s.closers, db.Close)
	if opts.Cell != nil {
		s.self = ServerInfo{Name: opts.Cell.Identity.Name, API: opts.Cell.APIURL}
		s.fwd = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: opts.ForwardTLS, ForceAttemptHTTP2: true}}
		s.proxy = &httputil.ReverseProxy{
			Transport: &http.Transport{TLSClientConfig: opts.ForwardTLS, ForceAttemptHTTP2: true, ResponseHeaderTimeout: 6 * time.Minute},
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(pr.In.Context().Value(leaderURLKey{}).(*url.URL))
				pr.Out.Header.Set(headerForwarded, s.self.Name)
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				writeError(w, http.StatusServiceUnavailable, fmt.Errorf("forward to the leader: %w", err))
			},
		}
	}
	s.mu.Lock()
	err = s.reloadLocked()
	s.mu.Unlock()
	if err != nil {
		s.closeAll()
		return nil, err
	}
	go s.diskWriter()
	s.writerOn = true
	if err := s.startRaft(); err != nil {
		s.stopWriter()
		s.closeAll()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	workers := []func(context.Context){s.leaderLoop, s.commitLoop, s.ackLoop, s.formCell, s.keepRecorded, s.planApplier}
	for i := range opts.Workers {
		workers = append(workers, func(ctx context.Context) { s.worker(ctx, i) })
	}
	for _, f := range workers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			f(ctx)
		}()
	}
	if opts.Cell == nil {
		// A cell of one elects itself within a few tens of milliseconds.
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		if err := s.WaitLeader(wctx); err != nil {
			s.Close()
			return nil, fmt.Errorf("placement server: %w", err)
		}
	}
	if opts.Metrics != nil {
		s.m.register(opts.Metrics)
	}
	return s, nil
}

// WaitLeader returns when this server leads with its state ready, or ctx ends.
func (s *Server) WaitLeader(ctx context.Context) error {
	for {
		s.cmu.Lock()
		ch := s.notify
		s.cmu.Unlock()
		if s.leading.Load() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("not the leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// reloadLocked rebuilds the in-memory state from badger; s.mu is held.
func (s *Server) reloadLocked() error {
	if s.writerOn {
		if err := s.flushDisk(); err != nil {
			return err
		}
	}
	c := NewCell(s.opts.BatchShare, s.opts.Now, uint64(time.Now().UnixNano()))
	c.async = true
	idx, err := loadCell(s.db, c)
	if err != nil {
		return err
	}
	servers, raftIndex, err := loadServers(s.db)
	if err != nil {
		return err
	}
	s.cell, s.planned, s.servers = c, idx, servers
	s.origin = randomID()
	s.cmu.Lock()
	s.committed, s.qorigin, s.appliedRaft = idx, s.origin, raftIndex
	s.cmu.Unlock()
	return nil
}

func (s *Server) closeAll() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// Close stops Raft and closes the state store.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	var err error
	if s.raft != nil {
		err = s.raft.Shutdown().Error()
	}
	s.wg.Wait()
	s.stopWriter()
	s.closeAll()
	return err
}

// stopWriter writes what is pending to badger and stops the disk writer.
func (s *Server) stopWriter() {
	if s.writerOn {
		s.writerOn = false
		s.writesMu.Lock()
		s.writesClosed = true
		close(s.writes)
		s.writesMu.Unlock()
		<-s.writerDone
	}
}

// Index is the last committed change.
func (s *Server) Index() uint64 {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return s.committed
}

// Stats returns what this server committed as leader.
func (s *Server) Stats() CommitStats {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return s.stats
}

// IsLeader reports whether this server leads the cell and takes writes.
func (s *Server) IsLeader() bool { return s.leading.Load() }

// setLeader records whether this server leads; s.mu is held.
func (s *Server) setLeader(on bool) {
	s.leader = on
	s.leading.Store(on)
}

// wake closes the commit notification channel (every waiter looks again);
// s.cmu is held.
func (s *Server) wake() {
	close(s.notify)
	s.notify = make(chan struct{})
}

// Name is the server's name in the cell.
func (s *Server) Name() string { return s.self.Name }
