// Package dirstore is a blob store on a plain directory for swarm tests and
// benchmarks: the contract of artifact.Store (a blob is re-hashed, then
// renamed into place) without badger, so that many engines fit in one process.
package dirstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Store keeps blobs at Dir/blobs/<digest> and staging files under Dir/tmp.
type Store struct{ Dir string }

// New makes the store's directories.
func New(dir string) (*Store, error) {
	for _, d := range []string{"blobs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	return &Store{Dir: dir}, nil
}

func (s *Store) BlobPath(digest string) string { return filepath.Join(s.Dir, "blobs", digest) }
func (s *Store) TempDir() string               { return filepath.Join(s.Dir, "tmp") }

func (s *Store) HasBlob(digest string) bool {
	_, err := os.Stat(s.BlobPath(digest))
	return err == nil
}

// AdoptHashed moves the file at path into the store if its sha256 is want, and
// removes it otherwise. Unlike artifact.Store it re-hashes the file, so that
// tests catch a caller whose digest is wrong.
func (s *Store) AdoptHashed(_ context.Context, path, want string) error {
	got, err := SHA256File(path)
	if err != nil {
		return err
	}
	if got != want {
		os.Remove(path)
		return fmt.Errorf("adopt %s: sha256 %s, want %s", path, got, want)
	}
	return os.Rename(path, s.BlobPath(want))
}

// SHA256File returns the hex sha256 of the file at path.
func SHA256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
