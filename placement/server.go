package placement

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/dgraph-io/badger/v4"
)

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
	stats        CommitStats

	transMu sync.Mutex // serializes leadership transitions; before fsmMu
	fsmMu   sync.Mutex // held while an entry or a snapshot is applied; before mu

	mu          sync.Mutex
	cell        *Cell
	index       uint64 // last committed operation index
	committed   uint64 // same, kept beside planned
	planned     uint64 // last operation computed on the leader's working state
	appliedRaft uint64 // last Raft entry applied to badger and the cell
	origin      string // names the working state; entries computed on it carry it
	leader      bool   // leading, with a working state ready for writes
	servers     map[string]*ServerInfo
	queue       []*pendingOp
	notify      chan struct{} // closed and replaced on every commit
}

// CommitStats counts what the server committed through Raft since it started.
type CommitStats struct {
	Entries    uint64 // Raft entries this server appended as leader
	Operations uint64 // operations they carried
	Bytes      uint64
	// SnapshotsRestored counts snapshots installed into this server's state (a
	// follower too far behind for the compacted log).
	SnapshotsRestored uint64
}

type pendingOp struct {
	data   []byte
	index  uint64
	origin string
	done   chan error
}

type inflightBatch struct {
	f   raft.ApplyFuture
	ops []*pendingOp
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
	if opts.Cell != nil && (opts.Cell.Identity == nil || opts.Cell.RaftListener == nil) {
		return nil, errors.New("placement server: a cell needs the server's identity and a Raft listener")
	}
	db, err := openDB(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, db: db, log: opts.Logger, notify: make(chan struct{}), origin: randomID(),
		inflight: make(chan inflightBatch, 16), raftReady: make(chan struct{}),
		writes: make(chan pendingWrite, 64), writerDone: make(chan struct{}), queueCh: make(chan struct{}, 1), self: ServerInfo{Name: "local"}}
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
	for _, f := range []func(context.Context){s.leaderLoop, s.commitLoop, s.ackLoop, s.formCell, s.keepRecorded} {
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
	return s, nil
}

// WaitLeader returns when this server leads with its state ready, or ctx ends.
func (s *Server) WaitLeader(ctx context.Context) error {
	for {
		s.mu.Lock()
		ok, ch := s.leader, s.notify
		s.mu.Unlock()
		if ok {
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
	idx, err := loadCell(s.db, c)
	if err != nil {
		return err
	}
	servers, raftIndex, err := loadServers(s.db)
	if err != nil {
		return err
	}
	s.cell, s.index, s.committed, s.planned, s.appliedRaft, s.servers = c, idx, idx, idx, raftIndex, servers
	s.origin = randomID()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// Stats returns what this server committed as leader.
func (s *Server) Stats() CommitStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// IsLeader reports whether this server leads the cell and takes writes.
func (s *Server) IsLeader() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leader
}

// Name is the server's name in the cell.
func (s *Server) Name() string { return s.self.Name }

// update runs fn on the leader's working state under the lock and waits until
// the records it changed are committed through Raft. Operations from concurrent
// requests are group-committed: many go in one Raft entry.
func (s *Server) update(fn func(c *Cell) error) error {
	return s.updateCtx(context.Background(), fn)
}

func (s *Server) updateCtx(ctx context.Context, fn func(c *Cell) error) error {
	s.mu.Lock()
	if !s.leader {
		s.mu.Unlock()
		return ErrNoLeader
	}
	s.cell.index = s.planned + 1
	s.cell.ch = newChanges()
	err := fn(s.cell)
	ch := s.cell.ch
	s.cell.ch = nil
	if ch.empty() {
		// Nothing to write, but the answer may rest on operations not yet committed.
		need := s.planned
		s.mu.Unlock()
		if werr := s.waitCommitted(ctx, need); werr != nil && err == nil {
			err = werr
		}
		return err
	}
	data, eerr := encodeOp(ch, s.cell.index)
	if eerr != nil {
		// Cannot happen with these types; the working state is ahead of the log now.
		s.leader = false
		s.mu.Unlock()
		go s.becomeLeader()
		return fmt.Errorf("encode changes: %w", eerr)
	}
	s.planned = s.cell.index
	p := &pendingOp{data: data, index: s.cell.index, origin: s.origin, done: make(chan error, 1)}
	s.queue = append(s.queue, p)
	for _, ev := range ch.evals {
		if ev.Placed+ev.Stopped+ev.Preempted+len(ev.Pending) > 0 {
			s.log.Debug("evaluation", "job", ev.Job, "trigger", ev.Trigger, "placed", ev.Placed,
				"stopped", ev.Stopped, "preempted", ev.Preempted, "pending", len(ev.Pending))
		}
	}
	s.mu.Unlock()
	select {
	case s.queueCh <- struct{}{}:
	default:
	}
	timer := time.NewTimer(commitTimeout)
	defer timer.Stop()
	select {
	case cerr := <-p.done:
		if cerr != nil {
			return cerr
		}
	case <-timer.C:
		return fmt.Errorf("%w within %v (it may still commit)", ErrNoQuorum, commitTimeout)
	case <-ctx.Done():
		return fmt.Errorf("wait for the commit: %w", ctx.Err())
	}
	return err
}

// waitCommitted returns when the operation index idx is committed.
func (s *Server) waitCommitted(ctx context.Context, idx uint64) error {
	timer := time.NewTimer(commitTimeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		done, ch, leading := s.committed >= idx, s.notify, s.leader
		s.mu.Unlock()
		if done {
			return nil
		}
		if !leading {
			return ErrNoQuorum
		}
		select {
		case <-ch:
		case <-timer.C:
			return ErrNoQuorum
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// maxEntryOps and maxEntryBytes bound one Raft entry.
const (
	maxEntryOps   = 4096
	maxEntryBytes = 4 << 20
)

// commitLoop is the plan applier: it takes the operations computed on the
// leader's working state, in order, and appends them to the Raft log, many per
// entry, without waiting for one entry to commit before sending the next.
func (s *Server) commitLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.queueCh:
		}
		for {
			s.mu.Lock()
			origin := s.origin
			var batch []*pendingOp
			size := 0
			n := 0
			for n < len(s.queue) && n < maxEntryOps && size < maxEntryBytes {
				size += len(s.queue[n].data)
				n++
			}
			batch = append(batch, s.queue[:n]...)
			s.queue = s.queue[n:]
			if len(s.queue) == 0 {
				s.queue = nil
			}
			s.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			var stale []*pendingOp
			var encoded [][]byte
			var ops []*pendingOp
			for _, p := range batch {
				if p.origin != origin {
					stale = append(stale, p) // computed on a working state since thrown away
					continue
				}
				encoded = append(encoded, p.data)
				ops = append(ops, p)
			}
			for _, p := range stale {
				p.done <- ErrNoQuorum
			}
			if len(ops) == 0 {
				continue
			}
			data := encodeEntry(origin, encoded)
			f := s.raft.Apply(data, 0)
			s.mu.Lock()
			s.stats.Entries++
			s.stats.Operations += uint64(len(ops))
			s.stats.Bytes += uint64(len(data))
			s.mu.Unlock()
			select {
			case s.inflight <- inflightBatch{f: f, ops: ops}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// ackLoop answers the writers of each entry once Raft committed and applied it.
func (s *Server) ackLoop(ctx context.Context) {
	for {
		var b inflightBatch
		select {
		case <-ctx.Done():
			return
		case b = <-s.inflight:
		}
		// A future still queued inside Raft when it shuts down is never answered:
		// wait for it beside ctx.
		errc := make(chan error, 1)
		go func() { errc <- b.f.Error() }()
		var err error
		select {
		case err = <-errc:
		case <-ctx.Done():
			for _, p := range b.ops {
				p.done <- fmt.Errorf("%w (the server is shutting down)", ErrNoQuorum)
			}
			return
		}
		if err == nil {
			if rerr, ok := b.f.Response().(error); ok {
				err = rerr
			}
		}
		if err != nil {
			s.log.Warn("raft entry not committed", "ops", len(b.ops), "err", err)
			err = fmt.Errorf("%w (%v)", ErrNoQuorum, err)
			s.mu.Lock()
			wasLeader := s.leader
			s.leader = false
			s.mu.Unlock()
			if wasLeader {
				// The working state holds what did not commit: rebuild it from what
				// did, as leader again or as a follower.
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					if s.raft.State() == raft.Leader {
						s.becomeLeader()
					} else {
						s.stepDown()
					}
				}()
			}
		}
		for _, p := range b.ops {
			p.done <- err
		}
	}
}

// leaderLoop follows Raft's leadership changes.
func (s *Server) leaderLoop(ctx context.Context) {
	ch := s.raft.LeaderCh()
	lost := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-ch:
			if isLeader {
				s.log.Info("elected leader of the cell", "server", s.self.Name, "since_last_leader", time.Since(lost).Round(time.Millisecond))
				s.becomeLeader()
			} else {
				lost = time.Now()
				s.stepDown()
			}
		}
	}
}

// becomeLeader readies the working state for writes once every earlier entry is
// applied (rebuilt from disk if it holds operations that did not commit), gives
// every machine a fresh TTL (a grace period, so that a failover marks nobody
// down).
//
// The working state's origin changes only when it is rebuilt: every entry of
// the current origin is one the working state already reflects.
func (s *Server) becomeLeader() {
	s.transMu.Lock()
	defer s.transMu.Unlock()
	if err := s.raft.Barrier(commitTimeout).Error(); err != nil {
		s.log.Warn("leader barrier", "err", err)
		s.stepDownLocked()
		return
	}
	s.fsmMu.Lock()
	s.mu.Lock()
	if s.raft.State() != raft.Leader {
		s.mu.Unlock()
		s.fsmMu.Unlock()
		s.stepDownLocked()
		return
	}
	if s.planned > s.committed {
		if err := s.reloadLocked(); err != nil {
			s.log.Error("rebuild the working state", "err", err)
			s.mu.Unlock()
			s.fsmMu.Unlock()
			return
		}
	}
	now := s.opts.Now()
	c := s.cell
	for _, n := range c.nodes {
		n.LastSeen = now
		c.grown[n] = true
	}
	s.leader = true
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	s.fsmMu.Unlock()
	// Nothing to evaluate: an evaluation commits with the operation that caused it,
	// so none is lost with a leader. Waiting jobs get a try at the next change
	// (every machine counts as grown).
	s.log.Info("leader ready for writes", "server", s.self.Name, "index", s.Index())
	if s.opts.Cell != nil {
		if err := s.recordServer(s.self); err != nil {
			s.log.Warn("record this server", "err", err)
		}
	}
}

// stepDown throws away what the working state holds beyond the log.
func (s *Server) stepDown() {
	s.transMu.Lock()
	defer s.transMu.Unlock()
	s.stepDownLocked()
}

// stepDownLocked is stepDown with transMu held.
func (s *Server) stepDownLocked() {
	s.fsmMu.Lock()
	defer s.fsmMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leader = false
	for _, p := range s.queue {
		p.done <- ErrNoQuorum
	}
	s.queue = nil
	if s.planned > s.committed {
		if err := s.reloadLocked(); err != nil {
			s.log.Error("rebuild the state after losing leadership", "err", err)
		}
	}
	s.log.Info("no longer the leader", "server", s.self.Name)
}

// Sweep marks machines that missed heartbeats for the TTL as down and moves their
// tasks. Only the leader sweeps: heartbeat deadlines live in its memory. Run calls
// it periodically; tests call it after moving their clock.
func (s *Server) Sweep() error {
	s.mu.Lock()
	if !s.leader {
		s.mu.Unlock()
		return nil
	}
	ids := s.cell.expired(s.opts.NodeTTL)
	s.mu.Unlock()
	for _, id := range ids {
		if err := s.update(func(c *Cell) error {
			c.markDown(id, s.opts.NodeTTL)
			return nil
		}); err != nil {
			return fmt.Errorf("mark %s down: %w", id, err)
		}
		s.log.Warn("machine missed its heartbeats: down, tasks moved", "node", id, "ttl", s.opts.NodeTTL)
	}
	return nil
}

// Run sweeps for silent machines, and reclaims badger's value log now and then,
// until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(max(s.opts.NodeTTL/4, 100*time.Millisecond))
	defer t.Stop()
	gc := time.NewTicker(10 * time.Minute)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.Sweep(); err != nil {
				s.log.Error("sweep for silent machines", "err", err)
			}
		case <-gc.C:
			for s.db.RunValueLogGC(0.5) == nil && ctx.Err() == nil {
			}
		}
	}
}

// HTTPServer returns the API server with its timeouts (and TLS, in a cell).
func (s *Server) HTTPServer() *http.Server {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      maxWait + time.Minute, // long-polls last up to maxWait
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if s.opts.Cell != nil {
		hs.TLSConfig = s.opts.Cell.Identity.APIConfig()
	}
	return hs
}

// Serve serves the API on ln (HTTPS in a cell) until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := s.HTTPServer()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	var err error
	if hs.TLSConfig != nil {
		err = hs.ServeTLS(ln, "", "")
	} else {
		err = hs.Serve(ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve the placement API: %w", err)
	}
	return nil
}

const maxWait = 5 * time.Minute

// Handler serves the /v1/ API. Every request is authenticated (the admin token,
// or a node's signature) before its body is read; writes, and reads that must
// see the latest state, go to the leader, forwarded by a follower.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.admin(s.handleStatus))
	mux.HandleFunc("GET /v1/jobs", s.admin(s.atLeader(s.handleJobs)))
	mux.HandleFunc("POST /v1/jobs", s.admin(s.atLeader(s.handleSubmit)))
	mux.HandleFunc("GET /v1/jobs/{name}", s.admin(s.atLeader(s.handleJob)))
	mux.HandleFunc("DELETE /v1/jobs/{name}", s.admin(s.atLeader(s.handleStop)))
	mux.HandleFunc("GET /v1/nodes", s.admin(s.atLeader(s.handleNodes)))
	mux.HandleFunc("POST /v1/nodes/{id}/drain", s.admin(s.atLeader(s.handleDrain)))
	mux.HandleFunc("POST /v1/nodes/{id}/revoke", s.admin(s.atLeader(s.handleRevoke)))
	mux.HandleFunc("POST /v1/nodes/register", s.joinToken(s.atLeader(s.handleRegister)))
	mux.HandleFunc("POST /v1/nodes/{id}/heartbeat", s.nodeHeaders(s.atLeader(s.node(s.handleHeartbeat))))
	mux.HandleFunc("GET /v1/nodes/{id}/allocations", s.nodeHeaders(s.node(s.handleAllocations)))
	mux.HandleFunc("POST /v1/nodes/{id}/allocations/{alloc}/state", s.nodeHeaders(s.atLeader(s.node(s.handleTaskState))))
	mux.HandleFunc("GET /v1/cell/self", s.admin(s.handleSelf))
	mux.HandleFunc("GET /v1/cell/members", s.admin(s.handleMembers))
	mux.HandleFunc("POST /v1/cell/remove", s.admin(s.atLeader(s.handleRemove)))
	mux.HandleFunc("GET /v1/cell/backup", s.admin(s.atLeader(s.handleBackup)))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s %s (the API is under /v1/)", r.Method, r.URL.Path))
	})
	return mux
}

