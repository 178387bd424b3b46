package placement

import (
	"crypto/ed25519"

	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Node endpoints: register, heartbeat, task state, allocations, list, revoke.

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
	s.fleet.record(r.PathValue("id"), hb.Releases, s.opts.Now()) // for the UI (fleet.go)
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
		s.cmu.Lock()
		ch := s.notify // before looking, so that no change is missed
		s.cmu.Unlock()
		s.mu.RLock()
		n := s.cell.byID[id]
		moved := n != nil && (index == 0 || n.allocIndex > index)
		s.mu.RUnlock()
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
	s.respondUpdate(w, r, func(c *Cell) (*Job, error) {
		_, err := c.revokeNode(id)
		return nil, err
	})
	s.log.Warn("node credentials revoked", "node", id)
}
