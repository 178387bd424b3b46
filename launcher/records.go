package launcher

import (
	"encoding/json"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// keyPrefix is the launcher's part of the node's shared badger.
const keyPrefix = "launcher/task/"

func (l *Launcher) snapshot(e *entry) Task {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := e.t
	if t.Exit != nil {
		x := *t.Exit
		t.Exit = &x
	}
	return t
}

func (l *Launcher) emit(e *entry) {
	if l.cfg.OnEvent != nil {
		l.cfg.OnEvent(l.snapshot(e))
	}
}

// save writes the task's record; l.mu must be held.
func (l *Launcher) save(e *entry) error {
	b, err := json.Marshal(e.t)
	if err != nil {
		return err
	}
	return l.cfg.DB.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keyPrefix+e.t.ID), b)
	})
}

func (l *Launcher) deleteRecord(id string) error {
	return l.cfg.DB.Update(func(txn *badger.Txn) error {
		return txn.Delete([]byte(keyPrefix + id))
	})
}

func (l *Launcher) loadRecords() ([]Task, error) {
	var ts []Task
	err := l.cfg.DB.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyPrefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			err := it.Item().Value(func(v []byte) error {
				var t Task
				if err := json.Unmarshal(v, &t); err != nil {
					return fmt.Errorf("task record %s: %w", it.Item().Key(), err)
				}
				ts = append(ts, t)
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("launcher: load records: %w", err)
	}
	return ts, nil
}
