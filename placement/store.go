package placement

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	recordjson "github.com/segmentio/encoding/json"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Badger layout. Every server writes the records the Raft entries carry (see
// replicate.go); an acknowledged change is in a majority's synced Raft logs.
const (
	keyIndex    = "meta/index"
	prefixNode  = "node/"
	prefixJob   = "job/"
	prefixTask  = "task/" // before task chunks (taskchunks.go); folded into them on open
	prefixAlloc = "alloc/"
	prefixEval  = "eval/" // the last evaluation of each job
)

func openDB(dir string) (*badger.DB, error) {
	// Not synced: the Raft log (synced) is the durable record; badger is what it
	// built, and a crash only replays entries into it.
	// Records are small JSON and written once per change on every server:
	// compressing them and tracking transaction conflicts (only write batches
	// write here) cost CPU for nothing.
	opts := badger.DefaultOptions(dir).WithSyncWrites(false).WithLogger(nil).
		WithNumVersionsToKeep(1).WithCompactL0OnClose(true).
		WithCompression(options.None).WithDetectConflicts(false)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open placement state %s: %w", dir, err)
	}
	if err := migrateTaskRecords(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open placement state %s: %w", dir, err)
	}
	return db, nil
}

// loadCell rebuilds the in-memory state from badger. Machines keep their status
// but get a fresh heartbeat deadline from now.
func loadCell(db *badger.DB, c *Cell) (uint64, error) {
	var index uint64
	var nodes []*Node
	var jobs []*Job
	var tasks []*Task
	var rawAllocs [][]byte
	var evals []*Evaluation
	err := db.View(func(txn *badger.Txn) error {
		if item, err := txn.Get([]byte(keyIndex)); err == nil {
			if err := item.Value(func(v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("%s: bad length %d", keyIndex, len(v))
				}
				index = binary.BigEndian.Uint64(v)
				return nil
			}); err != nil {
				return err
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			key := string(item.Key())
			var dst any
			switch {
			case strings.HasPrefix(key, prefixNode):
				n := &Node{}
				nodes, dst = append(nodes, n), n
			case strings.HasPrefix(key, prefixJob):
				j := &Job{}
				jobs, dst = append(jobs, j), j
			case strings.HasPrefix(key, prefixTaskChunk):
				if err := item.Value(func(v []byte) error {
					var ch taskChunk
					if err := decodeTaskChunk(v, &ch); err != nil {
						return err
					}
					for _, rec := range ch {
						if rec == nil {
							continue
						}
						t, err := decodeTask(rec, "")
						if err != nil {
							return err
						}
						tasks = append(tasks, t)
					}
					return nil
				}); err != nil {
					return fmt.Errorf("read %s: %w", key, err)
				}
				continue
			case strings.HasPrefix(key, prefixTask):
				if err := item.Value(func(v []byte) error {
					t, err := decodeTask(v, "")
					tasks = append(tasks, t)
					return err
				}); err != nil {
					return fmt.Errorf("read %s: %w", key, err)
				}
				continue
			case strings.HasPrefix(key, prefixAlloc):
				// Normalized allocations are filled in from their jobs, which
				// come later in key order.
				v, err := item.ValueCopy(nil)
				if err != nil {
					return fmt.Errorf("read %s: %w", key, err)
				}
				rawAllocs = append(rawAllocs, v)
				continue
			case strings.HasPrefix(key, prefixEval):
				e := &Evaluation{}
				evals, dst = append(evals, e), e
			default:
				continue
			}
			if err := item.Value(func(v []byte) error { return recordjson.Unmarshal(v, dst) }); err != nil {
				return fmt.Errorf("read %s: %w", key, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("load placement state: %w", err)
	}
	now := c.now()
	for _, n := range nodes {
		n.LastSeen = now
		c.putNode(n)
	}
	for _, j := range jobs {
		c.putJob(j)
	}
	sort.Slice(tasks, func(i, k int) bool {
		if tasks[i].Job != tasks[k].Job {
			return tasks[i].Job < tasks[k].Job
		}
		return tasks[i].Index < tasks[k].Index
	})
	for _, t := range tasks {
		js := c.jobs[t.Job]
		if js == nil || t.Index != len(js.tasks) {
			return 0, fmt.Errorf("load placement state: task %s[%d] out of order", t.Job, t.Index)
		}
		js.tasks = append(js.tasks, t)
		if t.State == TaskPending {
			c.pending[t.Job] = true
		}
	}
	spec := cellSpec(c)
	for _, raw := range rawAllocs {
		a, err := decodeAlloc(raw, spec)
		if err != nil {
			return 0, fmt.Errorf("load placement state: %w", err)
		}
		if n := c.byID[a.NodeID]; n != nil {
			a.NodeID = n.ID
		}
		c.putAlloc(a)
	}
	// Deleted allocations leave no trace of their index: after a restart every
	// watcher gets one fresh list rather than risk missing a change.
	for _, n := range c.nodes {
		n.allocIndex = index
	}
	for _, e := range evals {
		if js := c.jobs[e.Job]; js != nil {
			js.lastEval = e
		}
	}
	for _, n := range c.nodes {
		c.grown[n] = true // waiting jobs get a try after a restart
	}
	c.refreshMinRequest()
	return index, nil
}
