package placement

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"ballena.dev/internal/poll"
	"github.com/dgraph-io/badger/v4"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

func TestAllocRecordRoundTrip(t *testing.T) {
	j := &Job{Name: "api", Version: 3, Artifact: "api@1.2.0", Digest: "sha256:ab", Resources: Resources{CPU: 500, Memory: 1 << 30, PIDs: 64},
		Priority: BandBatch, Args: []string{"-v"}, Env: map[string]string{"A": "1"}, Restart: RestartOnFailure,
		Isolation: Isolation{Network: "none", NoFile: 1024}, Check: &Check{HTTP: "/health", Port: 8080, Interval: time.Second}}
	code, healthy := -9, false
	a := &Alloc{ID: "00000000000000aa", Job: "api", TaskIndex: 7, JobVersion: 3, NodeID: "node-1", MinHealthyTime: time.Second,
		HealthyDeadline: time.Minute, AllowRollback: true, DesiredStatus: DesiredStop, DesiredDescription: "replaced",
		ClientStatus: ClientFailed, ExitCode: &code, OOMKilled: true, Message: "killed", Restarts: 2, Health: HealthUnhealthy,
		Healthy: &healthy, Replaces: "00000000000000a9",
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)), CreateIndex: 10, ModifyIndex: 12}
	fillSpec(a, j)
	lookup := func(job string, v uint64) *Job {
		if job == j.Name && v == j.Version {
			return j
		}
		return nil
	}
	raw, err := appendAlloc(nil, a, j)
	if err != nil {
		t.Fatal(err)
	}
	if raw[0] != recAllocNormalized {
		t.Fatalf("an allocation of its job's spec is stored as %q", raw)
	}
	full, _ := json.Marshal(a)
	if len(raw) > len(full)/3 {
		t.Errorf("normalized record of %d bytes, the JSON one %d", len(raw), len(full))
	}
	got, err := decodeAlloc(raw, lookup)
	if err != nil {
		t.Fatal(err)
	}
	if back, _ := json.Marshal(got); string(back) != string(full) {
		t.Errorf("round trip:\n got %s\nwant %s", back, full)
	}
	if _, err := decodeAlloc(raw, func(string, uint64) *Job { return nil }); err == nil {
		t.Error("a normalized allocation decoded without its job version")
	}
	// A spec that is not the version's (or a version not held) goes whole.
	other := *a
	other.Args = []string{"-x"}
	raw, _ = appendAlloc(nil, &other, j)
	if got, err := decodeAlloc(raw, lookup); raw[0] != '{' || err != nil || !reflect.DeepEqual(got.Args, other.Args) {
		t.Errorf("allocation with its own spec: %q, %v", raw, err)
	}
	if raw, _ = appendAlloc(nil, a, nil); raw[0] != '{' {
		t.Errorf("allocation of a version not held: %q", raw)
	}

	task := &Task{Job: "api", Index: 7, State: TaskPending, AllocID: "aa", Reason: "waiting for room", Failures: 2}
	gotTask, err := decodeTask(appendTask(nil, task), "api")
	if err != nil || !reflect.DeepEqual(gotTask, task) {
		t.Errorf("task round trip: %+v, %v", gotTask, err)
	}
	tj, _ := json.Marshal(task)
	if gotTask, err := decodeTask(tj, ""); err != nil || !reflect.DeepEqual(gotTask, task) {
		t.Errorf("JSON task record: %+v, %v", gotTask, err)
	}
}

