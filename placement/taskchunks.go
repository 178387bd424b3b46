package placement

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// Task records live in badger by chunks: one key holds the records of up to
// taskChunkSize consecutive tasks of a job. Badger's cost is per key (a
// memtable skiplist insert and an entry in the memtable's log), and with a key
// per task every placement wrote two keys, its allocation's and its task's;
// a job's placements now share their tasks' keys. A change to one task
// rewrites its chunk, a few KiB at most.
//
// Task keys in the Raft entries are unchanged (taskKey); only the disk writer
// folds them into chunks. Per-task keys (prefixTask, the format before this
// one) are folded into chunks when a data dir or a snapshot holding them is
// opened (migrateTaskRecords).
const (
	prefixTaskChunk = "tasks/"
	taskChunkSize   = 64
	recTaskChunk    = 0xB2
)

// taskChunkKey is the badger key of the chunk holding task idx of job.
func taskChunkKey(job string, idx int) string {
	return prefixTaskChunk + taskKey(job, idx/taskChunkSize)
}

// splitTaskKey reads a taskKey back into its job and index.
func splitTaskKey(k string) (string, int, error) {
	i := strings.LastIndexByte(k, '/')
	if i < 0 {
		return "", 0, fmt.Errorf("task key %q: no index", k)
	}
	idx, err := strconv.Atoi(k[i+1:])
	if err != nil || idx < 0 {
		return "", 0, fmt.Errorf("task key %q: bad index", k)
	}
	return k[:i], idx, nil
}

// taskChunk is one chunk's records, by task index within the chunk; nil: no
// such task.
type taskChunk [taskChunkSize][]byte

// decodeTaskChunk reads a chunk into ch; the records alias v.
func decodeTaskChunk(v []byte, ch *taskChunk) error {
	if len(v) == 0 || v[0] != recTaskChunk {
		return errors.New("not a task chunk")
	}
	r := &reader{b: v[1:]}
	for len(r.b) > 0 && r.err == nil {
		i := r.uvarint()
		rec := r.bytes()
		if r.err == nil && (i >= taskChunkSize || len(rec) == 0) {
			r.err = fmt.Errorf("task %d of %d, %d bytes", i, taskChunkSize, len(rec))
		}
		if r.err == nil {
			ch[i] = rec
		}
	}
	if r.err != nil {
		return fmt.Errorf("task chunk: %w", r.err)
	}
	return nil
}

// encode returns the chunk's value, or nil if it holds no task.
func (ch *taskChunk) encode() []byte {
	n := 1
	for _, rec := range ch {
		if rec != nil {
			n += 2*binary.MaxVarintLen16 + len(rec)
		}
	}
	if n == 1 {
		return nil
	}
	b := make([]byte, 1, n)
	b[0] = recTaskChunk
	for i, rec := range ch {
		if rec != nil {
			b = binary.AppendUvarint(b, uint64(i))
			b = append(binary.AppendUvarint(b, uint64(len(rec))), rec...)
		}
	}
	return b
}

// taskUpdate is one task record's change: rec nil deletes it.
type taskUpdate struct {
	i   int // index within the chunk
	rec []byte
}

// writeTaskChunks adds to wb the chunks that changes (taskKey -> record, nil
// for a deleted task) touch, each rewritten once. A chunk's value is taken
// from cache (chunk key -> value, nil if none: the caller's memory of what it
// wrote last), else read from db; cache is updated with what wb writes.
func writeTaskChunks(db *badger.DB, wb *badger.WriteBatch, changes map[string][]byte, cache map[string][]byte) error {
	if len(changes) == 0 {
		return nil
	}
	byChunk := map[string][]taskUpdate{}
	for k, rec := range changes {
		job, idx, err := splitTaskKey(k)
		if err != nil {
			return err
		}
		ck := taskChunkKey(job, idx)
		byChunk[ck] = append(byChunk[ck], taskUpdate{idx % taskChunkSize, rec})
	}
	return db.View(func(txn *badger.Txn) error {
		var ch taskChunk
		for ck, updates := range byChunk {
			clear(ch[:])
			old, known := cache[ck]
			if !known {
				item, err := txn.Get([]byte(ck))
				switch {
				case err == nil:
					// A copy: the records stay in the write batch and the cache.
					if old, err = item.ValueCopy(nil); err != nil {
						return fmt.Errorf("read %s: %w", ck, err)
					}
				case !errors.Is(err, badger.ErrKeyNotFound):
					return fmt.Errorf("read %s: %w", ck, err)
				}
			}
			if old != nil {
				if err := decodeTaskChunk(old, &ch); err != nil {
					return fmt.Errorf("read %s: %w", ck, err)
				}
			}
			for _, u := range updates {
				ch[u.i] = u.rec
			}
			v := ch.encode()
			var err error
			if v == nil {
				err = wb.Delete([]byte(ck))
				delete(cache, ck)
			} else {
				err = wb.Set([]byte(ck), v)
				cache[ck] = v
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", ck, err)
			}
		}
		return nil
	})
}

// migrateTaskRecords folds per-task keys, as servers before task chunks wrote
// them, into chunks; where both hold a task, the per-task key is the later
// write. It runs before the state is read, so the disk writer never sees both.
func migrateTaskRecords(db *badger.DB) error {
	legacy := map[string][]byte{}
	err := db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(prefixTask)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			legacy[strings.TrimPrefix(string(it.Item().Key()), prefixTask)] = v
		}
		return nil
	})
	if err != nil || len(legacy) == 0 {
		return err
	}
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	if err := writeTaskChunks(db, wb, legacy, map[string][]byte{}); err != nil {
		return fmt.Errorf("fold task records into chunks: %w", err)
	}
	for k := range legacy {
		if err := wb.Delete([]byte(prefixTask + k)); err != nil {
			return fmt.Errorf("fold task records into chunks: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("fold task records into chunks: %w", err)
	}
	return nil
}
