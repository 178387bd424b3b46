package placement

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"go.etcd.io/bbolt"

	"ballena.dev/placement/cellca"
)

// CellConfig makes a server one of a cell of several, replicating over Raft with
// mutual TLS. Without it (Options.Cell nil) the server is a cell of one whose
// Raft runs in process.
type CellConfig struct {
	// Identity is the server's certificate from the cell CA; its common name is the
	// server's name in the cell.
	Identity *cellca.Identity
	// RaftListener accepts Raft connections (plain TCP; TLS is added here).
	RaftListener net.Listener
	// RaftAdvertise is the Raft address other servers dial; default the listener's.
	RaftAdvertise string
	// APIURL is how other servers, nodes and clients reach this server's API.
	APIURL string
	// BootstrapExpect is how many servers form a new cell. The first start of each
	// waits until it has heard from the others (Join) and then they elect a leader.
	// 0 with Join set: join a running cell.
	BootstrapExpect int
	// Join lists Raft addresses of other servers.
	Join []string
	// SnapshotThreshold is how many log entries trigger a snapshot (default 8192),
	// checked every SnapshotInterval (default 2m); the log is then compacted.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// Timeouts scale Raft's heartbeat and election timeouts; default 1s.
	Timeout time.Duration
	// LogSegmentSize is the size of the Raft log's segment files (default
	// 64 MiB, as Consul's). Compaction deletes whole segments, so the log keeps
	// up to a segment more than the snapshots need.
	LogSegmentSize int
}

// ServerInfo is a server of the cell as the replicated state records it.
type ServerInfo struct {
	Name string `json:"name"`
	API  string `json:"api"`
	Raft string `json:"raft"`
}

// Member is one server as `ballena server members` shows it.
type Member struct {
	Name      string `json:"name"`
	API       string `json:"api,omitempty"`
	Raft      string `json:"raft"`
	Voter     bool   `json:"voter"`
	Leader    bool   `json:"leader"`
	Healthy   bool   `json:"healthy"`
	State     string `json:"state,omitempty"` // Leader, Follower, Candidate, as the server says
	LastIndex uint64 `json:"last_index"`      // last Raft index the server applied
	Error     string `json:"error,omitempty"` // why it is not healthy
}

// Errors a cell gives when a write cannot be committed.
var (
	ErrNoLeader = errors.New("no leader: this server cannot reach a quorum of the cell's servers; retry another server or wait for an election")
	ErrNoQuorum = errors.New("no quorum: the write was not committed (leadership lost or a majority of servers unreachable)")
)

const (
	joinMagic       = 0xB7 // first byte of a join/info request on the Raft port (Raft's own RPC types are small)
	raftDialTimeout = 5 * time.Second
)

// streamLayer is Raft's transport: TLS over TCP, both sides presenting server
// certificates of the cell CA. A connection whose first byte is joinMagic is a
// server asking about the cell or to join it, not Raft.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr
	cfg       *tls.Config
	conns     chan net.Conn
	done      chan struct{}
	onJoin    func(conn *tls.Conn, r *bufio.Reader)
	log       *slog.Logger
}

// newStreamLayer starts accepting at once, so onJoin is given here: set later, the
// accept goroutines would read it while it is written.
func newStreamLayer(ln net.Listener, advertise string, cfg *tls.Config, onJoin func(*tls.Conn, *bufio.Reader), log *slog.Logger) (*streamLayer, error) {
	var adv net.Addr = ln.Addr()
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
		}
		adv = a
	}
	if ta, ok := adv.(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
		return nil, fmt.Errorf("raft address %s is not reachable by other servers: give an advertise address", adv)
	}
	sl := &streamLayer{ln: ln, advertise: adv, cfg: cfg, conns: make(chan net.Conn), done: make(chan struct{}), onJoin: onJoin, log: log}
	go sl.acceptLoop()
	return sl, nil
}

