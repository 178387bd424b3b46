package placement

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// follow streams events from cl into a channel until the test ends, and waits
// for the stream's "ready" event, so that what the test does next is seen.
func follow(t *testing.T, cl *Client, job string) <-chan Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Event, 1024)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		cl.Events(ctx, job, func(e Event) error {
			select {
			case ch <- e:
			case <-ctx.Done():
			}
			return nil
		})
	}()
	waitEvent(t, ch, "the ready event", func(e Event) bool { return e.Type == EventReady })
	return ch
}

// waitEvent reads events until one satisfies match, failing after 20 s or if
// the stream ends; it returns the events read on the way, the match last.
func waitEvent(t *testing.T, ch <-chan Event, what string, match func(Event) bool) []Event {
	t.Helper()
	var seen []Event
	timeout := time.After(20 * time.Second)
	for {
		select {
		case e := <-ch:
			seen = append(seen, e)
			if match(e) {
				return seen
			}
		case <-timeout:
			var got []string
			for _, e := range seen {
				got = append(got, e.Type+": "+e.Summary)
			}
			t.Fatalf("no event for %s; got:\n%s", what, strings.Join(got, "\n"))
		}
	}
}

// TestEventsFollowTheCell: a stream sees machines join, jobs registered, tasks
// placed, their allocations start on the machine, and a release arrive on a
// machine, in commit order; a stream for one job sees only that job.
func TestEventsFollowTheCell(t *testing.T) {
	ts := startServer(t, t.TempDir())
	all := follow(t, ts.admin, "")
	onlyAPI := follow(t, ts.admin, "api")

	n := ts.addNode(t, 4000, 8, map[string]string{"rack": "r1"})
	waitEvent(t, all, "the node joining", func(e Event) bool {
		return e.Type == EventNode && e.Node == n.NodeID() && strings.HasSuffix(e.Summary, "ready")
	})

	ts.submit(t, job("web", 1, 100, 64, BandProd))
	ts.submit(t, job("api", 2, 100, 64, BandProd))
	seen := waitEvent(t, all, "api's second task placed", func(e Event) bool {
		return e.Type == EventTask && e.Job == "api" && strings.HasPrefix(e.Summary, "task api[1] placed")
	})
	var jobSeen bool
	var last uint64
	for _, e := range seen {
		if e.Index < last {
			t.Fatalf("event %q at index %d after index %d", e.Summary, e.Index, last)
		}
		last = e.Index
		jobSeen = jobSeen || e.Type == EventJob && e.Summary == "job api v1: 2 × api@1.0.0 (prod); rollout of v1 running"
	}
	if !jobSeen {
		t.Fatalf("no job event for api before its tasks")
	}

	// The machine starts them: allocation events say running, on this node.
	n.converge()
	waitEvent(t, all, "api[0] running", func(e Event) bool {
		return e.Type == EventAlloc && e.Node == n.NodeID() && e.Summary == "task api[0] on "+ShortID(n.NodeID())+": running, healthy"
	})

	// A release arrives on the machine.
	if _, err := n.Heartbeat(context.Background(), Heartbeat{Artifacts: []string{"api@1.0.0", "sha256:" + strings.Repeat("a", 64)}}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, all, "the release held", func(e Event) bool {
		return e.Type == EventRelease && e.Summary == "node "+ShortID(n.NodeID())+" now holds api@1.0.0"
	})

	// The job's own stream saw api, and nothing else.
	got := waitEvent(t, onlyAPI, "api[1] running", func(e Event) bool {
		return e.Type == EventAlloc && strings.HasPrefix(e.Summary, "task api[1]") && strings.Contains(e.Summary, "running")
	})
	for _, e := range got {
		if e.Job != "api" {
			t.Fatalf("job stream carried %s event %q", e.Type, e.Summary)
		}
	}
	// Both healthy: the job's rollout succeeded, and says so.
	waitEvent(t, onlyAPI, "api's rollout done", func(e Event) bool {
		return e.Type == EventJob && e.Summary == "job api v1: 2 × api@1.0.0 (prod); rollout of v1 successful: 2 tasks of version 1 healthy"
	})
}

