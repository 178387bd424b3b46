package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"ballena.dev/internal/atomicfile"
	"ballena.dev/internal/ctxio"
	"ballena.dev/signing"
)

// Store is a content-addressed artifact store: blobs at blobs/sha256/<hex>,
// release records and their envelopes in badger under the "artifact/" prefix.
// Badger allows one process per store; other processes use the daemon's API.
type Store struct {
	dir string
	db  *badger.DB
}

const (
	keyRelease = "artifact/release/" // + name@version -> storedRelease
	keyHighest = "artifact/highest/" // + name -> highest verified version
)

type storedRelease struct {
	Release  Release           `json:"release"`
	Envelope *signing.Envelope `json:"envelope"`
}

// ErrStoreBusy means another process holds the store open.
var ErrStoreBusy = errors.New("store is in use by another ballena process")

// Open opens (creating if needed) the store in dir.
func Open(dir string) (*Store, error) {
	for _, d := range []string{dir, filepath.Join(dir, "blobs", "sha256"), filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	opts := badger.DefaultOptions(filepath.Join(dir, "db")).
		WithLogger(badgerLogger{}).
		WithSyncWrites(true).
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2)
	db, err := badger.Open(opts)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("open store %s: %w (is `ballena node` running? it serves this store; stop it or use its commands)", dir, ErrStoreBusy)
		}
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return &Store{dir: dir, db: db}, nil
}

// Close closes the store's database.
func (s *Store) Close() error { return s.db.Close() }

// DB returns the node's badger database, shared by the rooms of a node under their own key prefixes.
func (s *Store) DB() *badger.DB { return s.db }

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// TempDir is where partial blobs live: on the blobs' filesystem, so a finished one is renamed into place.
func (s *Store) TempDir() string { return filepath.Join(s.dir, "tmp") }

// BlobPath is where the blob with this hex sha256 lives (or would).
func (s *Store) BlobPath(digest string) string {
	return filepath.Join(s.dir, "blobs", "sha256", digest)
}

// HasBlob reports whether the blob is present (not whether it is intact: see VerifyBlob).
func (s *Store) HasBlob(digest string) bool {
	if !ValidDigest(digest) {
		return false
	}
	st, err := os.Stat(s.BlobPath(digest))
	return err == nil && st.Mode().IsRegular()
}

// IngestFile copies path into the store, hashing as it goes, and moves it into
// place only whole and only if its digest is wantDigest ("" accepts any).
func (s *Store) IngestFile(ctx context.Context, path, wantDigest string) (string, int64, error) {
	src, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("ingest: %w", err)
	}
	defer src.Close()
	tmp, err := os.CreateTemp(s.TempDir(), "ingest-*")
	if err != nil {
		return "", 0, fmt.Errorf("ingest %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), ctxio.Reader(ctx, src))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, fmt.Errorf("ingest %s: %w", path, err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if wantDigest != "" && digest != wantDigest {
		return "", 0, Tagged(signing.ErrSubjectMismatch, "ingest %s: sha256 is %s, the signed release says %s", path, digest, wantDigest)
	}
	if err := s.place(tmp.Name(), digest); err != nil {
		return "", 0, fmt.Errorf("ingest %s: %w", path, err)
	}
	return digest, n, nil
}

// AdoptHashed moves a finished download (a file under TempDir) into place.
// The caller vouches for its digest: it hashed the file's bytes as they are on
// disk, after their last write, and found the signed digest (the swarm does
// this while the download runs, so the bytes are not read a second time).
func (s *Store) AdoptHashed(_ context.Context, path, digest string) error {
	if err := syncFile(path); err != nil {
		return fmt.Errorf("adopt %s: %w", path, err)
	}
	return s.place(path, digest)
}

