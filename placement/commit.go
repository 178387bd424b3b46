package placement

import (
	"context"

	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// The write path. Every operation is computed on the leader's latest state,
// including operations still being committed, and one commit loop group-commits
// many operations per Raft entry, keeping entries flowing without waiting for
// each; the ack loop answers each caller once its entry has committed.

type pendingOp struct {
	data   []byte
	index  uint64
	origin string
	done   chan error
}

type inflightBatch struct {
	f     raft.ApplyFuture
	ops   []*pendingOp
	start time.Time
}

// update runs fn on the leader's working state under the lock and waits until
// the records it changed are committed through Raft. Operations from concurrent
// requests are group-committed: many go in one Raft entry. The evaluations the
// operation asks for run after it, on the workers; update does not wait for them.
func (s *Server) update(fn func(c *Cell) error) error {
	return s.updateCtx(context.Background(), fn)
}

func (s *Server) updateCtx(ctx context.Context, fn func(c *Cell) error) error {
	_, err := s.updateEvals(ctx, fn)
	return err
}

// updateEvals is update that also returns the tickets of the evaluations the
// operation asked for, for callers that answer with their outcome.
func (s *Server) updateEvals(ctx context.Context, fn func(c *Cell) error) ([]*evalTicket, error) {
	s.mu.Lock()
	if !s.leader {
		s.mu.Unlock()
		return nil, ErrNoLeader
	}
	s.cell.index = s.planned + 1
	s.cell.ch = newChanges()
	err := fn(s.cell)
	tickets := s.enqueueEvals(s.cell.takeEvalRequests())
	ch := s.cell.ch
	s.cell.ch = nil
	p, qerr := s.queueOpLocked(ch)
	// Without changes, the answer may still rest on operations not yet committed.
	need := s.planned
	s.mu.Unlock()
	s.kickCommit()
	if qerr != nil {
		return tickets, qerr
	}
	var werr error
	if p == nil {
		werr = s.waitCommitted(ctx, need)
	} else {
		werr = s.waitOp(ctx, p)
	}
	if werr != nil {
		return tickets, werr
	}
	return tickets, err
}

// queueOpLocked encodes an operation's changes and queues them for the commit
// loop; nil when nothing changed. s.mu is held.
func (s *Server) queueOpLocked(ch *changes) (*pendingOp, error) {
	if ch.empty() {
		return nil, nil
	}
	data, err := encodeOp(ch, s.cell.index, cellSpec(s.cell))
	if err != nil {
		// Cannot happen with these types; the working state is ahead of the log now.
		s.setLeader(false)
		go s.becomeLeader()
		return nil, fmt.Errorf("encode changes: %w", err)
	}
	s.planned = s.cell.index
	p := &pendingOp{data: data, index: s.cell.index, origin: s.origin, done: make(chan error, 1)}
	s.cmu.Lock()
	s.queue = append(s.queue, p)
	s.cmu.Unlock()
	for _, ev := range ch.evals {
		if ev.Placed+ev.Stopped+ev.Preempted+len(ev.Pending) > 0 {
			s.log.Debug("evaluation", "job", ev.Job, "trigger", ev.Trigger, "placed", ev.Placed,
				"stopped", ev.Stopped, "preempted", ev.Preempted, "pending", len(ev.Pending))
		}
	}
	return p, nil
}

// kickCommit wakes the commit loop.
func (s *Server) kickCommit() {
	select {
	case s.queueCh <- struct{}{}:
	default:
	}
}

// waitOp waits until a queued operation is committed.
func (s *Server) waitOp(ctx context.Context, p *pendingOp) error {
	timer := time.NewTimer(commitTimeout)
	defer timer.Stop()
	select {
	case err := <-p.done:
		return err
	case <-timer.C:
		return fmt.Errorf("%w within %v (it may still commit)", ErrNoQuorum, commitTimeout)
	case <-ctx.Done():
		return fmt.Errorf("wait for the commit: %w", ctx.Err())
	}
}

// waitCommitted returns when the operation index idx is committed.
func (s *Server) waitCommitted(ctx context.Context, idx uint64) error {
	timer := time.NewTimer(commitTimeout)
	defer timer.Stop()
	for {
		s.cmu.Lock()
		done, ch := s.committed >= idx, s.notify
		s.cmu.Unlock()
		leading := s.leading.Load()
		if done {
			return nil
		}
		if !leading {
			return ErrNoQuorum
		}
		select {
		case <-ch:
		case <-timer.C:
			return ErrNoQuorum
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// maxEntryOps and maxEntryBytes bound one Raft entry.
const (
	maxEntryOps   = 4096
	maxEntryBytes = 4 << 20
)

// commitLoop takes the operations applied to the leader's working state (by
// writes and by the plan applier), in order, and appends them to the Raft log, many per
// entry, without waiting for one entry to commit before sending the next.
func (s *Server) commitLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.queueCh:
		}
		for {
			s.cmu.Lock()
			origin := s.qorigin
			var batch []*pendingOp
			size := 0
			n := 0
			for n < len(s.queue) && n < maxEntryOps && size < maxEntryBytes {
				size += len(s.queue[n].data)
				n++
			}
			batch = append(batch, s.queue[:n]...)
			s.queue = s.queue[n:]
			if len(s.queue) == 0 {
				s.queue = nil
			}
			s.cmu.Unlock()
			if len(batch) == 0 {
				break
			}
			var stale []*pendingOp
			var encoded [][]byte
			var ops []*pendingOp
			for _, p := range batch {
				if p.origin != origin {
					stale = append(stale, p) // computed on a working state since thrown away
					continue
				}
				encoded = append(encoded, p.data)
				ops = append(ops, p)
			}
			for _, p := range stale {
				p.done <- ErrNoQuorum
			}
			if len(ops) == 0 {
				continue
			}
			data := encodeEntry(origin, encoded)
			start := time.Now()
			f := s.raft.Apply(data, 0)
			s.cmu.Lock()
			s.stats.Entries++
			s.stats.Operations += uint64(len(ops))
			s.stats.Bytes += uint64(len(data))
			s.cmu.Unlock()
			select {
			case s.inflight <- inflightBatch{f: f, ops: ops, start: start}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// ackLoop answers the writers of each entry once Raft committed and applied it.
func (s *Server) ackLoop(ctx context.Context) {
	for {
		var b inflightBatch
		select {
		case <-ctx.Done():
			return
		case b = <-s.inflight:
		}
		// A future still queued inside Raft when it shuts down is never answered:
		// wait for it beside ctx.
		errc := make(chan error, 1)
		go func() { errc <- b.f.Error() }()
		var err error
		select {
		case err = <-errc:
		case <-ctx.Done():
			for _, p := range b.ops {
				p.done <- fmt.Errorf("%w (the server is shutting down)", ErrNoQuorum)
			}
			return
		}
		if err == nil {
			if rerr, ok := b.f.Response().(error); ok {
				err = rerr
			}
		}
		if err == nil {
			s.m.applyLatency.Observe(time.Since(b.start).Seconds())
		}
		if err != nil {
			s.log.Warn("raft entry not committed", "ops", len(b.ops), "err", err)
			err = fmt.Errorf("%w (%v)", ErrNoQuorum, err)
			s.mu.Lock()
			wasLeader := s.leader
			s.setLeader(false)
			s.mu.Unlock()
			if wasLeader {
				// The working state holds what did not commit: rebuild it from what
				// did, as leader again or as a follower.
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					if s.raft.State() == raft.Leader {
						s.becomeLeader()
					} else {
						s.stepDown()
					}
				}()
			}
		}
		for _, p := range b.ops {
			p.done <- err
		}
	}
}