// TestEventsSlowSubscriberIsDropped: a subscriber that reads nothing while
// more than maxQueuedOps operations commit is dropped with a "lost" mark, and
// holds no memory for them.
func TestEventsSlowSubscriberIsDropped(t *testing.T) {
	var h eventHub
	sub, err := h.subscribe("", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	batch := make([]*op, 1024)
	for i := range batch {
		batch[i] = &op{Index: uint64(i)}
	}
	for range maxQueuedOps/len(batch) + 1 {
		h.publish(batch)
	}
	evs, lost, closed := sub.take(time.Now())
	if !lost || closed || evs != nil || sub.queue != nil {
		t.Fatalf("lost=%v closed=%v events=%d queued=%d; want a lost subscriber with nothing queued", lost, closed, len(evs), len(sub.queue))
	}
	h.unsubscribe(sub)
	if h.n.Load() != 0 {
		t.Fatalf("%d subscribers after unsubscribe", h.n.Load())
	}
}

// BenchmarkEventsPublish is the cost the events hook adds to applying one
// committed operation (a placement: a task, an allocation, an evaluation),
// with nobody listening and with one subscriber, whose decoding runs in its
// own goroutine (here, in the loop).
func BenchmarkEventsPublish(b *testing.B) {
	a := &Alloc{ID: "0123456789abcdef", Job: "api", NodeID: "12D3KooWQm34jdx4CNARYCseZgQ7riqQpdzoDRQsnLy2og2eWcnW",
		Artifact: "api@1.0.0", DesiredStatus: DesiredRun, ClientStatus: ClientPending}
	ab, _ := json.Marshal(a)
	tb, _ := json.Marshal(&Task{Job: "api", Index: 0, State: TaskPlaced, AllocID: a.ID})
	eb, _ := json.Marshal(&Evaluation{ID: "e1", Job: "api", Trigger: "job-register", Placed: 1})
	o := &op{Index: 1, Tasks: map[string]json.RawMessage{"api/000000": tb},
		Allocs: map[string]json.RawMessage{a.ID: ab}, Evals: map[string]json.RawMessage{"api": eb}}
	ops := []*op{o}
	b.Run("nobody-listening", func(b *testing.B) {
		var h eventHub
		for b.Loop() {
			h.publish(ops)
		}
	})
	b.Run("one-subscriber", func(b *testing.B) {
		var h eventHub
		sub, _ := h.subscribe("", nil, nil)
		for b.Loop() {
			h.publish(ops)
			if evs, _, _ := sub.take(time.Time{}); len(evs) != 2 {
				b.Fatalf("%d events", len(evs))
			}
		}
	})
}

// TestRecentEvaluations: the hub keeps a job's last ten evaluations, newest
// first, and forgets them when the job is removed.
func TestRecentEvaluations(t *testing.T) {
	var h eventHub
	for i := range 13 {
		raw, _ := json.Marshal(&Evaluation{ID: fmt.Sprint("e", i), Job: "api"})
		h.publish([]*op{{Index: uint64(i), Evals: map[string]json.RawMessage{"api": raw}}})
	}
	// An evaluation recorded again (pending, then complete) keeps its place.
	raw, _ := json.Marshal(&Evaluation{ID: "e11", Job: "api", Status: EvalComplete})
	h.publish([]*op{{Index: 13, Evals: map[string]json.RawMessage{"api": raw}}})
	var ids []string
	for _, ev := range h.recent("api") {
		ids = append(ids, ev.ID)
	}
	if got := strings.Join(ids, " "); got != "e12 e11 e10 e9 e8 e7 e6 e5 e4 e3" {
		t.Fatalf("recent evaluations %q", got)
	}
	if st := h.recent("api")[1].Status; st != EvalComplete {
		t.Fatalf("e11 is %q, want its later record", st)
	}
	h.publish([]*op{{Index: 14, Jobs: map[string]json.RawMessage{"api": {}}}})
	if evs := h.recent("api"); len(evs) != 0 {
		t.Fatalf("%d evaluations kept for a removed job", len(evs))
	}
}
