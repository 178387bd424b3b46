package placement

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Web UI credentials. `ballena ui --url` asks the leader, with the admin token,
// for a one-time login token (POST /v1/ui/login). The browser opens
// /ui/login?token=T: the leader consumes the token, answers with a session
// cookie and redirects to a page, so the token leaves the address bar at once
// and is never written into a page. The cookie is HttpOnly, Secure over TLS,
// SameSite=Strict and limited to /ui/; it is good for sessionTTL.
//
// Tokens and sessions live in the leader's memory only, as sha256 hashes:
// putting bearer secrets into the Raft log would also put them into snapshots
// and backups. A follower forwards every /ui/ request, cookie and all, to the
// leader, so any server of the cell can be opened. When the leader changes,
// sessions end and the pages say to run `ballena ui --url` again.

const (
	uiCookie      = "ballena_ui"
	loginTokenTTL = 5 * time.Minute
	sessionTTL    = 12 * time.Hour
	maxUISecrets  = 1024 // outstanding login tokens, and sessions, each
)

type uiSessions struct {
	mu       sync.Mutex
	tokens   map[[32]byte]time.Time // one-time login tokens -> expiry
	sessions map[[32]byte]time.Time // session IDs -> expiry
}

var errTooManySecrets = errors.New("too many UI login tokens or sessions outstanding; wait for some to expire")

func newSecret() (string, [32]byte) {
	var raw [32]byte
	rand.Read(raw[:])
	s := hex.EncodeToString(raw[:])
	return s, sha256.Sum256([]byte(s))
}

func prune(m map[[32]byte]time.Time, now time.Time) {
	for k, exp := range m {
		if now.After(exp) {
			delete(m, k)
		}
	}
}

// newLoginToken makes a one-time login token, good for loginTokenTTL.
func (u *uiSessions) newLoginToken(now time.Time) (string, time.Time, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	tok, exp, ok := addSecret(&u.tokens, now, loginTokenTTL)
	if !ok {
		return "", time.Time{}, errTooManySecrets
	}
	return tok, exp, nil
}

// addSecret makes a secret good until now+ttl and keeps its hash in *m (made
// on first use), after dropping the expired ones; false when *m is full.
func addSecret(m *map[[32]byte]time.Time, now time.Time, ttl time.Duration) (string, time.Time, bool) {
	if *m == nil {
		*m = map[[32]byte]time.Time{}
	}
	prune(*m, now)
	if len(*m) >= maxUISecrets {
		return "", time.Time{}, false
	}
	secret, h := newSecret()
	exp := now.Add(ttl)
	(*m)[h] = exp
	return secret, exp, true
}

// login consumes a login token and opens a session, whose ID it returns.
func (u *uiSessions) login(token string, now time.Time) (string, time.Time, bool) {
	h := sha256.Sum256([]byte(token))
	u.mu.Lock()
	defer u.mu.Unlock()
	exp, ok := u.tokens[h]
	delete(u.tokens, h) // used once, whatever happens next
	if !ok || now.After(exp) {
		return "", time.Time{}, false
	}
	return addSecret(&u.sessions, now, sessionTTL)
}

// valid reports whether a session ID is open.
func (u *uiSessions) valid(id string, now time.Time) bool {
	if len(id) != 64 {
		return false
	}
	h := sha256.Sum256([]byte(id))
	u.mu.Lock()
	defer u.mu.Unlock()
	exp, ok := u.sessions[h]
	return ok && !now.After(exp)
}

func (u *uiSessions) logout(id string) {
	h := sha256.Sum256([]byte(id))
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.sessions, h)
}

// UILogin is the answer to POST /v1/ui/login.
type UILogin struct {
	// Path is the login path with its one-time token; the client puts the
	// server's URL in front of it.
	Path    string    `json:"path"`
	Expires time.Time `json:"expires"`
}

func (s *Server) handleUILoginToken(w http.ResponseWriter, r *http.Request) {
	tok, exp, err := s.ui.newLoginToken(s.opts.Now())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, http.StatusOK, UILogin{Path: "/ui/login?token=" + tok, Expires: exp})
}

// uiAuthed reports whether a /ui/ request carries an open session, or the
// admin token (for scripts and curl).
func (s *Server) uiAuthed(r *http.Request) bool {
	if r.Header.Get("Authorization") != "" {
		return checkBearer(r, s.opts.AdminToken)
	}
	c, err := r.Cookie(uiCookie)
	return err == nil && s.ui.valid(c.Value, s.opts.Now())
}

// handleUILogin consumes the token, sets the session cookie and redirects.
func (s *Server) handleUILogin(w http.ResponseWriter, r *http.Request) {
	id, exp, ok := s.ui.login(r.URL.Query().Get("token"), s.opts.Now())
	if !ok {
		s.uiRefuse(w, http.StatusForbidden, "This login link was already used or has expired (links work once, for 5 minutes).")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: id, Path: "/ui/", Expires: exp,
		MaxAge: int(sessionTTL / time.Second), HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/ui/jobs", http.StatusSeeOther)
}

// handleUILogout ends the session. SameSite=Strict keeps other sites from
// sending the cookie with this POST.
func (s *Server) handleUILogout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(uiCookie); err == nil {
		s.ui.logout(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: uiCookie, Value: "", Path: "/ui/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	s.uiRefuse(w, http.StatusOK, "Logged out.")
}

// UILoginURL asks the cell for a one-time web UI login URL on the server the
// client talks to (any server of the cell will do: followers forward /ui/ to
// the leader).
func (c *Client) UILoginURL(ctx context.Context) (string, time.Time, error) {
	var out UILogin
	if err := c.do(ctx, http.MethodPost, "/v1/ui/login", nil, &out, false); err != nil {
		return "", time.Time{}, fmt.Errorf("ui login: %w", err)
	}
	return c.Server() + out.Path, out.Expires, nil
}