const headerForwarded = "Ballena-Forwarded"

type leaderURLKey struct{}

// atLeader runs h on the leader; a follower forwards the request, unread, to it.
func (s *Server) atLeader(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		leading := s.leader
		s.mu.Unlock()
		if leading {
			h(w, r)
			return
		}
		if s.opts.Cell == nil || r.Header.Get(headerForwarded) != "" {
			writeError(w, http.StatusServiceUnavailable, ErrNoLeader)
			return
		}
		u, err := s.leaderURL()
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), leaderURLKey{}, u)))
	}
}

// leaderURL is the API of the current leader, as its server record says.
func (s *Server) leaderURL() (*url.URL, error) {
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return nil, ErrNoLeader
	}
	if string(id) == s.self.Name {
		return nil, fmt.Errorf("%w (this server was just elected and is catching up)", ErrNoLeader)
	}
	s.mu.Lock()
	sv := s.servers[string(id)]
	s.mu.Unlock()
	if sv == nil || sv.API == "" {
		return nil, fmt.Errorf("%w (leader %s has not recorded its API address yet)", ErrNoLeader, id)
	}
	u, err := url.Parse(sv.API)
	if err != nil {
		return nil, fmt.Errorf("leader %s API address %q: %w", id, sv.API, err)
	}
	return u, nil
}

