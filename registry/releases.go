package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// indexing is one release file being indexed, or its result.
type indexing struct {
	done chan struct{}
	img  *image
	err  error
	file fileID
}

// fetchCall is one fetch from the mesh that every client asking for the same
// release waits on.
type fetchCall struct {
	done chan struct{}
	err  error
}

// errNotOCI means a release is a whale: nothing a registry serves.
var errNotOCI = errors.New("the release is a whale binary, not an OCI image")

// release returns the image of ref once it verified now. With fetch, a release
// the store lacks is fetched from the mesh first.
func (s *Server) release(ctx context.Context, ref artifact.Ref, fetch bool) (*image, error) {
	rel, err := s.verifyRecord(ref)
	if errors.Is(err, artifact.ErrNotFound) && fetch && s.cfg.Fetch != nil {
		if ferr := s.fetchOnce(ctx, ref); ferr != nil {
			s.refused(ref, "not fetched from the mesh", ferr)
			return nil, ferr
		}
		rel, err = s.verifyRecord(ref)
	}
	if err != nil {
		if !errors.Is(err, artifact.ErrNotFound) {
			s.refused(ref, "refused", err)
		}
		return nil, err
	}
	img, err := s.image(ctx, rel)
	if err != nil {
		s.refused(ref, "refused", err)
		return nil, err
	}
	return img, nil
}

// verifyRecord checks a stored release against the trust policy as it is now:
// signatures, scope, revocation, expiry, the record the envelope signs, and no
// rollback below the highest version this node has verified. It records
// nothing: serving an image is not running it.
func (s *Server) verifyRecord(ref artifact.Ref) (artifact.Release, error) {
	stored, env, err := s.cfg.Store.Release(ref)
	if err != nil {
		return artifact.Release{}, err
	}
	rel, _, err := artifact.VerifyEnvelope(env, s.cfg.Policy(), s.cfg.Now())
	if err != nil {
		return artifact.Release{}, err
	}
	if rel.Ref() != ref || rel.Digest != stored.Digest {
		return artifact.Release{}, fmt.Errorf("the envelope signs %s (sha256 %s), not this record: %w",
			rel.Ref(), short(rel.Digest), signing.ErrSubjectMismatch)
	}
	if rel.Kind != artifact.KindOCI {
		return artifact.Release{}, errNotOCI
	}
	if err := signing.CheckRollback(s.cfg.Store, rel.Name, rel.Version, false); err != nil {
		return artifact.Release{}, err
	}
	return rel, nil
}

// image indexes a verified release's file, once per version of the file: the
// whole file is hashed against the signed digest and each blob against its
// own. Concurrent requests wait for one indexing.
func (s *Server) image(ctx context.Context, rel artifact.Release) (*image, error) {
	p := s.cfg.Store.BlobPath(rel.Digest)
	id, err := statID(p)
	if err != nil {
		s.mu.Lock()
		delete(s.images, rel.Digest) // removed (gc): forget it
		s.mu.Unlock()
		return nil, fmt.Errorf("release file: %w", err)
	}
	s.mu.Lock()
	ix, ok := s.images[rel.Digest]
	if ok {
		select {
		case <-ix.done:
			if ix.file != id { // changed on disk since: read it again
				ok = false
			}
		default:
		}
	}
	if !ok {
		ix = &indexing{done: make(chan struct{}), file: id}
		s.images[rel.Digest] = ix
		go func() {
			// Not the request's context: others may be waiting on this.
			ictx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			ix.img, ix.err = indexImage(ictx, p, rel.Digest)
			if after, err := statID(p); ix.err == nil && (err != nil || after != id || ix.img.file != id) {
				ix.img, ix.err = nil, errors.New("the release file changed while it was read")
			}
			if ix.err != nil {
				ix.err = fmt.Errorf("release file %s: %w", short(rel.Digest), ix.err)
			}
			close(ix.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-ix.done:
		return ix.img, ix.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// findImage looks through the verified releases of name for an image that
// match accepts; it returns the image and its release digest.
func (s *Server) findImage(ctx context.Context, name string, match func(*image) bool) (*image, string) {
	rels, err := s.cfg.Store.Releases()
	if err != nil {
		s.log.Error("list releases", "err", err)
		return nil, ""
	}
	var mine []artifact.Release
	for _, r := range rels {
		if r.Name == name && r.Kind == artifact.KindOCI {
			mine = append(mine, r)
		}
	}
	// Releases already read first: a client asks for the manifest by tag
	// before the blobs, so a blob is nearly always in one of them, and the
	// others are read (and hashed) only when none has it.
	s.mu.Lock()
	indexed := func(r artifact.Release) bool {
		ix, ok := s.images[r.Digest]
		if !ok {
			return false
		}
		select {
		case <-ix.done:
			return ix.err == nil
		default:
			return false
		}
	}
	sort.SliceStable(mine, func(i, j int) bool { return indexed(mine[i]) && !indexed(mine[j]) })
	s.mu.Unlock()
	for _, r := range mine {
		img, err := s.release(ctx, r.Ref(), false)
		if err == nil && match(img) {
			return img, r.Digest
		}
	}
	return nil, ""
}

// fetchOnce fetches ref from the mesh; callers asking at once share one fetch,
// which goes on for them when one caller gives up.
func (s *Server) fetchOnce(ctx context.Context, ref artifact.Ref) error {
	s.mu.Lock()
	c, ok := s.inflight[ref]
	if !ok {
		c = &fetchCall{done: make(chan struct{})}
		s.inflight[ref] = c
		s.fetches.Inc()
		go func() {
			fctx, cancel := context.WithTimeout(context.Background(), s.cfg.FetchTimeout)
			defer cancel()
			var found atomic.Bool
			unfound := time.AfterFunc(s.cfg.ResolveTimeout, func() {
				if !found.Load() {
					cancel() // nobody named a holder in time: let the client fall back
				}
			})
			defer unfound.Stop()
			start := time.Now()
			_, c.err = s.cfg.Fetch(fctx, ref, func() { found.Store(true) })
			if c.err == nil {
				s.log.Info("fetched from the mesh for a client", "ref", ref.String(), "took", time.Since(start).Round(time.Millisecond))
			}
			s.mu.Lock()
			delete(s.inflight, ref)
			s.mu.Unlock()
			close(c.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// refused logs why a release is not served, at most once a minute for the
// same release and reason: the client only sees 404.
func (s *Server) refused(ref artifact.Ref, what string, err error) {
	key := ref.String() + "\x00" + err.Error()
	now := time.Now()
	s.mu.Lock()
	if s.logged == nil {
		s.logged = map[string]time.Time{}
	}
	last, seen := s.logged[key]
	if !seen || now.Sub(last) > time.Minute {
		s.logged[key] = now
		if len(s.logged) > 4096 {
			clear(s.logged)
		}
	}
	s.mu.Unlock()
	if seen && now.Sub(last) <= time.Minute {
		return
	}
	s.log.Warn("registry: release not served (the client gets 404)", "ref", ref.String(), "why", what, "err", err)
}
