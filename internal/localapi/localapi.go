// Package localapi is the plumbing between a running Ballena daemon and the CLI
// on the same machine: HTTP/JSON over a unix socket in the data dir, readable by
// its owner only.
package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// SocketName is the file name of the daemon's socket inside its data dir.
const SocketName = "ballena.sock"

// ErrNoDaemon means no daemon is listening on the data dir's socket.
var ErrNoDaemon = errors.New("no ballena daemon is running on this data dir")

// SocketPath returns the socket path for a data dir.
func SocketPath(dataDir string) string { return filepath.Join(dataDir, SocketName) }

// Listen opens the daemon's socket, replacing a stale one left by a crashed daemon
// but refusing to steal the socket of a live one.
func Listen(dataDir string) (net.Listener, error) {
	path := SocketPath(dataDir)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen %s: another daemon is already running on this data dir", path)
	}
	_ = os.Remove(path)
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return ln, nil
}

// Serve serves h on the data dir's socket until ctx is done.
func Serve(ctx context.Context, dataDir string, h http.Handler) error {
	ln, err := Listen(dataDir)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err = srv.Serve(ln)
	_ = os.Remove(SocketPath(dataDir))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Client calls a daemon's local API.
type Client struct {
	hc *http.Client
}

// Dial returns a client for the daemon on dataDir, or ErrNoDaemon if none answers.
func Dial(dataDir string) (*Client, error) {
	path := SocketPath(dataDir)
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, ErrNoDaemon
	}
	c.Close()
	return &Client{hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}, nil
}

// Error is the JSON body of every failed local API call.
type Error struct {
	Message string `json:"error"`
	// Code classifies the failure so the CLI can pick an exit code
	// ("verify", "notfound", "unavailable", "usage" or empty).
	Code string `json:"code,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Do sends in as JSON (when non-nil) and decodes the JSON answer into out (when non-nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.Stream(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Stream sends the request and returns the response for the caller to read,
// for long answers such as progress or logs. Non-2xx answers become *Error.
func (c *Client) Stream(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ballena"+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e Error
		if json.NewDecoder(resp.Body).Decode(&e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return nil, &e
	}
	return resp, nil
}

// WriteJSON writes v as a JSON answer with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes a JSON error answer.
func WriteError(w http.ResponseWriter, status int, code string, err error) {
	WriteJSON(w, status, &Error{Message: err.Error(), Code: code})
}