type badRequest struct{ error }

func (e badRequest) Unwrap() error { return e.error }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, apiError{Error: err.Error()})
}

func statusOf(err error) int {
	var br badRequest
	switch {
	case errors.As(err, &br):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrNoQuorum):
		return http.StatusServiceUnavailable
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errRevoked):
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

const maxBody = 8 << 20

var errTooLarge = fmt.Errorf("request body larger than %d bytes", maxBody)

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, errTooLarge
	}
	if err != nil {
		return nil, badRequest{fmt.Errorf("read request body: %w", err)}
	}
	return b, nil
}

func decode(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return badRequest{fmt.Errorf("decode request: %w", err)}
	}
	return nil
}

// refuse answers a request whose credentials are missing or wrong, and closes
// the connection: its body is never read (net/http would otherwise drain it).
func refuse(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Connection", "close")
	writeError(w, status, err)
}

// admin requires the admin token, for reads as for writes, from anywhere.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			refuse(w, http.StatusUnauthorized, errors.New("this request needs the admin token (Authorization: Bearer ...)"))
			return
		}
		if !checkBearer(r, s.opts.AdminToken) {
			refuse(w, http.StatusForbidden, errors.New("wrong admin token"))
			return
		}
		h(w, r)
	}
}

// joinToken requires the join token (machines registering).
func (s *Server) joinToken(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !checkBearer(r, s.opts.JoinToken) {
			refuse(w, http.StatusUnauthorized, errors.New("registering a machine needs the join token (Authorization: Bearer ...)"))
			return
		}
		h(w, r)
	}
}

