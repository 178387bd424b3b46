package placement

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// The leader's scheduler: workers take evaluations from the broker and plan them
// against the state under a read lock, many at once; the plan applier, alone,
// checks each plan against the latest state, applies what still fits, and
// commits a batch of plans as one operation (many per Raft entry, through the
// commit loop). What it refused goes back to the worker, which plans it again on
// the newer state.

// maxReplans bounds how often one evaluation is planned again after the applier
// refused part of it; what is still refused then waits like any task without
// room, and comes back when room appears.
const maxReplans = 4

// maxPlansPerOp bounds how many plans the applier applies as one operation.
const maxPlansPerOp = 256

type planSubmission struct {
	pl  *plan
	res chan planAnswer
}

// planAnswer comes back as soon as the plan is applied to the working state;
// committed then waits until the operation holding it is committed.
type planAnswer struct {
	planResult
	err       error
	committed func() error
}

// worker plans evaluations until ctx ends.
func (s *Server) worker(ctx context.Context, id int) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(id)))
	for {
		t, err := s.broker.dequeue(ctx)
		if err != nil {
			return
		}
		ev, waits, err := s.runEval(ctx, t, rng)
		if err != nil {
			s.broker.finish(t, ev, err)
			continue
		}
		// The worker goes on with the next evaluation while this one's plans
		// commit; the ticket (and the job's next evaluation) waits for them.
		go func() {
			for _, w := range waits {
				if err := w(); err != nil {
					s.broker.finish(t, ev, err)
					return
				}
			}
			if ev != nil {
				s.m.observe([]*Evaluation{ev}, t.enqueued)
			}
			s.broker.finish(t, ev, nil)
		}()
	}
}

// runEval plans one evaluation, has the applier commit it, and plans again what
// the applier refused. The evaluation it returns sums every round.
func (s *Server) runEval(ctx context.Context, t *evalTicket, rng *rand.Rand) (*Evaluation, []func() error, error) {
	var total *Evaluation
	var waits []func() error
	trigger, retry := t.trigger, t.retry
	for round := 0; ; round++ {
		s.mu.RLock()
		if !s.leader {
			s.mu.RUnlock()
			return total, nil, ErrNoLeader
		}
		pl := s.cell.planJob(t.job, trigger, retry, rng)
		pl.origin, pl.evalID, pl.final = s.origin, t.id, round+1 >= maxReplans
		s.mu.RUnlock()

		sub := &planSubmission{pl: pl, res: make(chan planAnswer, 1)}
		select {
		case s.plans <- sub:
		case <-ctx.Done():
			return total, nil, ctx.Err()
		}
		var ans planAnswer
		select {
		case ans = <-sub.res:
		case <-ctx.Done():
			return total, nil, ctx.Err()
		}
		if ans.err != nil {
			return total, nil, ans.err
		}
		waits = append(waits, ans.committed)
		if !ans.stale {
			total = sumEvaluations(total, ans.ev)
		}
		if !ans.stale && ans.refused == 0 {
			return total, waits, nil
		}
		s.cmu.Lock()
		s.stats.Replans++
		s.cmu.Unlock()
		if round+1 >= maxReplans {
			// Only a stale plan gets here (a final round's refusals wait as pending).
			return total, nil, fmt.Errorf("job %s changed under %d plans in a row: %w", t.job, round+1, ErrConflict)
		}
		// A stale plan is planned afresh as it was asked; so are refused
		// placements, under their own trigger. A retry stays a retry: many waiting
		// jobs are retried at once when room appears, and all but one may lose it.
		if !ans.stale {
			trigger = "plan-refused"
		}
	}
}

// sumEvaluations folds a re-plan's evaluation into the first one's counts.
func sumEvaluations(total, ev *Evaluation) *Evaluation {
	if total == nil {
		cp := *ev
		return &cp
	}
	total.Placed += ev.Placed
	total.Stopped += ev.Stopped
	total.Preempted += ev.Preempted
	total.Pending = ev.Pending // what still waits after the last round
	total.Notes = append(total.Notes, ev.Notes...)
	total.Index, total.Time = ev.Index, ev.Time
	return total
}

