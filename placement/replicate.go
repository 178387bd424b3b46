package placement

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	recordjson "github.com/segmentio/encoding/json"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	"github.com/klauspost/compress/s2"
)

// Replication. The leader computes each operation on its in-memory Cell, and the
// records the operation touched (nodes, jobs, tasks, allocations, evaluations,
// servers) travel in a Raft entry; many operations are group-committed in one
// entry. Every server's state machine (fsm) writes the records to its badger and
// applies them to its own Cell, except the leader, whose Cell already holds them.

// op is one operation's records, each already encoded (JSON; allocations
// normalized and tasks in binary, see records.go; an empty value is a
// deletion), so that the leader encodes a record once, under its lock, and
// every server writes those bytes to badger as they are.
type op struct {
	Index   uint64
	Nodes   map[string]json.RawMessage
	Jobs    map[string]json.RawMessage
	Tasks   map[string]json.RawMessage
	Allocs  map[string]json.RawMessage
	Evals   map[string]json.RawMessage // by job: its last evaluation
	Servers map[string]json.RawMessage
}

// Wire format of a Raft entry (binary, so that nothing is scanned twice):
//
//	entry: 'B' 1 | uvarint len(origin) origin | uvarint count | count x (uvarint len, op)
//	op:    uvarint index | records | 0
//	record: kind byte (n j t a e s) | uvarint len(key) key | uvarint len(value) value (empty: deleted)
//
// Origin names the leader's working state that computed the operations: its own
// fsm skips applying them to memory again.
const (
	entryMagic   = 'B'
	entryVersion = 1
	entryS2      = 2 // the same, the body after the two header bytes compressed with s2
)

func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendBytes(b, v []byte) []byte { return append(appendUvarint(b, uint64(len(v))), v...) }