// nodeHeaders checks what a node request's headers say before its body is read:
// a registered, unrevoked node acting for itself, at a time inside the window.
// The signature over the body is checked once the (size-capped) body is read.
func (s *Server) nodeHeaders(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(HeaderNode)
		if id == "" || r.Header.Get(HeaderSignature) == "" {
			refuse(w, http.StatusUnauthorized, errors.New("this request must be signed by a node key"))
			return
		}
		if id != r.PathValue("id") {
			refuse(w, http.StatusForbidden, fmt.Errorf("node %s may not act for node %s", id, r.PathValue("id")))
			return
		}
		if err := checkRequestTime(r, s.opts.Now()); err != nil {
			refuse(w, http.StatusUnauthorized, err)
			return
		}
		if s.nodeKey(id) == nil {
			refuse(w, http.StatusUnauthorized, fmt.Errorf("%w: node %s is not registered or is revoked", errUnauthorized, id))
			return
		}
		h(w, r)
	}
}

// node verifies a request signed by the node named in the path.
func (s *Server) node(h func(w http.ResponseWriter, r *http.Request, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		id, err := verifyNodeRequest(r, body, s.opts.Now(), &s.guard, s.nodeKey)
		if err != nil {
			writeError(w, http.StatusUnauthorized, err)
			return
		}
		if id != r.PathValue("id") {
			writeError(w, http.StatusForbidden, fmt.Errorf("node %s may not act for node %s", id, r.PathValue("id")))
			return
		}
		h(w, r, body)
	}
}

