package launcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"time"

	"ballena.dev/internal/localapi"
	"golang.org/x/sys/unix"
)

// StopRequest is the body of POST /v1/tasks/{id}/stop.
type StopRequest struct {
	Signal  string `json:"signal,omitempty"`  // e.g. "SIGTERM" or "TERM"; default SIGTERM
	Timeout string `json:"timeout,omitempty"` // Go duration; default 10s
}

// Routes registers the launcher's local API:
//
//	POST   /v1/tasks                 TaskSpec -> Task (201)
//	GET    /v1/tasks                 -> []Task
//	GET    /v1/tasks/{id}            -> Task
//	POST   /v1/tasks/{id}/stop       StopRequest -> Task
//	GET    /v1/tasks/{id}/wait       -> Task, once final
//	GET    /v1/tasks/{id}/logs       ?follow=1 -> text stream
//	DELETE /v1/tasks/{id}            forget a finished task
func (l *Launcher) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		var spec TaskSpec
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&spec); err != nil {
			localapi.WriteError(w, http.StatusBadRequest, "usage", fmt.Errorf("task spec: %w", err))
			return
		}
		t, err := l.Start(r.Context(), spec)
		if err != nil {
			writeErr(w, err)
			return
		}
		localapi.WriteJSON(w, http.StatusCreated, t)
	})
	mux.HandleFunc("GET /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		localapi.WriteJSON(w, http.StatusOK, l.List())
	})
	mux.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		t, err := l.Get(r.PathValue("id"))
		if err != nil {
			writeErr(w, err)
			return
		}
		localapi.WriteJSON(w, http.StatusOK, t)
	})
	mux.HandleFunc("POST /v1/tasks/{id}/stop", func(w http.ResponseWriter, r *http.Request) {
		var req StopRequest
		if r.ContentLength != 0 {
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
				localapi.WriteError(w, http.StatusBadRequest, "usage", fmt.Errorf("stop request: %w", err))
				return
			}
		}
		sig, timeout, err := req.parse()
		if err != nil {
			localapi.WriteError(w, http.StatusBadRequest, "usage", err)
			return
		}
		t, err := l.Stop(r.Context(), r.PathValue("id"), sig, timeout)
		if err != nil {
			writeErr(w, err)
			return
		}
		localapi.WriteJSON(w, http.StatusOK, t)
	})
	mux.HandleFunc("GET /v1/tasks/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		t, err := l.Wait(r.Context(), r.PathValue("id"))
		if err != nil {
			writeErr(w, err)
			return
		}
		localapi.WriteJSON(w, http.StatusOK, t)
	})
	mux.HandleFunc("GET /v1/tasks/{id}/logs", func(w http.ResponseWriter, r *http.Request) {
		follow := r.URL.Query().Get("follow") == "1" || r.URL.Query().Get("follow") == "true"
		rc, err := l.Logs(r.Context(), r.PathValue("id"), follow)
		if err != nil {
			writeErr(w, err)
			return
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		fl, _ := w.(http.Flusher)
		buf := make([]byte, 32<<10)
		for {
			n, err := rc.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				if fl != nil {
					fl.Flush()
				}
			}
			if err != nil {
				return
			}
		}
	})
	mux.HandleFunc("DELETE /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := l.Remove(r.PathValue("id")); err != nil {
			writeErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func (r StopRequest) parse() (syscall.Signal, time.Duration, error) {
	sig := syscall.SIGTERM
	if r.Signal != "" {
		var err error
		if sig, err = ParseSignal(r.Signal); err != nil {
			return 0, 0, err
		}
	}
	timeout := 10 * time.Second
	if r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		if err != nil || d < 0 {
			return 0, 0, fmt.Errorf("timeout %q: want a duration such as 10s", r.Timeout)
		}
		timeout = d
	}
	return sig, timeout, nil
}

// ParseSignal accepts "SIGTERM", "TERM" or a number.
func ParseSignal(s string) (syscall.Signal, error) {
	if sig := unix.SignalNum(s); sig != 0 {
		return sig, nil
	}
	if sig := unix.SignalNum("SIG" + s); sig != 0 {
		return sig, nil
	}
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("signal %q: want a name such as SIGTERM or a number", s)
}

func writeErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrRefused):
		localapi.WriteError(w, http.StatusForbidden, "verify", err)
	case errors.Is(err, ErrNotFound):
		localapi.WriteError(w, http.StatusNotFound, "notfound", err)
	case errors.Is(err, ErrInvalid):
		localapi.WriteError(w, http.StatusBadRequest, "usage", err)
	default:
		localapi.WriteError(w, http.StatusInternalServerError, "", err)
	}
}