func (sl *streamLayer) acceptLoop() {
	for {
		c, err := sl.ln.Accept()
		if err != nil {
			select {
			case <-sl.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			close(sl.conns)
			return
		}
		go sl.classify(c)
	}
}

// classify completes the TLS handshake (peer checked) and routes the connection.
func (sl *streamLayer) classify(c net.Conn) {
	tc := tls.Server(c, sl.cfg)
	c.SetDeadline(time.Now().Add(raftDialTimeout))
	if err := tc.Handshake(); err != nil {
		sl.log.Warn("raft connection refused", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	br := bufio.NewReader(tc)
	b, err := br.Peek(1)
	if err != nil {
		tc.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if b[0] == joinMagic {
		br.ReadByte()
		if sl.onJoin != nil {
			sl.onJoin(tc, br)
		}
		tc.Close()
		return
	}
	select {
	case sl.conns <- &bufConn{Conn: tc, r: br}:
	case <-sl.done:
		tc.Close()
	}
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (sl *streamLayer) Accept() (net.Conn, error) {
	select {
	case c, ok := <-sl.conns:
		if !ok {
			return nil, errors.New("raft listener closed")
		}
		return c, nil
	case <-sl.done:
		return nil, errors.New("raft listener closed")
	}
}

func (sl *streamLayer) Close() error {
	select {
	case <-sl.done:
	default:
		close(sl.done)
	}
	return sl.ln.Close()
}

func (sl *streamLayer) Addr() net.Addr { return sl.advertise }

func (sl *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	return tls.DialWithDialer(d, "tcp", string(addr), sl.cfg)
}

// joinRequest is asked on the Raft port: "info" (who are you, what do you know)
// or "join" (add me as a voter, and record my addresses).
type joinRequest struct {
	Op     string     `json:"op"`
	Server ServerInfo `json:"server"`
}

type joinResponse struct {
	Server     ServerInfo `json:"server"`
	HasState   bool       `json:"has_state"`
	LeaderRaft string     `json:"leader_raft,omitempty"`
	Error      string     `json:"error,omitempty"`
}

// askPeer sends one join request to a server's Raft port.
func askPeer(ctx context.Context, cfg *tls.Config, addr string, req joinRequest) (*joinResponse, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: raftDialTimeout}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", addr, err)
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c.SetDeadline(deadline)
	b, _ := json.Marshal(req)
	if _, err := c.Write(append([]byte{joinMagic}, append(b, '\n')...)); err != nil {
		return nil, fmt.Errorf("server %s: %w", addr, err)
	}
	var resp joinResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("server %s: read answer: %w", addr, err)
	}
	if resp.Error != "" {
		return &resp, fmt.Errorf("server %s: %s", addr, resp.Error)
	}
	return &resp, nil
}

// handleJoin answers a join request from another server of the cell (the TLS
// handshake has checked its certificate).
func (s *Server) handleJoin(conn *tls.Conn, r *bufio.Reader) {
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	select {
	case <-s.raftReady:
	case <-time.After(10 * time.Second):
		return
	}
	var req joinRequest
	line, err := r.ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &req) != nil {
		return
	}
	peerName := ""
	if cs := conn.ConnectionState(); len(cs.PeerCertificates) > 0 {
		peerName = cs.PeerCertificates[0].Subject.CommonName
	}
	resp := joinResponse{Server: s.self}
	leaderAddr, _ := s.raft.LeaderWithID()
	resp.LeaderRaft = string(leaderAddr)
	resp.HasState = s.raftHadState || s.raft.LastIndex() > 0
	switch req.Op {
	case "info":
	case "join":
		if req.Server.Name != peerName {
			resp.Error = fmt.Sprintf("certificate names %q, the request %q", peerName, req.Server.Name)
			break
		}
		if err := s.addServer(req.Server); err != nil {
			resp.Error = err.Error()
		}
	default:
		resp.Error = "unknown request " + req.Op
	}
	b, _ := json.Marshal(resp)
	conn.Write(append(b, '\n'))
}

// addServer makes a server a voter (if it is not one already) and records its
// addresses. Leader only.
func (s *Server) addServer(sv ServerInfo) error {
	if s.raft.State() != raft.Leader {
		return ErrNoLeader
	}
	cf := s.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	present := false
	for _, m := range cf.Configuration().Servers {
		if string(m.ID) == sv.Name && string(m.Address) == sv.Raft && m.Suffrage == raft.Voter {
			present = true
		}
	}
	if !present {
		if err := s.raft.AddVoter(raft.ServerID(sv.Name), raft.ServerAddress(sv.Raft), 0, 30*time.Second).Error(); err != nil {
			return fmt.Errorf("add server %s: %w", sv.Name, err)
		}
		s.log.Info("server added to the cell", "server", sv.Name, "raft", sv.Raft, "api", sv.API)
	}
	return s.recordServer(sv)
}

// recordServer commits a server's addresses if they changed.
func (s *Server) recordServer(sv ServerInfo) error {
	s.mu.Lock()
	old := s.servers[sv.Name]
	s.mu.Unlock()
	if old != nil && *old == sv {
		return nil
	}
	return s.update(func(c *Cell) error {
		cp := sv
		c.ch.servers[sv.Name] = &cp
		return nil
	})
}

// hclogAdapter sends Raft's log lines to slog.
type hclogWriter struct{ log *slog.Logger }

func (w hclogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	switch {
	case strings.Contains(line, "[ERROR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
		level = slog.LevelDebug
	}
	if i := strings.Index(line, "] "); i >= 0 {
		line = line[i+2:]
	}
	w.log.Log(context.Background(), level, "raft: "+line)
	return len(p), nil
}

// raftLogStore is Raft's log and its stable store (term, vote) in one.
type raftLogStore interface {
	raft.LogStore
	raft.StableStore
}

// Raft's log under dir/raft: raftWALDir for the write-ahead log (raft-wal), and
// raftBoltFile for the bolt store servers used before it.
const (
	raftWALDir   = "wal"
	raftBoltFile = "raft.db"
)

// openRaftLog opens Raft's log store under dir. New data dirs get a write-ahead
// log (raft-wal, as Consul runs): an append is one write and one fsync of the
// segment file, where bolt rewrites B-tree pages and syncs twice per commit —
// bolt's commits were an eighth of a busy cell's CPU. A dir that holds a bolt
// log keeps it: its entries, term and vote are the server's Raft state, and
// copying them is a migration nobody needs to trust.
func openRaftLog(dir string, segmentSize int, hl hclog.Logger) (raftLogStore, func() error, error) {
	bolt := filepath.Join(dir, raftBoltFile)
	if _, err := os.Stat(bolt); err == nil {
		// The map freelist and no synced freelist, as Consul and Nomad run bbolt
		// under Raft: allocating pages for large entries stays cheap as the file grows.
		store, err := raftboltdb.New(raftboltdb.Options{Path: bolt,
			BoltOptions: &bbolt.Options{Timeout: time.Second, FreelistType: bbolt.FreelistMapType, NoFreelistSync: true}})
		if err != nil {
			return nil, nil, fmt.Errorf("raft log store %s: %w", bolt, err)
		}
		return store, store.Close, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("raft log store: %w", err)
	}
	wdir := filepath.Join(dir, raftWALDir)
	if err := os.MkdirAll(wdir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("raft log dir: %w", err)
	}
	// The WAL's Close leaves its metadata database open (and locked): close it
	// here, or the dir cannot be opened again in this process.
	meta := &metadb.BoltMetaDB{}
	store, err := raftwal.Open(wdir, raftwal.WithLogger(hl.Named("wal")), raftwal.WithMetaStore(meta), raftwal.WithSegmentSize(segmentSize))
	if err != nil {
		meta.Close()
		return nil, nil, fmt.Errorf("raft log store %s: %w", wdir, err)
	}
	return store, func() error { return errors.Join(store.Close(), meta.Close()) }, nil
}

// hasRaftLog says whether the data dir dir holds a Raft log, of either store.
func hasRaftLog(dir string) bool {
	for _, p := range []string{raftBoltFile, raftWALDir} {
		if _, err := os.Stat(filepath.Join(dir, "raft", p)); err == nil {
			return true
		}
	}
	return false
}

// startRaft opens the log store and snapshots under dir/raft and starts Raft.
func (s *Server) startRaft() error {
	dir := filepath.Join(s.opts.Dir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("raft dir: %w", err)
	}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Output: hclogWriter{s.log}, Level: hclog.Info})
	var segmentSize int // 0: raft-wal's default
	if s.opts.Cell != nil {
		segmentSize = s.opts.Cell.LogSegmentSize
	}
	store, closeStore, err := openRaftLog(dir, segmentSize, hl)
	if err != nil {
		return err
	}
	s.closers = append(s.closers, closeStore)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hl)
	if err != nil {
		return fmt.Errorf("raft snapshots: %w", err)
	}
	s.raftHadState, err = raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("raft state: %w", err)
	}
	conf := raft.DefaultConfig()
	conf.Logger = hl
	conf.BatchApplyCh = true
	conf.MaxAppendEntries = 256
	conf.TrailingLogs = 2048
	cc := s.opts.Cell
	var trans raft.Transport
	if cc == nil {
		// A cell of one: nothing to reach, so elections can be quick.
		conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
		conf.LocalID = raft.ServerID(s.self.Name)
		addr, t := raft.NewInmemTransport(raft.ServerAddress("local"))
		s.self.Raft = string(addr)
		trans = t
	} else {
		if cc.Timeout > 0 {
			conf.HeartbeatTimeout, conf.ElectionTimeout = cc.Timeout, cc.Timeout
			conf.LeaderLeaseTimeout = cc.Timeout / 2
		}
		if cc.SnapshotInterval > 0 {
			conf.SnapshotInterval = cc.SnapshotInterval
		}
		if cc.SnapshotThreshold > 0 {
			conf.SnapshotThreshold = cc.SnapshotThreshold
			conf.TrailingLogs = min(conf.TrailingLogs, cc.SnapshotThreshold)
		}
		conf.LocalID = raft.ServerID(s.self.Name)
		sl, err := newStreamLayer(cc.RaftListener, cc.RaftAdvertise, cc.Identity.RaftConfig(), s.handleJoin, s.log)
		if err != nil {
			return err
		}
		s.self.Raft = sl.Addr().String()
		nt := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: sl, MaxPool: 4, Timeout: 10 * time.Second, Logger: hl})
		s.closers = append(s.closers, nt.Close)
		trans = nt
	}
	// Recent entries from memory, as Consul and Nomad run it: a follower
	// applies, and the leader sends, what was just appended without reading it
	// back from the log.
	logs, err := raft.NewLogCache(512, store)
	if err != nil {
		return fmt.Errorf("raft log cache: %w", err)
	}
	r, err := raft.NewRaft(conf, (*fsm)(s), logs, store, snaps, trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	close(s.raftReady)
	if cc == nil && !s.raftHadState {
		if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: raft.ServerAddress(s.self.Raft)}}}).Error(); err != nil {
			return fmt.Errorf("bootstrap the cell: %w", err)
		}
	}
	return nil
}