func (s *Server) nodeKey(id string) ed25519.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.cell.byID[id]; n != nil && !n.Revoked && len(n.PublicKey) == ed25519.PublicKeySize {
		return ed25519.PublicKey(n.PublicKey)
	}
	return nil
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cell
	_, leader := s.raft.LeaderWithID()
	writeJSON(w, http.StatusOK, map[string]any{
		"server": s.self.Name, "leader": string(leader), "raft_state": s.raft.State().String(),
		"index": s.index, "nodes": len(c.nodes), "jobs": len(c.jobs), "allocations": len(c.allocs),
		"capacity": c.capacity, "allocated": c.used, "batch_allocated": c.batchUsed, "batch_share": c.BatchShare,
	})
}

// readCommitted runs fn on the state under the lock, then waits until what it
// saw is committed: the leader's working state may hold operations still on
// their way through Raft, and an answer must not show what could yet be lost.
func (s *Server) readCommitted(ctx context.Context, fn func(c *Cell)) error {
	s.mu.Lock()
	fn(s.cell)
	need, leading := s.planned, s.leader
	s.mu.Unlock()
	if !leading {
		return nil // a follower's state holds committed entries only
	}
	return s.waitCommitted(ctx, need)
}

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request) {
	var jobs []*Job
	err := s.readCommitted(r.Context(), func(c *Cell) {
		jobs = make([]*Job, 0, len(c.jobs))
		for _, name := range sortedKeys(c.jobs) {
			j := *c.jobs[name].Job
			jobs = append(jobs, &j)
		}
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, jobs)
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	var out []byte
	var err error
	if rerr := s.readCommitted(r.Context(), func(c *Cell) {
		var st *JobStatus
		st, err = c.jobStatus(r.PathValue("name"))
		if err == nil {
			out, err = json.MarshalIndent(st, "", "  ") // under the lock: st shares the cell's records
		}
	}); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(out, '\n'))
}

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	var j Job
	if err := decode(body, &j); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	var expect *uint64
	if v := r.URL.Query().Get("index"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("index %q is not a number", v))
			return
		}
		expect = &n
	}
	s.respondUpdate(w, r, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.submitJob(&j, expect)
		if err != nil && !errors.Is(err, ErrConflict) {
			err = badRequest{err}
		}
		return &j, evs, err
	})
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.respondUpdate(w, r, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.stopJob(name)
		if err != nil {
			return nil, nil, err
		}
		return c.jobs[name].Job, evs, nil
	})
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	req := DrainRequest{Enable: true}
	if len(body) > 0 {
		if err := decode(body, &req); err != nil {
			writeError(w, statusOf(err), err)
			return
		}
	}
	id := r.PathValue("id")
	s.respondUpdate(w, r, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.setDrain(id, req.Enable)
		return nil, evs, err
	})
}