// encodeEntry frames the encoded operations of one Raft entry.
func encodeEntry(origin string, ops [][]byte) []byte {
	n := 16 + len(origin)
	for _, o := range ops {
		n += len(o) + binary.MaxVarintLen64
	}
	b := make([]byte, 0, n)
	b = append(b, entryMagic, entryVersion)
	b = appendBytes(b, []byte(origin))
	b = appendUvarint(b, uint64(len(ops)))
	for _, o := range ops {
		b = appendBytes(b, o)
	}
	// JSON records compress several times over: less for Raft's log to write and
	// to send to every follower.
	z := make([]byte, 2, 2+s2.MaxEncodedLen(len(b)-2))
	z[0], z[1] = entryMagic, entryS2
	return z[:2+len(s2.Encode(z[2:cap(z)], b[2:]))]
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// varint reads a signed varint (binary.AppendVarint's zig-zag encoding).
func (r *reader) varint() int64 {
	ux := r.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = errors.New("truncated record")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = errors.New("truncated field")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// decodeEntry reads an entry; the records point into data.
func decodeEntry(data []byte) (string, []*op, error) {
	if len(data) < 2 || data[0] != entryMagic || data[1] != entryVersion && data[1] != entryS2 {
		return "", nil, errors.New("not a placement entry (or of another version)")
	}
	body := data[2:]
	if data[1] == entryS2 {
		var err error
		if body, err = s2.Decode(nil, body); err != nil {
			return "", nil, fmt.Errorf("decode entry: %w", err)
		}
	}
	r := &reader{b: body}
	origin := string(r.bytes())
	count := r.uvarint()
	if r.err != nil || count > uint64(len(data)) {
		return "", nil, fmt.Errorf("decode entry: %v", r.err)
	}
	ops := make([]*op, 0, count)
	for range count {
		o, err := decodeOp(r.bytes())
		if r.err != nil || err != nil {
			return "", nil, fmt.Errorf("decode entry: %v %v", r.err, err)
		}
		ops = append(ops, o)
	}
	return origin, ops, nil
}

// countRecords counts an encoded op's records by kind, so that decodeOp makes
// its maps at their size instead of growing them record by record.
func countRecords(data []byte) (counts [256]int) {
	r := &reader{b: data}
	r.uvarint()
	for r.err == nil && len(r.b) > 0 && r.b[0] != 0 {
		kind := r.b[0]
		r.b = r.b[1:]
		r.bytes()
		r.bytes()
		counts[kind]++
	}
	return counts
}

func decodeOp(data []byte) (*op, error) {
	counts := countRecords(data)
	r := &reader{b: data}
	o := &op{Index: r.uvarint()}
	for r.err == nil {
		if len(r.b) == 0 {
			return nil, errors.New("op not terminated")
		}
		kind := r.b[0]
		r.b = r.b[1:]
		if kind == 0 {
			return o, nil
		}
		k := string(r.bytes())
		v := json.RawMessage(r.bytes())
		var m *map[string]json.RawMessage
		switch kind {
		case 'n':
			m = &o.Nodes
		case 'j':
			m = &o.Jobs
		case 't':
			m = &o.Tasks
		case 'a':
			m = &o.Allocs
		case 'e':
			m = &o.Evals
		case 's':
			m = &o.Servers
		default:
			return nil, fmt.Errorf("unknown record kind %q", kind)
		}
		if *m == nil {
			*m = make(map[string]json.RawMessage, counts[kind])
		}
		(*m)[k] = v
	}
	return nil, r.err
}

func appendRecords[V any](b []byte, kind byte, m map[string]*V) ([]byte, error) {
	for k, v := range m {
		b = append(b, kind)
		b = appendBytes(b, []byte(k))
		if v == nil {
			b = appendUvarint(b, 0)
			continue
		}
		js, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		b = appendBytes(b, js)
	}
	return b, nil
}

// appendRecord frames one record whose value enc appends (nil v: deleted).
func appendRecord[V any](b []byte, kind byte, k string, v *V, enc func([]byte, *V) ([]byte, error)) ([]byte, error) {
	b = append(b, kind)
	b = appendString(b, k)
	if v == nil {
		return appendUvarint(b, 0), nil
	}
	// The value's length goes before it: leave room for the longest varint and
	// close the gap once the length is known.
	at := len(b)
	b = append(b, make([]byte, binary.MaxVarintLen64)...)
	b, err := enc(b, v)
	if err != nil {
		return nil, err
	}
	n := len(b) - at - binary.MaxVarintLen64
	var lb [binary.MaxVarintLen64]byte
	l := binary.PutUvarint(lb[:], uint64(n))
	copy(b[at:], lb[:l])
	copy(b[at+l:], b[at+binary.MaxVarintLen64:])
	return b[:at+l+n], nil
}

// encodeOp encodes an operation's changes; the caller holds the lock that guards
// the records. spec finds the job versions allocations are normalized against
// (records.go): the state the operation leaves, which every server holds when
// it reads the allocations, since jobs are applied before them.
func encodeOp(ch *changes, index uint64, spec specLookup) ([]byte, error) {
	b := appendUvarint(make([]byte, 0, 128*(len(ch.allocs)+len(ch.tasks))+512*(len(ch.nodes)+4)), index)
	var err error
	if b, err = appendRecords(b, 'n', ch.nodes); err != nil {
		return nil, err
	}
	if b, err = appendRecords(b, 'j', ch.jobs); err != nil {
		return nil, err
	}
	for k, t := range ch.tasks {
		b, _ = appendRecord(b, 't', k, t, func(b []byte, t *Task) ([]byte, error) { return appendTask(b, t), nil })
	}
	for k, a := range ch.allocs {
		if b, err = appendRecord(b, 'a', k, a, func(b []byte, a *Alloc) ([]byte, error) {
			return appendAlloc(b, a, spec(a.Job, a.JobVersion))
		}); err != nil {
			return nil, err
		}
	}
	if b, err = appendRecords(b, 's', ch.servers); err != nil {
		return nil, err
	}
	if len(ch.evals) > 0 {
		evs := map[string]*Evaluation{}
		for _, ev := range ch.evals {
			evs[ev.Job] = ev
		}
		if b, err = appendRecords(b, 'e', evs); err != nil {
			return nil, err
		}
	}
	return append(b, 0), nil
}

func isNull(b json.RawMessage) bool { return len(b) == 0 }

// Badger keys beside the records of store.go.
const (
	keyRaftIndex = "meta/raft"
	prefixServer = "server/"
)

// collectOps gathers the records of ops, in order, into latest (badger key ->
// value, nil: deleted) and tasks (taskKey -> record, nil: deleted; written by
// chunks), the last write of a key winning. It returns the highest op index.
func collectOps(latest, tasks map[string][]byte, ops []*op) uint64 {
	var opIndex uint64
	for _, o := range ops {
		opIndex = max(opIndex, o.Index)
		for k, v := range o.Tasks {
			if isNull(v) {
				tasks[k] = nil
			} else {
				tasks[k] = v
			}
		}
		for _, set := range []struct {
			prefix string
			m      map[string]json.RawMessage
		}{{prefixNode, o.Nodes}, {prefixJob, o.Jobs}, {prefixAlloc, o.Allocs}, {prefixEval, o.Evals}, {prefixServer, o.Servers}} {
			for k, v := range set.m {
				if isNull(v) {
					latest[set.prefix+k] = nil
				} else {
					latest[set.prefix+k] = v
				}
			}
		}
	}
	return opIndex
}

// pendingWrite is one applied entry on its way to badger.
type pendingWrite struct {
	ops       []*op
	raftIndex uint64
	flushed   chan error // set: a flush request, answered once everything before is written
	// forget, with flushed: badger's content was replaced (a snapshot
	// restored); what the writer remembers of it is stale.
	forget bool
}

// diskWriter writes applied entries to badger in the background, many per
// write batch. The Raft log holds every entry until a snapshot covers it, and a
// snapshot is taken only after a flush, so badger may lag the state in memory
// without anything being lost: after a crash the log fills the gap.
// diskLinger is how long the disk writer waits for more entries to batch.
const diskLinger = 2 * time.Millisecond

func (s *Server) diskWriter() {
	defer close(s.writerDone)
	// The task chunks as last written, so that a chunk is read from badger only
	// the first time the writer touches it.
	chunks := map[string][]byte{}
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for first := range s.writes {
		batch := []pendingWrite{first}
		// Entries come a few at a time; waiting a moment for more makes fewer
		// batches, so fewer badger commits and chunk rewrites. Only a flush
		// waits on the writer, and a flush ends the wait.
		var wait <-chan time.Time
		if first.flushed == nil {
			linger.Reset(diskLinger)
			wait = linger.C
		}
	more:
		for len(batch) < 256 {
			var w pendingWrite
			var ok bool
			select {
			case w, ok = <-s.writes:
			default:
				if wait == nil {
					break more
				}
				select {
				case w, ok = <-s.writes:
				case <-wait:
					wait = nil
					continue more // take what is there already, then write
				}
			}
			if !ok {
				break more
			}
			batch = append(batch, w)
			if w.flushed != nil {
				wait = nil
			}
		}
		linger.Stop()
		// Each key once per batch, with its last value: badger's write batch
		// does not promise that the later of two writes of a key wins.
		n, nt := 0, 0
		for _, w := range batch {
			for _, o := range w.ops {
				n += len(o.Nodes) + len(o.Jobs) + len(o.Allocs) + len(o.Evals) + len(o.Servers)
				nt += len(o.Tasks)
			}
		}
		latest, tasks := make(map[string][]byte, n), make(map[string][]byte, nt)
		var opIndex, raftIndex uint64
		for _, w := range batch {
			if w.flushed == nil {
				opIndex, raftIndex = max(opIndex, collectOps(latest, tasks, w.ops)), max(raftIndex, w.raftIndex)
			}
		}
		wb := s.db.NewWriteBatch()
		err := writeTaskChunks(s.db, wb, tasks, chunks)
		for k, v := range latest {
			if err != nil {
				break
			}
			if v == nil {
				err = wb.Delete([]byte(k))
			} else {
				err = wb.Set([]byte(k), v)
			}
		}
		if err == nil && raftIndex > 0 {
			if opIndex > 0 {
				err = wb.Set([]byte(keyIndex), u64(opIndex))
			}
			if err == nil {
				err = wb.Set([]byte(keyRaftIndex), u64(raftIndex))
			}
		}
		if err == nil {
			err = wb.Flush()
		} else {
			wb.Cancel()
		}
		if err != nil {
			clear(chunks) // ahead of what badger holds
			err = fmt.Errorf("write placement state up to raft index %d: %w", raftIndex, err)
			s.log.Error("write the state to disk", "err", err)
		}
		for _, w := range batch {
			if w.forget {
				clear(chunks)
			}
			if w.flushed != nil {
				w.flushed <- err
			}
		}
	}
}

// flushDisk returns once every entry applied so far is in badger.
func (s *Server) flushDisk() error {
	return s.flushWrite(pendingWrite{})
}

// diskReplaced tells the disk writer that badger's content was replaced
// underneath it; it returns once the writer knows.
func (s *Server) diskReplaced() error {
	return s.flushWrite(pendingWrite{forget: true})
}

func (s *Server) flushWrite(w pendingWrite) error {
	w.flushed = make(chan error, 1)
	if err := s.queueWrite(w); err != nil {
		return err
	}
	return <-w.flushed
}

// queueWrite hands w to the disk writer, unless the server is closing.
func (s *Server) queueWrite(w pendingWrite) error {
	s.writesMu.RLock()
	defer s.writesMu.RUnlock()
	if s.writesClosed {
		return errors.New("placement server closed")
	}
	s.writes <- w
	return nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func readU64(txn *badger.Txn, key string) (uint64, error) {
	item, err := txn.Get([]byte(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var v uint64
	err = item.Value(func(b []byte) error {
		if len(b) != 8 {
			return fmt.Errorf("%s: bad length %d", key, len(b))
		}
		v = binary.BigEndian.Uint64(b)
		return nil
	})
	return v, err
}

// loadServers reads the server records.
func loadServers(db *badger.DB) (map[string]*ServerInfo, uint64, error) {
	out := map[string]*ServerInfo{}
	var raftIndex uint64
	err := db.View(func(txn *badger.Txn) error {
		var err error
		if raftIndex, err = readU64(txn, keyRaftIndex); err != nil {
			return err
		}
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(prefixServer)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			sv := &ServerInfo{}
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, sv) }); err != nil {
				return err
			}
			out[sv.Name] = sv
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("load server records: %w", err)
	}
	return out, raftIndex, nil
}

// applyRecords brings the Cell to the records of o: upserts and deletions of
// whole records, so applying the same op twice changes nothing.
func (c *Cell) applyRecords(o *op) error {
	for id, raw := range o.Nodes {
		if isNull(raw) {
			continue // machines are never deleted
		}
		n := &Node{}
		if err := recordjson.Unmarshal(raw, n); err != nil {
			return fmt.Errorf("node %s: %w", id, err)
		}
		if old := c.byID[n.ID]; old != nil {
			n.LastSeen = old.LastSeen // liveness is the leader's memory, not the log's
		}
		c.putNode(n)
	}
	for name, raw := range o.Jobs {
		if isNull(raw) {
			delete(c.jobs, name)
			continue
		}
		j := &Job{}
		if err := recordjson.Unmarshal(raw, j); err != nil {
			return fmt.Errorf("job %s: %w", name, err)
		}
		c.putJob(j)
	}
	touched := map[string]bool{}
	keys := make([]string, 0, len(o.Tasks))
	for k := range o.Tasks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		i := strings.LastIndexByte(k, '/')
		if i < 0 {
			continue
		}
		job := k[:i]
		idx, err := strconv.Atoi(k[i+1:])
		js := c.jobs[job]
		if err != nil || js == nil {
			continue
		}
		touched[job] = true
		raw := o.Tasks[k]
		if isNull(raw) {
			if idx < len(js.tasks) {
				js.tasks = js.tasks[:idx]
			}
			continue
		}
		t, err := decodeTask(raw, js.Name)
		if err != nil {
			return fmt.Errorf("task %s: %w", k, err)
		}
		switch {
		case idx < len(js.tasks):
			js.tasks[idx] = t
		case idx == len(js.tasks):
			js.tasks = append(js.tasks, t)
		}
	}
	for job := range touched {
		js := c.jobs[job]
		delete(c.pending, job)
		for _, t := range js.tasks {
			if t.State == TaskPending {
				c.pending[job] = true
				break
			}
		}
	}
	spec := cellSpec(c)
	for id, raw := range o.Allocs {
		if old := c.allocs[id]; old != nil {
			c.forgetAlloc(old)
			if n := c.byID[old.NodeID]; n != nil {
				n.allocIndex = max(n.allocIndex, o.Index)
			}
		}
		if isNull(raw) {
			continue
		}
		a, err := decodeAlloc(raw, spec)
		if err != nil {
			return fmt.Errorf("allocation %s: %w", id, err)
		}
		if n := c.byID[a.NodeID]; n != nil {
			a.NodeID = n.ID // one copy of the ID
		}
		c.putAlloc(a)
		if n := c.byID[a.NodeID]; n != nil {
			n.allocIndex = max(n.allocIndex, o.Index)
		}
	}
	for job, raw := range o.Evals {
		ev := &Evaluation{}
		if err := recordjson.Unmarshal(raw, ev); err != nil {
			return fmt.Errorf("evaluation of %s: %w", job, err)
		}
		if js := c.jobs[job]; js != nil {
			js.lastEval = ev
		}
	}
	c.index = max(c.index, o.Index)
	return nil
}

// forgetAlloc removes an allocation from memory without recording a change.
func (c *Cell) forgetAlloc(a *Alloc) {
	if a.live() {
		c.account(a, -1)
	}
	delete(c.allocs, a.ID)
	if js := c.jobs[a.Job]; js != nil {
		delete(js.allocs, a.ID)
	}
	if n := c.byID[a.NodeID]; n != nil {
		delete(n.assigned, a.ID)
	}
}

// Snapshots: a header line (JSON) and then every badger key and value, each
// length-prefixed.

type snapshotHeader struct {
	RaftIndex uint64 `json:"raft_index"`
	OpIndex   uint64 `json:"op_index"`
}

type fsmSnapshot struct {
	txn *badger.Txn
}

func (f *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	defer f.txn.Discard()
	err := writeSnapshot(f.txn, sink)
	if err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (f *fsmSnapshot) Release() {}

func writeSnapshot(txn *badger.Txn, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var h snapshotHeader
	var err error
	if h.RaftIndex, err = readU64(txn, keyRaftIndex); err != nil {
		return err
	}
	if h.OpIndex, err = readU64(txn, keyIndex); err != nil {
		return err
	}
	hb, _ := json.Marshal(h)
	bw.Write(append(hb, '\n'))
	it := txn.NewIterator(badger.DefaultIteratorOptions)
	defer it.Close()
	var lb [binary.MaxVarintLen64]byte
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		v, err := item.ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", k, err)
		}
		bw.Write(lb[:binary.PutUvarint(lb[:], uint64(len(k)))])
		bw.Write(k)
		bw.Write(lb[:binary.PutUvarint(lb[:], uint64(len(v)))])
		if _, err := bw.Write(v); err != nil {
			return fmt.Errorf("write snapshot: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// restoreSnapshot replaces badger's content with a snapshot's, unless badger is
// already at or past it (a restart: raft restores its last snapshot, but the
// state on disk is newer). It reports whether it replaced anything.
func restoreSnapshot(db *badger.DB, r io.Reader) (bool, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return false, fmt.Errorf("read snapshot header: %w", err)
	}
	var h snapshotHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return false, fmt.Errorf("read snapshot header: %w", err)
	}
	var have uint64
	if err := db.View(func(txn *badger.Txn) error {
		var err error
		have, err = readU64(txn, keyRaftIndex)
		return err
	}); err != nil {
		return false, err
	}
	if have >= h.RaftIndex && have > 0 {
		_, err := io.Copy(io.Discard, br)
		return false, err
	}
	if err := db.DropAll(); err != nil {
		return false, fmt.Errorf("restore snapshot: %w", err)
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	for {
		kl, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false, fmt.Errorf("read snapshot: %w", err)
		}
		k := make([]byte, kl)
		if _, err := io.ReadFull(br, k); err != nil {
			return false, fmt.Errorf("read snapshot: %w", err)
		}
		vl, err := binary.ReadUvarint(br)
		if err != nil {
			return false, fmt.Errorf("read snapshot: %w", err)
		}
		v := make([]byte, vl)
		if _, err := io.ReadFull(br, v); err != nil {
			return false, fmt.Errorf("read snapshot: %w", err)
		}
		if err := wb.Set(k, v); err != nil {
			return false, fmt.Errorf("restore snapshot: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return false, fmt.Errorf("restore snapshot: %w", err)
	}
	if err := migrateTaskRecords(db); err != nil {
		return false, fmt.Errorf("restore snapshot: %w", err)
	}
	return true, nil
}