// formCell bootstraps a new cell or joins a running one, as the configuration
// says, until ctx ends. A server that has Raft state already needs neither.
func (s *Server) formCell(ctx context.Context) {
	cc := s.opts.Cell
	if cc == nil || s.raftHadState {
		return
	}
	cfg := cc.Identity.RaftConfig()
	expect := cc.BootstrapExpect
	if expect == 0 && len(cc.Join) == 0 {
		expect = 1
	}
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		if expect > 0 {
			peers := map[string]ServerInfo{}
			joined := false
			for _, addr := range cc.Join {
				resp, err := askPeer(ctx, cfg, addr, joinRequest{Op: "info"})
				if err != nil {
					s.log.Debug("cell peer not answering yet", "addr", addr, "err", err)
					continue
				}
				if resp.HasState && resp.LeaderRaft != "" {
					joined = true // the cell exists already: join it
				}
				if resp.Server.Name != s.self.Name {
					peers[resp.Server.Name] = resp.Server
				}
			}
			if joined {
				expect = 0
				continue
			}
			if len(peers)+1 >= expect {
				servers := []raft.Server{{ID: raft.ServerID(s.self.Name), Address: raft.ServerAddress(s.self.Raft)}}
				for _, p := range peers {
					servers = append(servers, raft.Server{ID: raft.ServerID(p.Name), Address: raft.ServerAddress(p.Raft)})
				}
				err := s.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
				if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
					s.log.Error("bootstrap the cell", "err", err)
				} else {
					s.log.Info("cell bootstrapped", "servers", len(servers))
				}
				return
			}
			s.log.Info("waiting for the other servers of the new cell", "have", len(peers)+1, "expect", expect)
		} else {
			for _, addr := range cc.Join {
				resp, err := askPeer(ctx, cfg, addr, joinRequest{Op: "join", Server: s.self})
				if err != nil && resp != nil && resp.LeaderRaft != "" && resp.LeaderRaft != addr {
					resp, err = askPeer(ctx, cfg, resp.LeaderRaft, joinRequest{Op: "join", Server: s.self})
				}
				if err == nil {
					s.log.Info("joined the cell", "via", addr)
					return
				}
				s.log.Info("join the cell: not yet", "via", addr, "err", err)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// keepRecorded makes sure the leader has this server's API and Raft addresses in
// the replicated state (bootstrapped servers never sent a join request).
func (s *Server) keepRecorded(ctx context.Context) {
	if s.opts.Cell == nil {
		return
	}
	cfg := s.opts.Cell.Identity.RaftConfig()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		s.mu.Lock()
		rec := s.servers[s.self.Name]
		s.mu.Unlock()
		if rec == nil || *rec != s.self {
			if leader, _ := s.raft.LeaderWithID(); leader != "" {
				if s.raft.State() == raft.Leader {
					if err := s.recordServer(s.self); err != nil {
						s.log.Debug("record this server", "err", err)
					}
				} else if _, err := askPeer(ctx, cfg, string(leader), joinRequest{Op: "join", Server: s.self}); err != nil {
					s.log.Debug("record this server at the leader", "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func randomID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// fsm is the Server seen as Raft's state machine.
type fsm Server

func (f *fsm) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch applies the entries Raft committed together: their records go to
// badger (many entries per write batch, in the background: the log keeps them
// until a snapshot, and snapshots flush first), and to memory (except on the
// leader, whose working state computed them).
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	s := (*Server)(f)
	out := make([]any, len(logs))
	s.fsmMu.Lock()
	defer s.fsmMu.Unlock()
	type decoded struct {
		index  uint64
		origin string
		ops    []*op
	}
	var entries []decoded
	var all []*op
	var last uint64
	for i, l := range logs {
		if l.Type != raft.LogCommand || l.Index <= s.appliedRaft {
			continue
		}
		origin, ops, err := decodeEntry(l.Data)
		if err != nil {
			s.log.Error("undecodable raft entry", "index", l.Index, "err", err)
			out[i] = fmt.Errorf("raft entry %d: %w", l.Index, err)
			continue
		}
		entries = append(entries, decoded{l.Index, origin, ops})
		all = append(all, ops...)
		last = l.Index
	}
	if len(entries) == 0 {
		return out
	}
	// To disk in the background (diskWriter); memory now.
	if err := s.queueWrite(pendingWrite{ops: all, raftIndex: last}); err != nil {
		for i := range out {
			out[i] = err
		}
		return out
	}
	// The leader's own entries (its working state already holds them) need only
	// the commit side's lock, so that acknowledgements never wait for workers
	// planning under s.mu. The origin cannot change meanwhile: that takes fsmMu.
	s.cmu.Lock()
	origin := s.qorigin
	s.cmu.Unlock()
	needMu := false
	for _, e := range entries {
		for _, o := range e.ops {
			needMu = needMu || e.origin != origin || len(o.Servers) > 0
		}
	}
	if needMu {
		s.mu.Lock()
		defer s.mu.Unlock()
	}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	for _, e := range entries {
		s.appliedRaft = e.index
		mine := e.origin == origin
		for _, o := range e.ops {
			if !mine {
				if err := s.cell.applyRecords(o); err != nil {
					s.log.Error("apply raft entry to memory", "index", e.index, "err", err)
				}
			}
			for name, raw := range o.Servers {
				sv := &ServerInfo{}
				if isNull(raw) || json.Unmarshal(raw, sv) != nil {
					delete(s.servers, name)
				} else {
					s.servers[name] = sv
				}
			}
			s.committed = max(s.committed, o.Index)
		}
		s.events.publish(e.ops) // the events stream and the UI (events.go)
		if !mine {
			s.planned = max(s.planned, s.committed)
		}
	}
	s.wake()
	return out
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	s := (*Server)(f)
	s.fsmMu.Lock()
	defer s.fsmMu.Unlock()
	// The snapshot is badger's state: everything applied must be there first.
	if err := s.flushDisk(); err != nil {
		return nil, err
	}
	return &fsmSnapshot{txn: s.db.NewTransaction(false)}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	s := (*Server)(f)
	defer rc.Close()
	s.fsmMu.Lock()
	defer s.fsmMu.Unlock()
	if err := s.flushDisk(); err != nil {
		return err
	}
	replaced, err := restoreSnapshot(s.db, rc)
	if replaced || err != nil {
		// Even a failed restore may have dropped what badger held.
		err = errors.Join(err, s.diskReplaced())
	}
	if err != nil || !replaced {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reloadLocked(); err != nil {
		return err
	}
	s.cmu.Lock()
	s.stats.SnapshotsRestored++
	s.wake()
	s.cmu.Unlock()
	s.log.Info("state restored from a snapshot", "raft_index", s.appliedRaft, "index", s.Index())
	return nil
}