// place renames a synced, verified temp file to its blob path and syncs the directory.
func (s *Store) place(tmp, digest string) error {
	dst := s.BlobPath(digest)
	if s.HasBlob(digest) {
		return os.Remove(tmp) // content-addressed: the same bytes are already there
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

// VerifyBlob re-hashes a blob and fails unless it still has its digest.
func (s *Store) VerifyBlob(ctx context.Context, digest string) error {
	if !s.HasBlob(digest) {
		return Tagged(ErrNotFound, "blob %s", short(digest))
	}
	got, _, err := hashFile(ctx, s.BlobPath(digest))
	if err != nil {
		return fmt.Errorf("verify blob %s: %w", short(digest), err)
	}
	if got != digest {
		return Tagged(signing.ErrSubjectMismatch, "blob %s is corrupt or tampered with: its sha256 is now %s (run `ballena gc` and fetch it again)",
			short(digest), short(got))
	}
	return nil
}

// PutRelease records a release and its envelope. The blob must already be
// stored, so no record ever points at nothing.
func (s *Store) PutRelease(rel Release, env *signing.Envelope) error {
	if err := rel.validate(); err != nil {
		return fmt.Errorf("put %s: %w", rel.Ref(), err)
	}
	if !s.HasBlob(rel.Digest) {
		return Tagged(ErrNotFound, "put %s: blob %s is not in the store", rel.Ref(), short(rel.Digest))
	}
	b, err := json.Marshal(storedRelease{rel, env})
	if err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error {
		key := []byte(keyRelease + rel.Ref().String())
		// A name@version names one set of bytes, everywhere: publish, gossip
		// and fetch all come through here.
		if it, err := txn.Get(key); err == nil {
			var old storedRelease
			if err := it.Value(func(v []byte) error { return json.Unmarshal(v, &old) }); err != nil {
				return err
			}
			if old.Release.Digest != rel.Digest {
				return Tagged(ErrInvalid, "put %s: this store holds sha256:%s for it; refusing a second digest sha256:%s (publish a new version instead)",
					rel.Ref(), old.Release.Digest, rel.Digest)
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		return txn.Set(key, b)
	})
}

// Release returns a stored release and its envelope, or ErrNotFound.
func (s *Store) Release(ref Ref) (Release, *signing.Envelope, error) {
	var sr storedRelease
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte(keyRelease + ref.String()))
		if err != nil {
			return err
		}
		return it.Value(func(v []byte) error { return json.Unmarshal(v, &sr) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Release{}, nil, Tagged(ErrNotFound, "%s is not in the store (see `ballena ls`)", ref)
	}
	if err != nil {
		return Release{}, nil, fmt.Errorf("read %s: %w", ref, err)
	}
	return sr.Release, sr.Envelope, nil
}

// Releases lists the stored releases, by name then version.
func (s *Store) Releases() ([]Release, error) {
	var out []Release
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(keyRelease), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var sr storedRelease
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &sr) }); err != nil {
				return err
			}
			out = append(out, sr.Release)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return signing.CompareVersions(out[i].Version, out[j].Version) < 0
	})
	return out, err
}

// DeleteRelease forgets a release; its blob stays until GC finds it unreferenced.
func (s *Store) DeleteRelease(ref Ref) error {
	if _, _, err := s.Release(ref); err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(keyRelease + ref.String())) })
}

// GC removes blobs that no release references and leftovers of interrupted
// imports older than an hour, and returns the removed digests.
func (s *Store) GC(ctx context.Context) ([]string, error) {
	rels, err := s.Releases()
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	live := make(map[string]bool, len(rels))
	for _, r := range rels {
		live[r.Digest] = true
	}
	ents, err := os.ReadDir(filepath.Join(s.dir, "blobs", "sha256"))
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	var removed []string
	for _, e := range ents {
		if ctx.Err() != nil {
			return removed, ctx.Err()
		}
		if live[e.Name()] {
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, "blobs", "sha256", e.Name())); err != nil {
			return removed, fmt.Errorf("gc: %w", err)
		}
		removed = append(removed, e.Name())
	}
	tmps, _ := os.ReadDir(s.TempDir())
	for _, e := range tmps {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour && strings.HasPrefix(e.Name(), "ingest-") {
			os.Remove(filepath.Join(s.TempDir(), e.Name()))
		}
	}
	return removed, nil
}

// HighestVersion implements signing.RollbackState.
func (s *Store) HighestVersion(name string) (string, bool, error) {
	var v string
	err := s.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte(keyHighest + name))
		if err != nil {
			return err
		}
		b, err := it.ValueCopy(nil)
		v = string(b)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", false, nil
	}
	return v, err == nil, err
}

// RecordVersion implements signing.RollbackState: it keeps the highest version seen.
func (s *Store) RecordVersion(name, version string) error {
	return s.db.Update(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte(keyHighest + name))
		if err == nil {
			var cur []byte
			if cur, err = it.ValueCopy(nil); err != nil {
				return err
			}
			if signing.CompareVersions(string(cur), version) >= 0 {
				return nil
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		return txn.Set([]byte(keyHighest+name), []byte(version))
	})
}

func hashFile(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, ctxio.Reader(ctx, f), make([]byte, 1<<20))
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// badgerLogger sends badger's chatter to slog at debug level, warnings as warnings.
type badgerLogger struct{}

func (badgerLogger) Errorf(f string, a ...any) {
	slog.Error("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (badgerLogger) Warningf(f string, a ...any) {
	slog.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (badgerLogger) Infof(f string, a ...any) {
	slog.Debug("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (badgerLogger) Debugf(f string, a ...any) {
	slog.Debug("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}

// HashFile returns the hex sha256 of a file.
func HashFile(ctx context.Context, path string) (string, error) {
	d, _, err := hashFile(ctx, path)
	return d, err
}
