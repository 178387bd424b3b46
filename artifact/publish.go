package artifact

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"ballena.dev/signing"
)

// BuildType identifies Ballena's publish step in SLSA provenance.
const BuildType = "https://ballena.dev/publish/v1"

// DefaultBuilderID names the builder when the publisher gives none.
const DefaultBuilderID = "https://ballena.dev/builders/ballena-publish@v1"

// PublishOptions says what to publish and who signs it.
type PublishOptions struct {
	Name, Version string
	Kind          Kind // "" detects: a directory or tarball is oci, else whale
	Keys          []ed25519.PrivateKey
	BuilderID     string
	SourceRepo    string // "" and SourceCommit "" are looked up with git next to the input
	SourceCommit  string
	Started       time.Time // when the build started; zero means now
	Now           func() time.Time
}

// externalParameters is the signed part of the provenance that Ballena reads back.
type externalParameters struct {
	Release Release `json:"release"`
	Input   string  `json:"input,omitempty"`
}

// Prepared is an input checked and described, ready to sign and import.
type Prepared struct {
	Release Release
	Path    string // the exact bytes that will travel
	temp    bool
}

// Cleanup removes a converted image written by Prepare.
func (p *Prepared) Cleanup() {
	if p.temp {
		os.Remove(p.Path)
	}
}

// Prepare validates input as an artifact of opts.Kind and describes it (digest,
// size, arch, how to run it, infohash). Images other than docker-save tarballs
// are converted to one under tmpDir.
func Prepare(ctx context.Context, input, tmpDir string, opts PublishOptions) (*Prepared, error) {
	if !ValidName(opts.Name) {
		return nil, Tagged(ErrInvalid, "publish: name %q: use lower-case letters, digits, '.', '-' or '_'", opts.Name)
	}
	if err := signing.ValidateVersion(opts.Version); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	kind := opts.Kind
	if kind == "" {
		kind = detectKind(input)
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	p := &Prepared{Path: input}
	rel := Release{Name: opts.Name, Version: opts.Version, Kind: kind, PublishedAt: now().UTC()}
	switch kind {
	case KindWhale:
		wi, err := InspectWhale(input)
		if err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
		rel.Arch = wi.Arch
		rel.Entrypoint = []string{"/" + opts.Name}
	case KindOCI:
		path, ii, err := PrepareImage(input, tmpDir)
		if err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
		p.Path, p.temp = path, path != input
		rel.Arch, rel.Entrypoint, rel.Cmd, rel.Env, rel.WorkingDir = ii.Arch, ii.Entrypoint, ii.Cmd, ii.Env, ii.WorkingDir
	default:
		return nil, Tagged(ErrInvalid, "publish: unknown kind %q", kind)
	}
	digest, size, err := hashFile(ctx, p.Path)
	if err != nil {
		p.Cleanup()
		return nil, fmt.Errorf("publish: %w", err)
	}
	info, err := TorrentInfo(p.Path, digest)
	if err != nil {
		p.Cleanup()
		return nil, fmt.Errorf("publish: %w", err)
	}
	ih, err := InfoHash(info)
	if err != nil {
		p.Cleanup()
		return nil, fmt.Errorf("publish: %w", err)
	}
	rel.Digest, rel.Size, rel.InfoHash, rel.PieceLength = digest, size, ih, info.PieceLength
	p.Release = rel
	return p, nil
}

// detectKind guesses from the input's shape: images come as directories or tarballs.
func detectKind(path string) Kind {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return KindOCI
	}
	if ok, err := tarHasFile(path, "manifest.json"); err == nil && ok {
		return KindOCI
	}
	if ok, err := tarHasFile(path, "oci-layout"); err == nil && ok {
		return KindOCI
	}
	return KindWhale
}

