package placement

import (
	"crypto/ed25519"

	"errors"
	"fmt"
	"net/http"
)

// Who may call what: the admin token, the join token, node signatures. Every
// credential is checked before the body is read.

// admin requires the admin token, for reads as for writes, from anywhere.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			refuse(w, http.StatusUnauthorized, errors.New("this request needs the admin token (Authorization: Bearer ...)"))
			return
		}
		if !checkBearer(r, s.opts.AdminToken) {
			refuse(w, http.StatusForbidden, errors.New("wrong admin token"))
			return
		}
		h(w, r)
	}
}

// joinToken requires the join token (machines registering).
func (s *Server) joinToken(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !checkBearer(r, s.opts.JoinToken) {
			refuse(w, http.StatusUnauthorized, errors.New("registering a machine needs the join token (Authorization: Bearer ...)"))
			return
		}
		h(w, r)
	}
}

// nodeHeaders checks what a node request's headers say before its body is read:
// a registered, unrevoked node acting for itself, at a time inside the window.
// The signature over the body is checked once the (size-capped) body is read.
func (s *Server) nodeHeaders(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(HeaderNode)
		if id == "" || r.Header.Get(HeaderSignature) == "" {
			refuse(w, http.StatusUnauthorized, errors.New("this request must be signed by a node key"))
			return
		}
		if id != r.PathValue("id") {
			refuse(w, http.StatusForbidden, fmt.Errorf("node %s may not act for node %s", id, r.PathValue("id")))
			return
		}
		if err := checkRequestTime(r, s.opts.Now()); err != nil {
			refuse(w, http.StatusUnauthorized, err)
			return
		}
		if s.nodeKey(id) == nil {
			refuse(w, http.StatusUnauthorized, fmt.Errorf("%w: node %s is not registered or is revoked", errUnauthorized, id))
			return
		}
		h(w, r)
	}
}

// node verifies a request signed by the node named in the path.
func (s *Server) node(h func(w http.ResponseWriter, r *http.Request, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		id, err := verifyNodeRequest(r, body, s.opts.Now(), &s.guard, s.nodeKey)
		if err != nil {
			writeError(w, http.StatusUnauthorized, err)
			return
		}
		if id != r.PathValue("id") {
			writeError(w, http.StatusForbidden, fmt.Errorf("node %s may not act for node %s", id, r.PathValue("id")))
			return
		}
		h(w, r, body)
	}
}

func (s *Server) nodeKey(id string) ed25519.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.cell.byID[id]; n != nil && !n.Revoked && len(n.PublicKey) == ed25519.PublicKeySize {
		return ed25519.PublicKey(n.PublicKey)
	}
	return nil
}
