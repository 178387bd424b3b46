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
	index := s.Index()
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.cell
	_, leader := s.raft.LeaderWithID()
	writeJSON(w, http.StatusOK, map[string]any{
		"server": s.self.Name, "leader": string(leader), "raft_state": s.raft.State().String(),
		"index": index, "nodes": len(c.nodes), "jobs": len(c.jobs), "allocations": len(c.allocs),
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
	s.respondUpdate(w, r, func(c *Cell) (*Job, error) {
		_, err := c.submitJob(&j, expect)
		if err != nil && !errors.Is(err, ErrConflict) {
			err = badRequest{err}
		}
		return &j, err
	})
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.respondUpdate(w, r, func(c *Cell) (*Job, error) {
		if _, err := c.stopJob(name); err != nil {
			return nil, err
		}
		return c.jobs[name].Job, nil
	})
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	var out []VersionInfo
	var err error
	if rerr := s.readCommitted(r.Context(), func(c *Cell) {
		out, err = c.history(r.PathValue("name"))
	}); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handlePromote(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.respondUpdate(w, r, func(c *Cell) (*Job, error) {
		if _, err := c.promote(name); err != nil {
			return nil, asBadRequest(err)
		}
		return c.jobs[name].Job, nil
	})
}

func (s *Server) handleRevert(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	var req RevertRequest
	if err := decode(body, &req); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	name := r.PathValue("name")
	s.respondUpdate(w, r, func(c *Cell) (*Job, error) {
		if _, err := c.revert(name, req.Version); err != nil {
			return nil, asBadRequest(err)
		}
		return c.jobs[name].Job, nil
	})
}

// asBadRequest marks an operation's refusal as the caller's mistake (400),
// unless it is a missing record (404).
func asBadRequest(err error) error {
	if errors.Is(err, ErrNotFound) {
		return err
	}
	return badRequest{err}
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
	s.respondUpdate(w, r, func(c *Cell) (*Job, error) {
		_, err := c.setDrain(id, req.Enable)
		return nil, err
	})
}

// respondUpdate commits fn's changes, waits for the evaluations they asked for,
// and answers with the job as fn left it and what the evaluations did.
func (s *Server) respondUpdate(w http.ResponseWriter, r *http.Request, fn func(c *Cell) (*Job, error)) {
	resp, err := s.submit(r.Context(), fn)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	out, err := json.MarshalIndent(resp, "", "  ")
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(out, '\n'))
}

// submit runs an operation, then waits for the evaluations it asked for.
func (s *Server) submit(ctx context.Context, fn func(c *Cell) (*Job, error)) (*SubmitResponse, error) {
	var job *Job
	tickets, err := s.updateEvals(ctx, func(c *Cell) error {
		j, err := fn(c)
		if j != nil {
			cp := *j // the state's record changes under later operations
			job = &cp
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	evs, err := s.waitEvals(ctx, tickets)
	if err != nil {
		return nil, err
	}
	if evs == nil {
		evs = []*Evaluation{}
	}
	return &SubmitResponse{Job: job, Evaluations: evs}, nil
}
