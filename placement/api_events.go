package placement

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// GET /v1/events[?job=NAME]: server-sent events, one per change the cell
// committed, from whichever server answers (every server applies every entry).
// The first event, "ready", says at which index the stream starts.

// EventReady opens every stream: Index is the server's committed index then.
const EventReady = "ready"

const (
	eventsPing       = 15 * time.Second
	eventsWriteLimit = 30 * time.Second // a client that reads nothing for this long is dropped
)

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	s.serveEvents(w, r, r.URL.Query().Get("job"))
}

// serveEvents streams events to w until the client goes, falls behind, or the
// server shuts down.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request, job string) {
	sub, err := s.subscribeEvents(job)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	defer s.events.unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	send := func(f func() error) bool {
		// The API's write timeout would cut a stream; each write gets its own instead.
		_ = rc.SetWriteDeadline(time.Now().Add(eventsWriteLimit))
		return f() == nil && rc.Flush() == nil
	}
	ready, _ := json.Marshal(Event{Type: EventReady, Index: s.Index(), Time: s.opts.Now(), Key: s.Name(),
		Summary: "streaming from server " + s.Name(), Record: json.RawMessage("null")})
	if !send(func() error { _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", EventReady, ready); return err }) {
		return
	}
	ping := time.NewTicker(eventsPing)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ping.C:
			if !send(func() error { _, err := io.WriteString(w, ": ping\n\n"); return err }) {
				return
			}
			continue
		case <-sub.wake:
		}
		evs, lost, closed := sub.take(s.opts.Now())
		if closed {
			return
		}
		if lost {
			b, _ := json.Marshal(Event{Type: EventLost, Time: s.opts.Now(), Record: json.RawMessage("null"),
				Summary: "this stream fell too far behind and ends here: read the state again and reconnect"})
			send(func() error { _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", EventLost, b); return err })
			return
		}
		if len(evs) == 0 {
			continue
		}
		ok := send(func() error {
			bw := bufio.NewWriter(w)
			for _, e := range evs {
				b, err := json.Marshal(e)
				if err != nil {
					return err
				}
				fmt.Fprintf(bw, "id: %d\nevent: %s\ndata: %s\n\n", e.Index, e.Type, b)
			}
			return bw.Flush()
		})
		if !ok {
			return
		}
	}
}

// Events follows the events stream of one server of the list (the next one if
// it cannot be reached), calling fn for each event, the "ready" event first,
// until ctx ends, fn returns an error, or the stream ends. A stream that ends
// returns an error saying why; callers that follow reconnect.
func (c *Client) Events(ctx context.Context, job string, fn func(Event) error) error {
	path := "/v1/events"
	if job != "" {
		path += "?job=" + url.QueryEscape(job)
	}
	hc := &http.Client{Transport: c.hc.Transport} // no overall timeout: the stream lasts
	var lastErr error
	for range c.servers {
		i := c.cur.Load()
		base := c.servers[int(i)%len(c.servers)]
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lastErr = fmt.Errorf("placement server %s: %w", base, err)
			c.cur.CompareAndSwap(i, (i+1)%int32(len(c.servers)))
			continue
		}
		if resp.StatusCode != http.StatusOK {
			var ae apiError
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if json.Unmarshal(data, &ae) != nil || ae.Error == "" {
				ae.Error = resp.Status
			}
			err := &APIError{Status: resp.StatusCode, Message: ae.Error}
			if resp.StatusCode != http.StatusServiceUnavailable {
				return fmt.Errorf("events: %w", err)
			}
			lastErr = fmt.Errorf("placement server %s: %w", base, err)
			c.cur.CompareAndSwap(i, (i+1)%int32(len(c.servers)))
			continue
		}
		err = readEvents(resp.Body, fn)
		resp.Body.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("events from %s: %w", base, err)
	}
	return lastErr
}

// errStreamEnded is what readEvents returns when the server closed the stream.
var errStreamEnded = errors.New("the stream ended")

// readEvents parses a text/event-stream body: "data:" lines carry one Event each.
func readEvents(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data.Len() == 0 {
				continue
			}
			var e Event
			if err := json.Unmarshal([]byte(data.String()), &e); err != nil {
				return fmt.Errorf("decode event: %w", err)
			}
			data.Reset()
			if err := fn(e); err != nil {
				return err
			}
			if e.Type == EventLost {
				return errors.New(e.Summary)
			}
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errStreamEnded
}
