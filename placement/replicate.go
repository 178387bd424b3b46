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

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// Replication. The leader computes each operation on its in-memory Cell, and the
// records the operation touched (nodes, jobs, tasks, allocations, evaluations,
// servers) travel in a Raft entry; many operations are group-committed in one
// entry. Every server's state machine (fsm) writes the records to its badger and
// applies them to its own Cell, except the leader, whose Cell already holds them.

// op is one operation's records, each already encoded (JSON; "null" is a
// deletion), so that the leader encodes a record once, under its lock, and every
// server writes those bytes to badger as they are.
type op struct {
	Index   uint64                     `json:"i"`
	Nodes   map[string]json.RawMessage `json:"n,omitempty"`
	Jobs    map[string]json.RawMessage `json:"j,omitempty"`
	Tasks   map[string]json.RawMessage `json:"t,omitempty"`
	Allocs  map[string]json.RawMessage `json:"a,omitempty"`
	Evals   map[string]json.RawMessage `json:"e,omitempty"` // by job: its last evaluation
	Servers map[string]json.RawMessage `json:"s,omitempty"`
}

// entry is what one Raft log entry carries. Origin names the leader's working
// state that computed the operations: its own fsm skips applying them again.
type entry struct {
	Origin string            `json:"o"`
	Ops    []json.RawMessage `json:"ops"`
}

func encodeRecords[V any](m map[string]*V) (map[string]json.RawMessage, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		if v == nil {
			out[k] = json.RawMessage("null")
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		out[k] = b
	}
	return out, nil
}

// encodeOp encodes an operation's changes; the caller holds the lock that guards
// the records.
func encodeOp(ch *changes, index uint64) ([]byte, error) {
	o := op{Index: index}
	var err error
	if o.Nodes, err = encodeRecords(ch.nodes); err != nil {
		return nil, err
	}
	if o.Jobs, err = encodeRecords(ch.jobs); err != nil {
		return nil, err
	}
	if o.Tasks, err = encodeRecords(ch.tasks); err != nil {
		return nil, err
	}
	if o.Allocs, err = encodeRecords(ch.allocs); err != nil {
		return nil, err
	}
	if o.Servers, err = encodeRecords(ch.servers); err != nil {
		return nil, err
	}
	if len(ch.evals) > 0 {
		evs := map[string]*Evaluation{}
		for _, ev := range ch.evals {
			evs[ev.Job] = ev
		}
		if o.Evals, err = encodeRecords(evs); err != nil {
			return nil, err
		}
	}
	return json.Marshal(&o)
}

func isNull(b json.RawMessage) bool { return len(b) == 0 || string(b) == "null" }

// Badger keys beside the records of store.go.
const (
	keyRaftIndex = "meta/raft"
	prefixServer = "server/"
)

// writeOps writes the records of ops to badger, then the op index and the Raft
// index. The batch is not one transaction: a crash in the middle leaves the old
// Raft index, and the entry is applied again (records are whole, so applying one
// twice is harmless).
func writeOps(db *badger.DB, ops []*op, raftIndex uint64) error {
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	var opIndex uint64
	for _, o := range ops {
		opIndex = max(opIndex, o.Index)
		for _, set := range []struct {
			prefix string
			m      map[string]json.RawMessage
		}{{prefixNode, o.Nodes}, {prefixJob, o.Jobs}, {prefixTask, o.Tasks}, {prefixAlloc, o.Allocs}, {prefixEval, o.Evals}, {prefixServer, o.Servers}} {
			for k, v := range set.m {
				var err error
				if isNull(v) {
					err = wb.Delete([]byte(set.prefix + k))
				} else {
					err = wb.Set([]byte(set.prefix+k), v)
				}
				if err != nil {
					return fmt.Errorf("write placement state at raft index %d: %w", raftIndex, err)
				}
			}
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("write placement state at raft index %d: %w", raftIndex, err)
	}
	err := db.Update(func(txn *badger.Txn) error {
		if opIndex > 0 {
			if err := txn.Set([]byte(keyIndex), u64(opIndex)); err != nil {
				return err
			}
		}
		return txn.Set([]byte(keyRaftIndex), u64(raftIndex))
	})
	if err != nil {
		return fmt.Errorf("write placement state at raft index %d: %w", raftIndex, err)
	}
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
		if err := json.Unmarshal(raw, n); err != nil {
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
		if err := json.Unmarshal(raw, j); err != nil {
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
		t := &Task{}
		if err := json.Unmarshal(raw, t); err != nil {
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
		a := &Alloc{}
		if err := json.Unmarshal(raw, a); err != nil {
			return fmt.Errorf("allocation %s: %w", id, err)
		}
		c.putAlloc(a)
		if n := c.byID[a.NodeID]; n != nil {
			n.allocIndex = max(n.allocIndex, o.Index)
		}
	}
	for job, raw := range o.Evals {
		ev := &Evaluation{}
		if err := json.Unmarshal(raw, ev); err != nil {
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
	return true, nil
}
