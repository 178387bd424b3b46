package placement

import (
	"context"
	"net/url"

	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// The HTTP side of the API: the server, its routes, forwarding to the leader,
// bodies and answers.

// HTTPServer returns the API server with its timeouts (and TLS, in a cell).
func (s *Server) HTTPServer() *http.Server {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      maxWait + time.Minute, // long-polls last up to maxWait
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	hs.RegisterOnShutdown(s.events.closeAll) // end event streams, which never end on their own
	if s.opts.Cell != nil {
		hs.TLSConfig = s.opts.Cell.Identity.APIConfig()
	}
	return hs
}

// Serve serves the API on ln (HTTPS in a cell) until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := s.HTTPServer()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	var err error
	if hs.TLSConfig != nil {
		err = hs.ServeTLS(ln, "", "")
	} else {
		err = hs.Serve(ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve the placement API: %w", err)
	}
	return nil
}

const maxWait = 5 * time.Minute

// Handler serves the /v1/ API. Every request is authenticated (the admin token,
// or a node's signature) before its body is read; writes, and reads that must
// see the latest state, go to the leader, forwarded by a follower.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.admin(s.handleStatus))
	mux.HandleFunc("GET /v1/jobs", s.admin(s.atLeader(s.handleJobs)))
	mux.HandleFunc("POST /v1/jobs", s.admin(s.atLeader(s.handleSubmit)))
	mux.HandleFunc("GET /v1/jobs/{name}", s.admin(s.atLeader(s.handleJob)))
	mux.HandleFunc("DELETE /v1/jobs/{name}", s.admin(s.atLeader(s.handleStop)))
	mux.HandleFunc("GET /v1/jobs/{name}/history", s.admin(s.atLeader(s.handleHistory)))
	mux.HandleFunc("POST /v1/jobs/{name}/promote", s.admin(s.atLeader(s.handlePromote)))
	mux.HandleFunc("POST /v1/jobs/{name}/revert", s.admin(s.atLeader(s.handleRevert)))
	mux.HandleFunc("GET /v1/nodes", s.admin(s.atLeader(s.handleNodes)))
	mux.HandleFunc("POST /v1/nodes/{id}/drain", s.admin(s.atLeader(s.handleDrain)))
	mux.HandleFunc("POST /v1/nodes/{id}/revoke", s.admin(s.atLeader(s.handleRevoke)))
	mux.HandleFunc("POST /v1/nodes/register", s.joinToken(s.atLeader(s.handleRegister)))
	mux.HandleFunc("POST /v1/nodes/{id}/heartbeat", s.nodeHeaders(s.atLeader(s.node(s.handleHeartbeat))))
	mux.HandleFunc("GET /v1/nodes/{id}/allocations", s.nodeHeaders(s.node(s.handleAllocations)))
	mux.HandleFunc("POST /v1/nodes/{id}/allocations/{alloc}/state", s.nodeHeaders(s.atLeader(s.node(s.handleTaskState))))
	mux.HandleFunc("GET /v1/cell/self", s.admin(s.handleSelf))
	mux.HandleFunc("GET /v1/cell/members", s.admin(s.handleMembers))
	mux.HandleFunc("POST /v1/cell/remove", s.admin(s.atLeader(s.handleRemove)))
	mux.HandleFunc("GET /v1/cell/backup", s.admin(s.atLeader(s.handleBackup)))
	s.registerUI(mux) // the web UI and the events stream (ui.go)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s %s (the API is under /v1/)", r.Method, r.URL.Path))
	})
	return mux
}

const headerForwarded = "Ballena-Forwarded"

type leaderURLKey struct{}

// atLeader runs h on the leader; a follower forwards the request, unread, to it.
func (s *Server) atLeader(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.leading.Load() {
			h(w, r)
			return
		}
		if s.opts.Cell == nil || r.Header.Get(headerForwarded) != "" {
			writeError(w, http.StatusServiceUnavailable, ErrNoLeader)
			return
		}
		u, err := s.leaderURL()
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), leaderURLKey{}, u)))
	}
}

// leaderURL is the API of the current leader, as its server record says.
func (s *Server) leaderURL() (*url.URL, error) {
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return nil, ErrNoLeader
	}
	if string(id) == s.self.Name {
		return nil, fmt.Errorf("%w (this server was just elected and is catching up)", ErrNoLeader)
	}
	s.mu.Lock()
	sv := s.servers[string(id)]
	s.mu.Unlock()
	if sv == nil || sv.API == "" {
		return nil, fmt.Errorf("%w (leader %s has not recorded its API address yet)", ErrNoLeader, id)
	}
	u, err := url.Parse(sv.API)
	if err != nil {
		return nil, fmt.Errorf("leader %s API address %q: %w", id, sv.API, err)
	}
	return u, nil
}

type badRequest struct{ error }

func (e badRequest) Unwrap() error { return e.error }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, apiError{Error: err.Error()})
}

func statusOf(err error) int {
	var br badRequest
	switch {
	case errors.As(err, &br):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrNoQuorum):
		return http.StatusServiceUnavailable
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errRevoked):
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

const maxBody = 8 << 20

var errTooLarge = fmt.Errorf("request body larger than %d bytes", maxBody)

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, errTooLarge
	}
	if err != nil {
		return nil, badRequest{fmt.Errorf("read request body: %w", err)}
	}
	return b, nil
}

func decode(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return badRequest{fmt.Errorf("decode request: %w", err)}
	}
	return nil
}

// refuse answers a request whose credentials are missing or wrong, and closes
// the connection: its body is never read (net/http would otherwise drain it).
func refuse(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Connection", "close")
	writeError(w, status, err)
}
