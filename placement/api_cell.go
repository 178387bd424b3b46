package placement

import (
	"context"
	"strings"

	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/dgraph-io/badger/v4"
)

// Cell endpoints: this server's identity, members, backup and restore, remove.

// SelfInfo is what a server says about itself (GET /v1/cell/self).
type SelfInfo struct {
	ServerInfo
	State     string `json:"state"`
	Leader    string `json:"leader"`
	LastIndex uint64 `json:"last_index"`
}

func (s *Server) selfInfo() SelfInfo {
	_, leader := s.raft.LeaderWithID()
	s.cmu.Lock()
	applied := s.appliedRaft
	s.cmu.Unlock()
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
	if hasRaftLog(dir) {
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
