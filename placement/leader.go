package placement

import (
	"context"
	"maps"
	"slices"

	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Leadership: what a server does when it becomes leader or steps down, and
// the heartbeat TTLs that live only in the leader's memory.

// leaderLoop follows Raft's leadership changes.
func (s *Server) leaderLoop(ctx context.Context) {
	ch := s.raft.LeaderCh()
	lost := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-ch:
			if isLeader {
				s.log.Info("elected leader of the cell", "server", s.self.Name, "since_last_leader", time.Since(lost).Round(time.Millisecond))
				s.becomeLeader()
			} else {
				lost = time.Now()
				s.stepDown()
			}
		}
	}
}

// becomeLeader readies the working state for writes once every earlier entry is
// applied (rebuilt from disk if it holds operations that did not commit), gives
// every machine a fresh TTL (a grace period, so that a failover marks nobody
// down).
//
// The working state's origin changes only when it is rebuilt: every entry of
// the current origin is one the working state already reflects.
func (s *Server) becomeLeader() {
	s.transMu.Lock()
	defer s.transMu.Unlock()
	if err := s.raft.Barrier(commitTimeout).Error(); err != nil {
		s.log.Warn("leader barrier", "err", err)
		s.stepDownLocked()
		return
	}
	s.fsmMu.Lock()
	s.mu.Lock()
	if s.raft.State() != raft.Leader {
		s.mu.Unlock()
		s.fsmMu.Unlock()
		s.stepDownLocked()
		return
	}
	if s.planned > s.Index() {
		if err := s.reloadLocked(); err != nil {
			s.log.Error("rebuild the working state", "err", err)
			s.mu.Unlock()
			s.fsmMu.Unlock()
			return
		}
	}
	now := s.opts.Now()
	c := s.cell
	for _, n := range c.nodes {
		n.LastSeen = now
		c.grown[n] = true // waiting jobs get a try at the next change
	}
	// The broker lived in the old leader's memory; the requests it held are
	// recorded as pending evaluations, committed with the operations that asked
	// for them. Run them again.
	clear(c.dirty)
	c.refreshMinRequest() // a follower's state was built without planning
	s.setLeader(true)
	s.broker.setEnabled(true, nil)
	pending := 0
	for _, name := range slices.Sorted(maps.Keys(c.jobs)) {
		js := c.jobs[name]
		if ev := js.lastEval; ev != nil && ev.Status == EvalPending {
			s.broker.enqueue(evalRequest{job: name, trigger: ev.Trigger, prod: js.Priority == BandProd, id: ev.ID})
			pending++
		}
	}
	s.cmu.Lock()
	s.wake()
	s.cmu.Unlock()
	s.mu.Unlock()
	s.fsmMu.Unlock()
	s.log.Info("leader ready for writes", "server", s.self.Name, "index", s.Index(), "pending_evaluations", pending)
	if s.opts.Cell != nil {
		if err := s.recordServer(s.self); err != nil {
			s.log.Warn("record this server", "err", err)
		}
	}
}

// stepDown throws away what the working state holds beyond the log.
func (s *Server) stepDown() {
	s.transMu.Lock()
	defer s.transMu.Unlock()
	s.stepDownLocked()
}

// stepDownLocked is stepDown with transMu held.
func (s *Server) stepDownLocked() {
	s.fsmMu.Lock()
	defer s.fsmMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLeader(false)
	s.broker.setEnabled(false, ErrNoLeader)
	s.cmu.Lock()
	for _, p := range s.queue {
		p.done <- ErrNoQuorum
	}
	s.queue = nil
	s.cmu.Unlock()
	if s.planned > s.Index() {
		if err := s.reloadLocked(); err != nil {
			s.log.Error("rebuild the state after losing leadership", "err", err)
		}
	}
	s.log.Info("no longer the leader", "server", s.self.Name)
}

// Sweep marks machines that missed heartbeats for the TTL as down and moves their
// tasks. Only the leader sweeps: heartbeat deadlines live in its memory. Run calls
// it periodically; tests call it after moving their clock.
func (s *Server) Sweep() error {
	s.mu.Lock()
	if !s.leader {
		s.mu.Unlock()
		return nil
	}
	ids := s.cell.expired(s.opts.NodeTTL)
	s.mu.Unlock()
	for _, id := range ids {
		if err := s.update(func(c *Cell) error {
			c.markDown(id, s.opts.NodeTTL)
			return nil
		}); err != nil {
			return fmt.Errorf("mark %s down: %w", id, err)
		}
		s.log.Warn("machine missed its heartbeats: down, tasks moved", "node", id, "ttl", s.opts.NodeTTL)
	}
	s.mu.RLock()
	late := s.cell.lateRollouts()
	s.mu.RUnlock()
	if len(late) == 0 {
		return nil
	}
	var failed []string
	if err := s.update(func(c *Cell) error {
		failed = c.failLate()
		return nil
	}); err != nil {
		return fmt.Errorf("fail tasks past their healthy deadline: %w", err)
	}
	for _, a := range failed {
		s.log.Warn("task not healthy by its deadline: its rollout fails", "task", a)
	}
	return nil
}

// Run sweeps for silent machines, and reclaims badger's value log now and then,
// until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(max(s.opts.NodeTTL/4, 100*time.Millisecond))
	defer t.Stop()
	gc := time.NewTicker(10 * time.Minute)
	defer gc.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.Sweep(); err != nil {
				s.log.Error("sweep for silent machines", "err", err)
			}
		case <-gc.C:
			for s.db.RunValueLogGC(0.5) == nil && ctx.Err() == nil {
			}
		}
	}
}
