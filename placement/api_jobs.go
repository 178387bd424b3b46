package placement

import (
	"context"
	"maps"
	"slices"

	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Job endpoints: status, list, submit, stop, and node drain.

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cell
	_, leader := s.raft.LeaderWithID()
	writeJSON(w, http.StatusOK, map[string]any{
		"server": s.self.Name, "leader": string(leader), "raft_state": s.raft.State().String(),
		"index": s.index, "nodes": len(c.nodes), "jobs": len(c.jobs), "allocations": len(c.allocs),
		"capacity": c.capacity, "allocated": c.used, "batch_allocated": c.batchUsed, "batch_share": c.BatchShare,
	})
}

// readCommitted runs fn on the state under the lock, then waits until what it
// saw is committed: the leader's working state may hold operations still on
// their way through Raft, and an answer must not show what could yet be lost.
func (s *Server) readCommitted(ctx context.Context, fn func(c *Cell)) error {
	s.mu.Lock()
	fn(s.cell)
	need, leading := s.planned, s.leader
	s.mu.Unlock()
	if !leading {
		return nil // a follower's state holds committed entries only
	}
	return s.waitCommitted(ctx, need)
}

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request) {
	var jobs []*Job
	err := s.readCommitted(r.Context(), func(c *Cell) {
		jobs = make([]*Job, 0, len(c.jobs))
		for _, name := range slices.Sorted(maps.Keys(c.jobs)) {
			j := *c.jobs[name].Job
			jobs = append(jobs, &j)
		}
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, jobs)
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	var out []byte
	var err error
	if rerr := s.readCommitted(r.Context(), func(c *Cell) {
		var st *JobStatus
		st, err = c.jobStatus(r.PathValue("name"))
		if err == nil {
			out, err = json.MarshalIndent(st, "", "  ") // under the lock: st shares the cell's records
		}
	}); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(out, '\n'))
}

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
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
	s.respondUpdate(w, r, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.submitJob(&j, expect)
		if err != nil && !errors.Is(err, ErrConflict) {
			err = badRequest{err}
		}
		return &j, evs, err
	})
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.respondUpdate(w, r, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.stopJob(name)
		if err != nil {
			return nil, nil, err
		}
		return c.jobs[name].Job, evs, nil
	})
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
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
	s.respondUpdate(w, r, func(c *Cell) (*Job, []*Evaluation, error) {
		evs, err := c.setDrain(id, req.Enable)
		return nil, evs, err
	})
}

// respondUpdate commits fn's changes and answers with a snapshot of the result,
// serialized under the lock.
func (s *Server) respondUpdate(w http.ResponseWriter, r *http.Request, fn func(c *Cell) (*Job, []*Evaluation, error)) {
	var out []byte
	err := s.updateCtx(r.Context(), func(c *Cell) error {
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