// TestOlderVersionAllocsAcrossTheCell: allocations of older job versions keep
// their own spec on every server, through replication, a snapshot installed on
// a server that was away, and restarts (loading badger), also once their
// version has left the job's history.
func TestOlderVersionAllocsAcrossTheCell(t *testing.T) {
	tc := startRaftCellWith(t, 3, func(cc *CellConfig) {
		cc.SnapshotThreshold, cc.SnapshotInterval = 32, 100*time.Millisecond
		cc.LogSegmentSize = 4 << 10 // small segments, so the small log is compacted
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lead := tc.leader()
	var away, other *cellMember
	for _, m := range tc.members {
		switch {
		case m == lead:
		case away == nil:
			away = m
		default:
			other = m
		}
	}
	update := func(fn func(c *Cell) error) {
		t.Helper()
		if err := lead.srv.update(fn); err != nil {
			t.Fatal(err)
		}
		if err := lead.srv.quiesce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	update(func(c *Cell) error {
		for i := range 3 {
			c.registerNode(fmt.Sprintf("node-%d", i), &NodeRegistration{Capacity: Resources{CPU: 8000, Memory: 16 << 30}})
		}
		return nil
	})
	submitVersion := func(v int) {
		t.Helper()
		j := job("api", 3, 500, 256, BandProd)
		j.Update = Update{MaxParallel: 1, Canary: 1}
		if v > 1 {
			j.Artifact = fmt.Sprintf("api@1.%d.0", v)
			j.Args = []string{fmt.Sprint("version-", v)}
			j.Env = map[string]string{"V": fmt.Sprint(v)}
			j.Resources.CPU += int64(v)
		}
		update(func(c *Cell) error { _, err := c.submitJob(j, nil); return err })
	}
	// v1's allocations: their spec, as the leader holds it.
	v1Allocs := func(s *Server) map[string]string {
		s.mu.RLock()
		defer s.mu.RUnlock()
		out := map[string]string{}
		for id, a := range s.cell.allocs {
			if a.Job == "api" && a.JobVersion == 1 {
				out[id] = fmt.Sprintf("%s %v %v %v", a.Artifact, a.Args, a.Env, a.Resources)
			}
		}
		return out
	}
	agree := func(m *cellMember, when string) {
		t.Helper()
		want := lead.srv.Index()
		poll.Until(t, 30*time.Second, m.name+" to apply everything", func() bool { return m.srv.Index() >= want })
		lead.srv.mu.RLock()
		a := snapshotCell(lead.srv.cell)
		lead.srv.mu.RUnlock()
		m.srv.mu.RLock()
		b := snapshotCell(m.srv.cell)
		m.srv.mu.RUnlock()
		for k := range a {
			if a[k] != b[k] {
				t.Errorf("%s: %s on %s differs:\nleader %s\n%-6s %s", when, k, m.name, a[k], m.name, b[k])
			}
		}
		for k := range b {
			if _, ok := a[k]; !ok {
				t.Errorf("%s: %s on %s only: %s", when, k, m.name, b[k])
			}
		}
	}

	submitVersion(1)
	submitVersion(2)
	old := v1Allocs(lead.srv)
	if len(old) < 2 {
		t.Fatalf("version 2 with a canary left %d allocations of version 1", len(old))
	}
	for _, spec := range old {
		if spec != fmt.Sprintf("api@1.0.0 [] map[] %v", Resources{CPU: 500, Memory: 256 << 20}) {
			t.Fatalf("an allocation of version 1 reads %s", spec)
		}
	}
	agree(away, "version 2")
	agree(other, "version 2")

	// The away server misses versions up to past the history's length, and
	// enough entries to need a snapshot.
	tc.stop(away)
	for v := 3; v <= MaxHistory+3; v++ {
		submitVersion(v)
	}
	lead.srv.mu.RLock()
	held := lead.srv.cell.jobs["api"].version(1) != nil
	lead.srv.mu.RUnlock()
	if held {
		t.Fatal("version 1 is still in the job's history")
	}
	if got := v1Allocs(lead.srv); !reflect.DeepEqual(got, old) {
		t.Fatalf("allocations of version 1 after it left the history: %v, want %v", got, old)
	}
	for i := range 40 {
		update(func(c *Cell) error {
			_, err := c.submitJob(job(fmt.Sprintf("filler-%02d", i), 1, 10, 1, BandBatch), nil)
			return err
		})
	}
	if err := lead.srv.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	agree(other, "replicated")

	tc.restart(away)
	agree(away, "snapshot installed")
	if away.srv.Stats().SnapshotsRestored == 0 {
		t.Error("the away server caught up without a snapshot")
	}
	if got := v1Allocs(away.srv); !reflect.DeepEqual(got, old) {
		t.Errorf("allocations of version 1 from the snapshot: %v, want %v", got, old)
	}

	for _, m := range []*cellMember{away, other} {
		tc.stop(m)
		tc.restart(m)
		if got := v1Allocs(m.srv); !reflect.DeepEqual(got, old) {
			t.Errorf("allocations of version 1 on %s loaded from disk: %v, want %v", m.name, got, old)
		}
		agree(m, "restarted")
	}
}

// TestRecordsOfTheOlderFormat: a state written before normalized allocations
// and binary tasks (JSON records) loads as it was, and the first changes on
// it, tasks deleted among them, survive a restart.
// cellOnDisk opens a single server on one data dir again and again, changes
// its state and compares what it holds across restarts.
type cellOnDisk struct {
	t   *testing.T
	dir string
	ctx context.Context
}

func newCellOnDisk(t *testing.T) *cellOnDisk {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &cellOnDisk{t: t, dir: t.TempDir(), ctx: ctx}
}

func (d *cellOnDisk) open() *Server { return openQuiet(d.t, d.dir) }

func (d *cellOnDisk) update(s *Server, fn func(c *Cell) error) {
	d.t.Helper()
	if err := s.update(fn); err != nil {
		d.t.Fatal(err)
	}
	if err := s.quiesce(d.ctx); err != nil {
		d.t.Fatal(err)
	}
}

func (d *cellOnDisk) state(s *Server) map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return snapshotCell(s.cell)
}

func (d *cellOnDisk) same(when string, got, want map[string]string) {
	d.t.Helper()
	for k := range want {
		if got[k] != want[k] {
			d.t.Errorf("%s: %s differs:\n got %s\nwant %s", when, k, got[k], want[k])
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			d.t.Errorf("%s: %s appeared: %s", when, k, got[k])
		}
	}
}

// machines registers n machines with room for hundreds of small tasks each.
func (d *cellOnDisk) machines(s *Server, n int) {
	d.update(s, func(c *Cell) error {
		for i := range n {
			c.registerNode(fmt.Sprintf("node-%d", i), &NodeRegistration{Capacity: Resources{CPU: 64000, Memory: 64 << 30}})
		}
		return nil
	})
}

// submit runs job api with count tasks.
func (d *cellOnDisk) submit(s *Server, count int) {
	j := job("api", count, 100, 64, BandProd)
	j.Args = []string{"-v"}
	d.update(s, func(c *Cell) error { _, err := c.submitJob(j, nil); return err })
}

func (d *cellOnDisk) tasks(s *Server, job string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.cell.jobs[job].tasks)
}

// taskKeys lists the badger keys holding task records, per task or by chunk.
func (d *cellOnDisk) taskKeys() []string {
	d.t.Helper()
	db, err := badger.Open(badger.DefaultOptions(d.dir).WithLogger(nil))
	if err != nil {
		d.t.Fatal(err)
	}
	defer db.Close()
	var keys []string
	if err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if k := string(it.Item().Key()); strings.HasPrefix(k, prefixTask) || strings.HasPrefix(k, prefixTaskChunk) {
				keys = append(keys, k)
			}
		}
		return nil
	}); err != nil {
		d.t.Fatal(err)
	}
	return keys
}