// Sign wraps the release in an in-toto statement with SLSA provenance and signs
// it with every key in opts.Keys.
func Sign(rel Release, input string, opts PublishOptions) (*signing.Envelope, error) {
	if len(opts.Keys) == 0 {
		return nil, errors.New("sign: no signing key")
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	ext, err := json.Marshal(externalParameters{Release: rel, Input: filepath.Base(input)})
	if err != nil {
		return nil, err
	}
	builder := opts.BuilderID
	if builder == "" {
		builder = DefaultBuilderID
	}
	repo, commit := opts.SourceRepo, opts.SourceCommit
	if repo == "" && commit == "" {
		dir := input
		if st, err := os.Stat(input); err != nil || !st.IsDir() {
			dir = filepath.Dir(input)
		}
		repo, commit = signing.DetectSource(dir)
	}
	started := opts.Started
	if started.IsZero() {
		started = rel.PublishedAt
	}
	prov := signing.Provenance{
		BuildDefinition: signing.BuildDefinition{BuildType: BuildType, ExternalParameters: ext},
		RunDetails: signing.RunDetails{
			Builder:  signing.Builder{ID: builder},
			Metadata: signing.BuildMetadata{StartedOn: started.UTC(), FinishedOn: now().UTC()},
		},
	}
	if d, ok := signing.SourceDescriptor(repo, commit); ok {
		prov.BuildDefinition.ResolvedDependencies = []signing.ResourceDescriptor{d}
	}
	st := signing.NewStatement(rel.Ref().String(), rel.Digest, prov)
	payload, err := st.Marshal()
	if err != nil {
		return nil, err
	}
	return signing.SignEnvelope(signing.PayloadType, payload, opts.Keys...)
}

// Import stores a prepared artifact with its envelope: the bytes are re-hashed
// on the way in and must match the release the envelope signs.
func (s *Store) Import(ctx context.Context, path string, env *signing.Envelope) (Release, error) {
	rel, err := releaseFromEnvelope(env)
	if err != nil {
		return Release{}, fmt.Errorf("import: %w", err)
	}
	if _, _, err := s.IngestFile(ctx, path, rel.Digest); err != nil {
		return Release{}, fmt.Errorf("import %s: %w", rel.Ref(), err)
	}
	if err := s.PutRelease(rel, env); err != nil {
		return Release{}, fmt.Errorf("import %s: %w", rel.Ref(), err)
	}
	return rel, nil
}

// Publish prepares, signs and imports input in one step.
func Publish(ctx context.Context, s *Store, input string, opts PublishOptions) (Release, *signing.Envelope, error) {
	p, err := Prepare(ctx, input, s.TempDir(), opts)
	if err != nil {
		return Release{}, nil, err
	}
	defer p.Cleanup()
	env, err := Sign(p.Release, input, opts)
	if err != nil {
		return Release{}, nil, err
	}
	rel, err := s.Import(ctx, p.Path, env)
	return rel, env, err
}

// releaseFromEnvelope reads the release out of an envelope's statement without
// checking signatures: only for envelopes this process made or already verified.
func releaseFromEnvelope(env *signing.Envelope) (Release, error) {
	st, err := signing.ParseStatement(env.Payload)
	if err != nil {
		return Release{}, err
	}
	return ReleaseFromStatement(st)
}

// ReleaseFromStatement decodes the release record a statement carries and
// checks that it names the statement's subject.
func ReleaseFromStatement(st *signing.Statement) (Release, error) {
	var ext externalParameters
	if err := json.Unmarshal(st.Predicate.BuildDefinition.ExternalParameters, &ext); err != nil {
		return Release{}, Tagged(signing.ErrMalformed, "statement carries no Ballena release record: %v", err)
	}
	rel := ext.Release
	if err := rel.validate(); err != nil {
		return Release{}, Tagged(signing.ErrMalformed, "statement's release record: %v", err)
	}
	sub := st.Subject[0]
	if sub.Name != rel.Ref().String() || sub.Digest["sha256"] != rel.Digest {
		return Release{}, Tagged(signing.ErrSubjectMismatch, "statement subject %s (sha256 %s) does not match its release record %s (sha256 %s)",
			sub.Name, short(sub.Digest["sha256"]), rel.Ref(), short(rel.Digest))
	}
	return rel, nil
}