// respondUpdate commits fn's changes and answers with a snapshot of the result,
// serialized under the lock.
func (s *Server) respondUpdate(w http.ResponseWriter, r *http.Request, fn func(c *Cell) (*Job, []*Evaluation, error)) {
	var out []byte
	err := s.updateCtx(r.Context(), func(c *Cell) error {
		j, evs, err := fn(c)
		if err != nil {
			return err
		}
		out, err = json.MarshalIndent(SubmitResponse{Job: j, Evaluations: evs}, "", "  ")
		return err
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(out, '\n'))
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	var reg NodeRegistration
	if err := decode(body, &reg); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	if len(reg.PublicKey) != ed25519.PublicKeySize {
		writeError(w, http.StatusBadRequest, errors.New("public_key must be a 32-byte ed25519 key"))
		return
	}
	if reg.Capacity.CPU <= 0 || reg.Capacity.Memory <= 0 || reg.Capacity.PIDs < 0 {
		writeError(w, http.StatusBadRequest, errors.New("capacity: cpu and memory must be positive"))
		return
	}
	id, err := NodeID(reg.PublicKey)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	// Possession of the key: the registration is signed by it, and the ID is its own.
	if _, err := verifyNodeRequest(r, body, s.opts.Now(), &s.guard, func(claimed string) ed25519.PublicKey {
		if claimed != id {
			return nil
		}
		return reg.PublicKey
	}); err != nil {
		writeError(w, http.StatusUnauthorized, err)
		return
	}
	var stop []string
	err = s.updateCtx(r.Context(), func(c *Cell) error {
		if n := c.byID[id]; n != nil && n.Revoked {
			return fmt.Errorf("node %s: %w", id, errRevoked)
		}
		_, stop = c.registerNode(id, &reg)
		return nil
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	s.log.Info("machine registered", "node", id, "capacity", reg.Capacity.String(), "labels", reg.Labels)
	writeJSON(w, http.StatusOK, struct {
		RegisterResponse
		Stop []string `json:"stop,omitempty"`
	}{RegisterResponse{NodeID: id, HeartbeatInterval: s.opts.NodeTTL / 3, TTL: s.opts.NodeTTL}, stop})
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request, body []byte) {
	var hb Heartbeat
	if err := decode(body, &hb); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	var stop []string
	err := s.updateCtx(r.Context(), func(c *Cell) error {
		var err error
		_, stop, err = c.heartbeat(r.PathValue("id"), &hb)
		return err
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, HeartbeatResponse{Stop: stop, TTL: s.opts.NodeTTL})
}

func (s *Server) handleTaskState(w http.ResponseWriter, r *http.Request, body []byte) {
	var st TaskState
	if err := decode(body, &st); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	st.AllocID = r.PathValue("alloc")
	err := s.updateCtx(r.Context(), func(c *Cell) error {
		_, err := c.reportTaskState(r.PathValue("id"), st)
		return err
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleAllocations long-polls: it answers when the node's allocations change
// past ?index=N, or after ?wait= (default 30s, at most 5m).
func (s *Server) handleAllocations(w http.ResponseWriter, r *http.Request, _ []byte) {
	q := r.URL.Query()
	var index uint64
	if v := q.Get("index"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("index %q is not a number", v))
			return
		}
		index = n
	}
	wait := 30 * time.Second
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("wait %q is not a duration", v))
			return
		}
		wait = min(d, maxWait)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	id := r.PathValue("id")
	answer := func() {
		var l *AllocationList
		var err error
		if rerr := s.readCommitted(r.Context(), func(c *Cell) { l, err = c.nodeAllocs(id) }); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, l)
	}
	for {
		// Every commit wakes every watcher: look at the node's index before building
		// its list, so that a busy cell costs watchers a map lookup each.
		s.mu.Lock()
		n := s.cell.byID[id]
		moved := n != nil && (index == 0 || n.allocIndex > index)
		ch := s.notify
		s.mu.Unlock()
		if n == nil || moved {
			answer()
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			answer()
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	var nodes []NodeInfo
	if err := s.readCommitted(r.Context(), func(c *Cell) { nodes = c.nodeInfos() }); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, nodes)
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.respondUpdate(w, r, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.revokeNode(id)
		return nil, evs, err
	})
	s.log.Warn("node credentials revoked", "node", id)
}

// SelfInfo is what a server says about itself (GET /v1/cell/self).
type SelfInfo struct {
	ServerInfo
	State     string `json:"state"`
	Leader    string `json:"leader"`
	LastIndex uint64 `json:"last_index"`
}

func (s *Server) selfInfo() SelfInfo {
	_, leader := s.raft.LeaderWithID()
	s.mu.Lock()
	applied := s.appliedRaft
	s.mu.Unlock()
	return SelfInfo{ServerInfo: s.self, State: s.raft.State().String(), Leader: string(leader), LastIndex: applied}
}

func (s *Server) handleSelf(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.selfInfo())
}

// handleMembers lists the servers of the Raft configuration, each asked (with
// the caller's admin token) how it is.
func (s *Server) handleMembers(w http.ResponseWriter, r *http.Request) {
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("raft configuration: %w", err))
		return
	}
	servers := cf.Configuration().Servers
	_, leader := s.raft.LeaderWithID()
	out := make([]Member, len(servers))
	var wg sync.WaitGroup
	for i, sv := range servers {
		m := &out[i]
		m.Name, m.Raft, m.Voter, m.Leader = string(sv.ID), string(sv.Address), sv.Suffrage == raft.Voter, sv.ID == leader
		s.mu.Lock()
		if rec := s.servers[m.Name]; rec != nil {
			m.API = rec.API
		}
		s.mu.Unlock()
		var info SelfInfo
		if m.Name == s.self.Name {
			info = s.selfInfo()
		} else if m.API == "" || s.fwd == nil {
			m.Error = "API address unknown"
			continue
		} else {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
				defer cancel()
				if err := s.askSelf(ctx, m.API, r.Header.Get("Authorization"), &info); err != nil {
					m.Error = err.Error()
					return
				}
				m.State, m.LastIndex = info.State, info.LastIndex
				m.Healthy = info.Leader != ""
				if !m.Healthy {
					m.Error = "knows no leader"
				}
			}()
			continue
		}
		m.State, m.LastIndex, m.Healthy = info.State, info.LastIndex, info.Leader != ""
		if !m.Healthy {
			m.Error = "knows no leader"
		}
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) askSelf(ctx context.Context, api, auth string, out *SelfInfo) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(api, "/")+"/v1/cell/self", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", auth)
	resp, err := s.fwd.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", api, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out)
}

