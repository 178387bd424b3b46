package placement

import (
	"context"
	"sync"
	"time"
)

// evalBroker queues the evaluations the leader must run. Like Nomad's broker it
// holds at most one evaluation per job in the queue and one being planned: a
// request for a queued job joins it, and one for a job being planned waits until
// that plan is done, so two workers never plan the same job at once. Prod jobs
// are handed out before batch ones. The broker lives in the leader's memory
// only: a new leader evaluates every job once (reconciliation is idempotent),
// so nothing is lost with the old one.
type evalBroker struct {
	mu      sync.Mutex
	enabled bool
	queues  [2][]*evalTicket // prod, then batch
	queued  map[string]*evalTicket
	running map[string]*evalTicket
	again   map[string]*evalTicket
	wake    chan struct{} // closed and replaced when a ticket is queued or the broker changes
}

// evalTicket is one evaluation of a job on its way through the broker, the
// workers and the plan applier; done closes once its plans are committed.
type evalTicket struct {
	evalRequest
	enqueued time.Time
	done     chan struct{}
	ev       *Evaluation
	err      error
}

func newEvalBroker() *evalBroker {
	return &evalBroker{queued: map[string]*evalTicket{}, running: map[string]*evalTicket{},
		again: map[string]*evalTicket{}, wake: make(chan struct{})}
}

func (b *evalBroker) signal() {
	close(b.wake)
	b.wake = make(chan struct{})
}

// setEnabled turns the broker on when this server leads, and off, failing every
// waiting ticket with err, when it stops leading.
func (b *evalBroker) setEnabled(on bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.enabled = on
	if !on {
		for _, m := range []map[string]*evalTicket{b.queued, b.again} {
			for _, t := range m {
				t.err = err
				close(t.done)
			}
			clear(m)
		}
		b.queues = [2][]*evalTicket{}
	}
	b.signal()
}

// enqueue asks for an evaluation and returns the ticket that will carry it out.
func (b *evalBroker) enqueue(r evalRequest) *evalTicket {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.enabled {
		t := &evalTicket{evalRequest: r, done: make(chan struct{}), err: ErrNoLeader}
		close(t.done)
		return t
	}
	merge := func(t *evalTicket) *evalTicket {
		// A retry asks less than a full evaluation: the merged one is a retry only
		// if both are. It carries out the newest recorded request.
		t.retry = t.retry && r.retry
		if r.id != "" {
			t.id = r.id
		}
		return t
	}
	if t := b.queued[r.job]; t != nil {
		return merge(t)
	}
	if b.running[r.job] != nil {
		if t := b.again[r.job]; t != nil {
			return merge(t)
		}
		t := &evalTicket{evalRequest: r, enqueued: time.Now(), done: make(chan struct{})}
		b.again[r.job] = t
		return t
	}
	t := &evalTicket{evalRequest: r, enqueued: time.Now(), done: make(chan struct{})}
	b.push(t)
	return t
}

func (b *evalBroker) push(t *evalTicket) {
	q := 1
	if t.prod {
		q = 0
	}
	b.queues[q] = append(b.queues[q], t)
	b.queued[t.job] = t
	b.signal()
}

// dequeue waits for the next evaluation to plan.
func (b *evalBroker) dequeue(ctx context.Context) (*evalTicket, error) {
	for {
		b.mu.Lock()
		if b.enabled {
			for q := range b.queues {
				if len(b.queues[q]) > 0 {
					t := b.queues[q][0]
					b.queues[q][0] = nil
					b.queues[q] = b.queues[q][1:]
					delete(b.queued, t.job)
					b.running[t.job] = t
					b.mu.Unlock()
					return t, nil
				}
			}
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// finish answers a ticket and lets the job's next evaluation, if one waits, go.
func (b *evalBroker) finish(t *evalTicket, ev *Evaluation, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t.ev, t.err = ev, err
	close(t.done)
	delete(b.running, t.job)
	if next := b.again[t.job]; next != nil {
		delete(b.again, t.job)
		if b.enabled {
			b.push(next)
		} else {
			next.err = ErrNoLeader
			close(next.done)
		}
	}
	b.signal()
}

// idle reports whether no evaluation is queued or being planned, and returns a
// channel that closes at the broker's next change.
func (b *evalBroker) idle() (bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queued)+len(b.running)+len(b.again) == 0, b.wake
}

// stats is how many evaluations wait and how many are being planned.
func (b *evalBroker) stats() (waiting, running int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queued) + len(b.again), len(b.running)
}