// planApplier applies plans in the order they arrive, many per operation,
// until ctx ends.
func (s *Server) planApplier(ctx context.Context) {
	for {
		var batch []*planSubmission
		select {
		case <-ctx.Done():
			return
		case sub := <-s.plans:
			batch = append(batch, sub)
		}
	more:
		for len(batch) < maxPlansPerOp {
			select {
			case sub := <-s.plans:
				batch = append(batch, sub)
			default:
				break more
			}
		}
		s.applyPlans(ctx, batch)
	}
}

// applyPlans applies a batch of plans to the working state as one operation
// and answers each once that operation committed. It does not wait for the
// commit itself: the next batch is checked against a state that already holds
// this one (Nomad's plan pipelining).
func (s *Server) applyPlans(ctx context.Context, batch []*planSubmission) {
	answer := func(res []planResult, err error, committed func() error) {
		for i, sub := range batch {
			var r planResult
			if res != nil {
				r = res[i]
			}
			sub.res <- planAnswer{planResult: r, err: err, committed: committed}
		}
	}
	s.mu.Lock()
	if !s.leader {
		s.mu.Unlock()
		answer(nil, ErrNoLeader, nil)
		return
	}
	c := s.cell
	c.index = s.planned + 1
	places := 0
	for _, sub := range batch {
		places += len(sub.pl.places) + len(sub.pl.stops)
	}
	c.ch = newChangesFor(places)
	res := make([]planResult, len(batch))
	for i, sub := range batch {
		if sub.pl.origin != s.origin {
			res[i] = planResult{stale: true} // planned on a working state since thrown away
			continue
		}
		res[i] = c.applyPlan(sub.pl)
	}
	// Enqueued under the lock, in the order their records were written, so a
	// ticket always carries the newest recorded request of its job.
	s.enqueueEvals(c.takeEvalRequests())
	ch := c.ch
	c.ch = nil
	p, err := s.queueOpLocked(ch)
	s.cmu.Lock()
	s.stats.Plans += uint64(len(batch))
	s.cmu.Unlock()
	need := s.planned
	s.mu.Unlock()
	s.kickCommit()
	if err != nil {
		answer(nil, err, nil)
		return
	}
	var once sync.Once
	var cerr error
	answer(res, nil, func() error {
		once.Do(func() {
			if p == nil {
				// Nothing changed, but the outcome may rest on operations still committing.
				cerr = s.waitCommitted(ctx, need)
			} else {
				cerr = s.waitOp(ctx, p)
			}
		})
		return cerr
	})
}

// enqueueEvals hands evaluation requests to the broker, in order. s.mu is held.
func (s *Server) enqueueEvals(reqs []evalRequest) []*evalTicket {
	if len(reqs) == 0 {
		return nil
	}
	out := make([]*evalTicket, len(reqs))
	for i, r := range reqs {
		out[i] = s.broker.enqueue(r)
	}
	return out
}

// waitEvals waits for evaluations and returns them in order; one that did not
// run (leadership lost) is an error.
func (s *Server) waitEvals(ctx context.Context, tickets []*evalTicket) ([]*Evaluation, error) {
	timer := time.NewTimer(commitTimeout)
	defer timer.Stop()
	var evs []*Evaluation
	for _, t := range tickets {
		select {
		case <-t.done:
		case <-timer.C:
			return evs, fmt.Errorf("evaluate job %s: %w within %v (it may still run)", t.job, ErrNoQuorum, commitTimeout)
		case <-ctx.Done():
			return evs, fmt.Errorf("wait for the evaluation of job %s: %w", t.job, ctx.Err())
		}
		if t.err != nil {
			return evs, fmt.Errorf("evaluate job %s: %w", t.job, t.err)
		}
		if t.ev != nil {
			evs = append(evs, t.ev)
		}
	}
	return evs, nil
}

// quiesce waits until no evaluation is queued or running and every operation is
// committed: tests and benchmarks read the state after it.
func (s *Server) quiesce(ctx context.Context) error {
	for {
		idle, wake := s.broker.idle()
		if idle {
			s.mu.RLock()
			need := s.planned
			s.mu.RUnlock()
			if err := s.waitCommitted(ctx, need); err != nil {
				return err
			}
			// Committing may have queued follow-up evaluations.
			if again, _ := s.broker.idle(); again {
				return nil
			}
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return errors.Join(errors.New("placement: evaluations still running"), ctx.Err())
		}
	}
}
