// Package artifact defines what Ballena ships (a static "whale" binary or an OCI
// image), validates inputs, and keeps them in a content-addressed store: blobs on
// disk named by sha256, their signed release records in badger.
package artifact

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"ballena.dev/internal/errkind"
	"ballena.dev/signing"
)

// Kind is the kind of an artifact.
type Kind string

// The artifact kinds.
const (
	KindWhale Kind = "whale" // one statically linked executable
	KindOCI   Kind = "oci"   // an OCI image, stored as a docker-save or oci-archive tarball
)

// ParseKind accepts "whale" or "oci" ("image" too).
func ParseKind(s string) (Kind, error) {
	switch strings.ToLower(s) {
	case "whale", "binary":
		return KindWhale, nil
	case "oci", "image":
		return KindOCI, nil
	}
	return "", fmt.Errorf("unknown artifact kind %q: want whale or oci", s)
}

// ErrNotFound means the store has no such release or blob.
var ErrNotFound = errors.New("not found")

// ErrInvalid means an input is not a valid artifact of its kind.
var ErrInvalid = errors.New("invalid artifact")

// Ref names a release: "api@1.4.0".
type Ref struct {
	Name    string
	Version string
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

// ValidName reports whether s can name an artifact: lower-case letters, digits,
// dots, dashes and underscores, so names are safe in paths, keys and globs.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ParseRef parses "name@version". It is the one rule for references: the store,
// the launcher and the placement service all read them with it, so a job names
// only what a node will accept. Errors wrap ErrInvalid.
func ParseRef(s string) (Ref, error) {
	name, version, ok := strings.Cut(s, "@")
	if !ok || name == "" || version == "" {
		return Ref{}, Tagged(ErrInvalid, "artifact reference %q: want name@version, e.g. api@1.4.0", s)
	}
	if !ValidName(name) {
		return Ref{}, Tagged(ErrInvalid, "artifact reference %q: name must be lower-case letters, digits, '.', '-' or '_'", s)
	}
	if err := signing.ValidateVersion(version); err != nil {
		return Ref{}, Tagged(ErrInvalid, "artifact reference %q: %v", s, err)
	}
	return Ref{Name: name, Version: version}, nil
}

func (r Ref) String() string { return r.Name + "@" + r.Version }

// Release is the record a publisher signs: it binds a name and version to the
// exact bytes (digest, size), how to run them, and how to fetch them (infohash).
// It travels inside the signed statement's externalParameters.
type Release struct {
	Name        string    `json:"name"`
	Version     string    `json:"version"`
	Kind        Kind      `json:"kind"`
	Digest      string    `json:"digest"` // hex sha256 of the blob
	Size        int64     `json:"size"`
	Arch        string    `json:"arch,omitempty"`
	Entrypoint  []string  `json:"entrypoint,omitempty"`
	Cmd         []string  `json:"cmd,omitempty"`
	Env         []string  `json:"env,omitempty"`
	WorkingDir  string    `json:"workingDir,omitempty"`
	InfoHash    string    `json:"infoHash"` // hex BitTorrent v1 infohash of TorrentInfo
	PieceLength int64     `json:"pieceLength"`
	PublishedAt time.Time `json:"publishedAt"`
}

// Ref returns the release's name@version.
func (r Release) Ref() Ref { return Ref{r.Name, r.Version} }

var hexDigestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidDigest reports whether d is a lower-case hex sha256.
func ValidDigest(d string) bool { return hexDigestRE.MatchString(d) }

func (r Release) validate() error {
	switch {
	case !ValidName(r.Name):
		return fmt.Errorf("release name %q is not valid", r.Name)
	case r.Version == "":
		return errors.New("release has no version")
	case r.Kind != KindWhale && r.Kind != KindOCI:
		return fmt.Errorf("release kind %q is not whale or oci", r.Kind)
	case !ValidDigest(r.Digest):
		return fmt.Errorf("release digest %q is not a hex sha256", r.Digest)
	case r.Size < 0:
		return errors.New("release size is negative")
	}
	return nil
}

// Tagged returns an error reading as the formatted message that matches kind
// under errors.Is (see internal/errkind): one plain line for the CLI, and the
// right exit code.
func Tagged(kind error, format string, a ...any) error { return errkind.Errorf(kind, format, a...) }