func TestRecordsOfTheOlderFormat(t *testing.T) {
	d := newCellOnDisk(t)
	s := d.open()
	d.machines(s, 2)
	d.submit(s, 40)
	want := d.state(s)
	s.Close()

	// Rewrite the state the way the format before this one stored it: JSON
	// records, a key per task.
	db, err := openDB(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCell(DefaultBatchShare, nil, 1)
	if _, err := loadCell(db, c); err != nil {
		t.Fatal(err)
	}
	if err := db.DropPrefix([]byte(prefixTaskChunk)); err != nil {
		t.Fatal(err)
	}
	wb := db.NewWriteBatch()
	for _, js := range c.jobs {
		for _, task := range js.tasks {
			v, _ := json.Marshal(task)
			wb.Set([]byte(prefixTask+taskKey(task.Job, task.Index)), v)
		}
	}
	for id, a := range c.allocs {
		v, _ := json.Marshal(a)
		wb.Set([]byte(prefixAlloc+id), v)
	}
	if err := wb.Flush(); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = d.open()
	d.same("loaded from the older format", d.state(s), want)
	// Fewer tasks: the deleted ones must not come back from their old keys.
	d.submit(s, 25)
	want = d.state(s)
	s.Close()
	if keys := d.taskKeys(); !slices.Equal(keys, []string{"tasks/api/000000"}) {
		t.Errorf("task keys after the older format was opened: %v, want its tasks folded into one chunk", keys)
	}
	s = d.open()
	defer s.Close()
	d.same("changed and restarted", d.state(s), want)
	if n := d.tasks(s, "api"); n != 25 {
		t.Errorf("%d tasks after a restart, want 25", n)
	}
}

// Task records are kept by chunks of 64 per key: a job's chunks follow its
// count up and down, and a restart reads back every task as it was.
func TestTaskChunks(t *testing.T) {
	d := newCellOnDisk(t)
	s := d.open()
	d.machines(s, 4)
	for _, step := range []struct {
		count int
		keys  []string
	}{
		{150, []string{"tasks/api/000000", "tasks/api/000001", "tasks/api/000002"}},
		{70, []string{"tasks/api/000000", "tasks/api/000001"}},
		{64, []string{"tasks/api/000000"}},
		{130, []string{"tasks/api/000000", "tasks/api/000001", "tasks/api/000002"}},
	} {
		d.submit(s, step.count)
		want := d.state(s)
		s.Close()
		if keys := d.taskKeys(); !slices.Equal(keys, step.keys) {
			t.Errorf("count %d: task keys %v, want %v", step.count, keys, step.keys)
		}
		s = d.open()
		d.same(fmt.Sprintf("count %d, restarted", step.count), d.state(s), want)
		if n := d.tasks(s, "api"); n != step.count {
			t.Errorf("count %d: %d tasks after a restart", step.count, n)
		}
	}
	s.Close()
}

func TestTaskChunkRecords(t *testing.T) {
	var ch taskChunk
	ch[0], ch[3], ch[taskChunkSize-1] = []byte("{}"), []byte{recTaskBinary, 1}, []byte{recTaskBinary, 2}
	var got taskChunk
	if err := decodeTaskChunk(ch.encode(), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ch) {
		t.Errorf("round trip: %q, want %q", got, ch)
	}
	if v := (&taskChunk{}).encode(); v != nil {
		t.Errorf("an empty chunk encodes as %q, want nothing (its key deleted)", v)
	}
	for _, bad := range [][]byte{nil, {recTaskBinary}, {recTaskChunk, 1, 5, 'x'}, {recTaskChunk, 64, 1, 'x'}, {recTaskChunk, 1, 0}} {
		if err := decodeTaskChunk(bad, &got); err == nil {
			t.Errorf("decodeTaskChunk(%q) accepted it", bad)
		}
	}
	for _, k := range []string{"api", "api/x", "a/b/-1"} {
		if _, _, err := splitTaskKey(k); err == nil {
			t.Errorf("splitTaskKey(%q) accepted it", k)
		}
	}
	if job, idx, err := splitTaskKey(taskKey("web/eu", 1234)); job != "web/eu" || idx != 1234 || err != nil {
		t.Errorf("splitTaskKey(taskKey(web/eu, 1234)) = %q, %d, %v", job, idx, err)
	}
}

func TestKeysAsFmtWroteThem(t *testing.T) {
	for _, idx := range []int{0, 7, 42, 999999, 1000000, 12345678} {
		if got, want := taskKey("api", idx), fmt.Sprintf("%s/%06d", "api", idx); got != want {
			t.Errorf("taskKey(api, %d) = %q, want %q", idx, got, want)
		}
	}
	c := NewCell(DefaultBatchShare, nil, 3)
	ref := NewCell(DefaultBatchShare, nil, 3)
	for range 100 {
		if got, want := c.newID(), fmt.Sprintf("%016x", ref.rng.Uint64()); got != want {
			t.Fatalf("newID %q, want %q", got, want)
		}
	}
}

// Allocation IDs made in one operation share their high half (the
// operation's index), so that they sort together; one an allocation of the
// cell already has is never made again.
func TestAllocIDs(t *testing.T) {
	c := NewCell(DefaultBatchShare, nil, 5)
	ref := NewCell(DefaultBatchShare, nil, 5)
	c.index, ref.index = 0x2a, 0x2a
	taken := ref.newAllocID()
	c.allocs[taken] = &Alloc{ID: taken}
	seen := map[string]bool{}
	for range 1000 {
		id := c.newAllocID()
		if id == taken || seen[id] {
			t.Fatalf("newAllocID made %s again", id)
		}
		if !strings.HasPrefix(id, "0000002a") || len(id) != 16 {
			t.Fatalf("allocation ID %s made at index 0x2a: want 16 hex digits starting 0000002a", id)
		}
		seen[id] = true
		c.allocs[id] = &Alloc{ID: id}
	}
}

// A data dir made before the write-ahead log keeps its bolt Raft log (entries,
// term, vote); a new one gets the write-ahead log; a backup restores into
// neither.
func TestRaftLogStores(t *testing.T) {
	open := func(dir string) *Server { return openQuiet(t, dir) }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	work := func(s *Server, count int) {
		t.Helper()
		if err := s.update(func(c *Cell) error {
			if len(c.nodes) == 0 {
				c.registerNode("node-0", &NodeRegistration{Capacity: Resources{CPU: 64000, Memory: 64 << 30}})
			}
			_, err := c.submitJob(job("api", count, 100, 64, BandProd), nil)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.quiesce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	state := func(s *Server) (map[string]string, uint64) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return snapshotCell(s.cell), s.raft.LastIndex()
	}
	exists := func(p string) bool {
		_, err := os.Stat(p)
		return err == nil
	}

	for _, older := range []bool{true, false} {
		dir := t.TempDir()
		if older {
			// An empty bolt log, as a server made it before its first entry.
			if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
				t.Fatal(err)
			}
			b, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft", raftBoltFile))
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
		}
		s := open(dir)
		work(s, 10)
		want, last := state(s)
		s.Close()
		s = open(dir)
		got, gotLast := state(s)
		if !s.raftHadState || gotLast < last {
			t.Errorf("older=%v: reopened with Raft state %v, last index %d, want true, >= %d", older, s.raftHadState, gotLast, last)
		}
		if !maps.Equal(got, want) {
			t.Errorf("older=%v: state differs after a restart", older)
		}
		work(s, 4)
		want, _ = state(s)
		s.Close()
		s = open(dir)
		got, _ = state(s)
		s.Close()
		if !maps.Equal(got, want) {
			t.Errorf("older=%v: state differs after a change and a restart", older)
		}
		if bolt, wal := exists(filepath.Join(dir, "raft", raftBoltFile)), exists(filepath.Join(dir, "raft", raftWALDir)); bolt != older || wal == older {
			t.Errorf("older=%v: bolt log %v, write-ahead log %v", older, bolt, wal)
		}
		if err := RestoreBackup(dir, strings.NewReader("")); err == nil || !strings.Contains(err.Error(), "holds Raft state") {
			t.Errorf("older=%v: restore into a used dir: %v", older, err)
		}
	}
}

// openQuiet opens a single server on dir with the test tokens and no logs.
func openQuiet(t testing.TB, dir string) *Server {
	t.Helper()
	s, err := Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A snapshot installed into a running server replaces badger's content under
// its disk writer, which must then forget the task chunks it remembers: a
// change after the install builds on the snapshot's chunk, not on the one the
// writer wrote before.
func TestTaskChunksAfterASnapshotInstall(t *testing.T) {
	donor := newCellOnDisk(t)
	sb := donor.open()
	donor.machines(sb, 2)
	donor.submit(sb, 2) // tasks api[0] and api[1]
	sb.fsmMu.Lock()
	if err := sb.flushDisk(); err != nil {
		t.Fatal(err)
	}
	txn := sb.db.NewTransaction(false)
	sb.fsmMu.Unlock()
	var snap bytes.Buffer
	err := writeSnapshot(txn, &snap)
	txn.Discard()
	sb.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Past anything the receiving server applied, so that it installs it.
	head, body, _ := bytes.Cut(snap.Bytes(), []byte("\n"))
	var h snapshotHeader
	if err := json.Unmarshal(head, &h); err != nil {
		t.Fatal(err)
	}
	h.RaftIndex += 1 << 20
	head, _ = json.Marshal(h)

	d := newCellOnDisk(t)
	s := d.open()
	defer s.Close()
	rec := func(idx int, alloc string) json.RawMessage {
		return appendTask(nil, &Task{Job: "api", Index: idx, State: TaskPlaced, AllocID: alloc})
	}
	write := func(tasks map[string]json.RawMessage) {
		t.Helper()
		if err := s.queueWrite(pendingWrite{ops: []*op{{Tasks: tasks}}}); err != nil {
			t.Fatal(err)
		}
		if err := s.flushDisk(); err != nil {
			t.Fatal(err)
		}
	}
	write(map[string]json.RawMessage{taskKey("api", 0): rec(0, "before-the-install")})
	if err := (*fsm)(s).Restore(io.NopCloser(bytes.NewReader(append(append(head, '\n'), body...)))); err != nil {
		t.Fatal(err)
	}
	write(map[string]json.RawMessage{taskKey("api", 2): rec(2, "after-the-install")})

	var ch taskChunk
	if err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(taskChunkKey("api", 0)))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return decodeTaskChunk(slices.Clone(v), &ch) })
	}); err != nil {
		t.Fatal(err)
	}
	alloc := func(i int) string {
		if ch[i] == nil {
			return "(no task)"
		}
		task, err := decodeTask(ch[i], "api")
		if err != nil {
			t.Fatal(err)
		}
		return task.AllocID
	}
	donor0, donor1 := alloc(0), alloc(1)
	if donor0 == "before-the-install" || donor0 == "(no task)" || donor1 == "(no task)" {
		t.Errorf("tasks api[0] and api[1] have allocations %q and %q, want the snapshot's", donor0, donor1)
	}
	if got := alloc(2); got != "after-the-install" {
		t.Errorf("task api[2] has allocation %q, want after-the-install", got)
	}
}
