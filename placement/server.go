package placement

import (
	"context"
	"crypto/ed25519"
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

	"github.com/dgraph-io/badger/v4"
)

// Options configure a placement server.
type Options struct {
	Dir        string // badger directory for the cell's state
	AdminToken string // required for writes (jobs, drain)
	JoinToken  string // required to register a machine; may equal AdminToken
	BatchShare float64
	NodeTTL    time.Duration    // a machine silent this long is down; default 15s
	Now        func() time.Time // injectable clock; default time.Now
	Logger     *slog.Logger
}

// DefaultNodeTTL is how long a machine may miss heartbeats before its tasks move.
const DefaultNodeTTL = 15 * time.Second

// Server is the placement service: the cell's state in badger and memory, the
// scheduler, and the /v1/ HTTP API.
type Server struct {
	opts  Options
	db    *badger.DB
	log   *slog.Logger
	guard replayGuard

	mu     sync.Mutex
	cell   *Cell
	index  uint64        // last committed index
	notify chan struct{} // closed and replaced on every commit
}

// Open opens (or creates) the state in opts.Dir and loads it.
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
	db, err := openDB(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, db: db, log: opts.Logger, notify: make(chan struct{})}
	if err := s.reload(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) reload() error {
	c := NewCell(s.opts.BatchShare, s.opts.Now, uint64(time.Now().UnixNano()))
	idx, err := loadCell(s.db, c)
	if err != nil {
		return err
	}
	s.cell, s.index = c, idx
	return nil
}

// Close closes the state store.
func (s *Server) Close() error { return s.db.Close() }

// Index is the last committed change.
func (s *Server) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// update runs fn on the cell under the lock and commits what it changed in one
// synced badger transaction before anyone sees an answer. If the commit fails,
// the in-memory state is rebuilt from disk, so memory never runs ahead of it.
func (s *Server) update(fn func(c *Cell) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cell.index = s.index + 1
	s.cell.ch = newChanges()
	err := fn(s.cell)
	ch := s.cell.ch
	s.cell.ch = nil
	if ch.empty() {
		return err
	}
	if perr := persist(s.db, ch, s.cell.index); perr != nil {
		if rerr := s.reload(); rerr != nil {
			s.log.Error("placement state reload failed after a failed commit", "err", rerr)
		}
		return perr
	}
	s.index = s.cell.index
	close(s.notify)
	s.notify = make(chan struct{})
	for _, ev := range ch.evals {
		if ev.Placed+ev.Stopped+ev.Preempted+len(ev.Pending) > 0 {
			s.log.Debug("evaluation", "job", ev.Job, "trigger", ev.Trigger, "placed", ev.Placed,
				"stopped", ev.Stopped, "preempted", ev.Preempted, "pending", len(ev.Pending))
		}
	}
	return err
}

// Sweep marks machines that missed heartbeats for the TTL as down and moves their
// tasks. Run calls it periodically; tests call it after moving their clock. Each
// machine is its own commit, so that a rack going dark does not make one
// transaction too big for badger.
func (s *Server) Sweep() error {
	s.mu.Lock()
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

// Handler serves the /v1/ API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.read(s.handleStatus))
	mux.HandleFunc("GET /v1/jobs", s.read(s.handleJobs))
	mux.HandleFunc("POST /v1/jobs", s.admin(s.handleSubmit))
	mux.HandleFunc("GET /v1/jobs/{name}", s.read(s.handleJob))
	mux.HandleFunc("DELETE /v1/jobs/{name}", s.admin(s.handleStop))
	mux.HandleFunc("GET /v1/nodes", s.read(s.handleNodes))
	mux.HandleFunc("POST /v1/nodes/{id}/drain", s.admin(s.handleDrain))
	mux.HandleFunc("POST /v1/nodes/register", s.handleRegister)
	mux.HandleFunc("POST /v1/nodes/{id}/heartbeat", s.node(s.handleHeartbeat))
	mux.HandleFunc("GET /v1/nodes/{id}/allocations", s.node(s.handleAllocations))
	mux.HandleFunc("POST /v1/nodes/{id}/allocations/{alloc}/state", s.node(s.handleTaskState))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s %s (the API is under /v1/)", r.Method, r.URL.Path))
	})
	return mux
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
	}
	return http.StatusInternalServerError
}

const maxBody = 8 << 20

func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
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

// read allows reads from loopback, and from elsewhere with the admin token.
func (s *Server) read(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !isLoopback(r.RemoteAddr) && !checkBearer(r, s.opts.AdminToken) {
			writeError(w, http.StatusUnauthorized, errors.New("reads from outside this machine need the admin token"))
			return
		}
		h(w, r)
	}
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			writeError(w, http.StatusUnauthorized, errors.New("this request needs the admin token (Authorization: Bearer ...)"))
			return
		}
		if !checkBearer(r, s.opts.AdminToken) {
			writeError(w, http.StatusForbidden, errors.New("wrong admin token"))
			return
		}
		h(w, r)
	}
}

// node verifies a request signed by the node named in the path.
func (s *Server) node(h func(w http.ResponseWriter, r *http.Request, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(r)
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
	if n := s.cell.byID[id]; n != nil && len(n.PublicKey) == ed25519.PublicKeySize {
		return ed25519.PublicKey(n.PublicKey)
	}
	return nil
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cell
	writeJSON(w, http.StatusOK, map[string]any{
		"index": s.index, "nodes": len(c.nodes), "jobs": len(c.jobs), "allocations": len(c.allocs),
		"capacity": c.capacity, "allocated": c.used, "batch_allocated": c.batchUsed, "batch_share": c.BatchShare,
	})
}

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	jobs := make([]*Job, 0, len(s.cell.jobs))
	for _, name := range sortedKeys(s.cell.jobs) {
		j := *s.cell.jobs[name].Job
		jobs = append(jobs, &j)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, jobs)
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	st, err := s.cell.jobStatus(r.PathValue("name"))
	var out []byte
	if err == nil {
		out, err = json.MarshalIndent(st, "", "  ") // under the lock: st shares the cell's records
	}
	s.mu.Unlock()
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(out, '\n'))
}

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
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
	s.respondUpdate(w, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.submitJob(&j, expect)
		if err != nil && !errors.Is(err, ErrConflict) {
			err = badRequest{err}
		}
		return &j, evs, err
	})
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.respondUpdate(w, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.stopJob(name)
		if err != nil {
			return nil, nil, err
		}
		return c.jobs[name].Job, evs, nil
	})
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
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
	s.respondUpdate(w, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.setDrain(id, req.Enable)
		return nil, evs, err
	})
}

// respondUpdate commits fn's changes and answers with a snapshot of the result,
// serialized under the lock.
func (s *Server) respondUpdate(w http.ResponseWriter, fn func(c *Cell) (*Job, []*Evaluation, error)) {
	var out []byte
	err := s.update(func(c *Cell) error {
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
	if !checkBearer(r, s.opts.JoinToken) {
		writeError(w, http.StatusUnauthorized, errors.New("registering a machine needs the join token (Authorization: Bearer ...)"))
		return
	}
	body, err := readBody(r)
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
	err = s.update(func(c *Cell) error {
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
	err := s.update(func(c *Cell) error {
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
	err := s.update(func(c *Cell) error {
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
		wait = min(d, 5*time.Minute)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	id := r.PathValue("id")
	answer := func() {
		s.mu.Lock()
		l, err := s.cell.nodeAllocs(id)
		s.mu.Unlock()
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
	s.mu.Lock()
	nodes := s.cell.nodeInfos()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, nodes)
}