// handleBackup streams a consistent copy of the committed state, in the format
// of the Raft snapshots (RestoreBackup reads it).
func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request) {
	// Everything the working state holds is committed first, then one read
	// transaction is the backup.
	s.mu.Lock()
	need := s.planned
	s.mu.Unlock()
	if err := s.waitCommitted(r.Context(), need); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	s.fsmMu.Lock()
	if err := s.flushDisk(); err != nil {
		s.fsmMu.Unlock()
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	txn := s.db.NewTransaction(false)
	s.fsmMu.Unlock()
	defer txn.Discard()
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := writeSnapshot(txn, w); err != nil {
		s.log.Warn("backup", "err", err)
	}
}

// RestoreBackup fills the empty state directory dir with a backup (GET
// /v1/cell/backup, `ballena server backup`), so that a new cell starts from it:
// open a server on dir afterwards and it bootstraps with that state.
func RestoreBackup(dir string, r io.Reader) error {
	if _, err := os.Stat(filepath.Join(dir, "raft", "raft.db")); err == nil {
		return fmt.Errorf("restore into %s: it holds Raft state already; restore into a new data dir", dir)
	}
	db, err := openDB(dir)
	if err != nil {
		return err
	}
	defer db.Close()
	empty := true
	if err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		it.Rewind()
		empty = !it.Valid()
		return nil
	}); err != nil {
		return err
	}
	if !empty {
		return fmt.Errorf("restore into %s: it holds state already; restore into a new data dir", dir)
	}
	if _, err := restoreSnapshot(db, r); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	// The new cell's log starts at 1: its entries must not be taken for old ones.
	return db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(keyRaftIndex)) })
}

// RemoveRequest names a server to take out of the cell's configuration.
type RemoveRequest struct {
	Name string `json:"name"`
}

func (s *Server) handleRemove(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	var req RemoveRequest
	if err := decode(body, &req); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	found := false
	for _, sv := range cf.Configuration().Servers {
		found = found || string(sv.ID) == req.Name
	}
	if !found {
		writeError(w, http.StatusNotFound, fmt.Errorf("server %s: %w (see ballena server members)", req.Name, ErrNotFound))
		return
	}
	if err := s.raft.RemoveServer(raft.ServerID(req.Name), 0, commitTimeout).Error(); err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("remove server %s: %w", req.Name, err))
		return
	}
	s.log.Warn("server removed from the cell", "server", req.Name)
	if req.Name != s.self.Name {
		if err := s.updateCtx(r.Context(), func(c *Cell) error {
			c.ch.servers[req.Name] = nil
			return nil
		}); err != nil {
			s.log.Warn("forget the removed server's addresses", "err", err)
		}
	}
	writeJSON(w, http.StatusOK, struct{}{})
}
