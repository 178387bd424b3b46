package signing

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// BuildType is the SLSA buildType of a Ballena publish: the artifact was built
// elsewhere and Ballena attests what it was given, where from, and by whom.
const BuildType = "https://ballena.dev/publish/v1"

// DefaultBuilderID names the builder when the caller gives none.
const DefaultBuilderID = "https://ballena.dev/builder/ballena-cli"

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// NewStatement returns an in-toto v1 statement whose single subject is
// subjectName ("api@1.4.0") with the given sha256, and whose predicate is p
// with the build type, builder ID and external parameters defaulted if empty.
func NewStatement(subjectName, sha256Hex string, p Provenance) *Statement {
	if p.BuildDefinition.BuildType == "" {
		p.BuildDefinition.BuildType = BuildType
	}
	if len(p.BuildDefinition.ExternalParameters) == 0 {
		p.BuildDefinition.ExternalParameters = json.RawMessage(`{}`)
	}
	if p.RunDetails.Builder.ID == "" {
		p.RunDetails.Builder.ID = DefaultBuilderID
	}
	return &Statement{
		Type:          StatementType,
		Subject:       []Subject{{Name: subjectName, Digest: map[string]string{"sha256": strings.ToLower(sha256Hex)}}},
		PredicateType: PredicateType,
		Predicate:     p,
	}
}

// SourceDescriptor returns the SLSA resolved dependency for a git source
// ("git+<repo>", digest gitCommit), or false if both are empty.
func SourceDescriptor(repo, commit string) (ResourceDescriptor, bool) {
	if repo == "" && commit == "" {
		return ResourceDescriptor{}, false
	}
	rd := ResourceDescriptor{Name: "source"}
	if repo != "" {
		rd.URI = repo
		if !strings.HasPrefix(repo, "git+") {
			rd.URI = "git+" + repo
		}
	}
	if commit != "" {
		rd.Digest = map[string]string{"gitCommit": commit}
	}
	return rd, true
}

// Source returns the git repository and commit recorded by SourceDescriptor, if any.
func (s *Statement) Source() (repo, commit string) {
	for _, rd := range s.Predicate.BuildDefinition.ResolvedDependencies {
		if rd.Name != "source" && !strings.HasPrefix(rd.URI, "git+") {
			continue
		}
		return strings.TrimPrefix(rd.URI, "git+"), rd.Digest["gitCommit"]
	}
	return "", ""
}

// Validate checks the fields a verifier relies on.
func (s *Statement) Validate() error {
	if s.Type != StatementType {
		return refusef(ErrMalformed, "statement _type is %q, want %q", s.Type, StatementType)
	}
	if s.PredicateType != PredicateType {
		return refusef(ErrMalformed, "statement predicateType is %q, want %q", s.PredicateType, PredicateType)
	}
	if len(s.Subject) != 1 {
		return refusef(ErrMalformed, "statement has %d subjects, want exactly 1", len(s.Subject))
	}
	sub := s.Subject[0]
	if sub.Name == "" {
		return refusef(ErrMalformed, "statement subject has no name")
	}
	if d, ok := sub.Digest["sha256"]; !ok {
		return refusef(ErrMalformed, "statement subject %q has no sha256 digest", sub.Name)
	} else if !sha256Hex.MatchString(d) {
		return refusef(ErrMalformed, "statement subject %q: sha256 %q is not 64 lowercase hex digits", sub.Name, d)
	}
	bd := s.Predicate.BuildDefinition
	if bd.BuildType == "" {
		return refusef(ErrMalformed, "provenance has no buildDefinition.buildType")
	}
	if ep := bytes.TrimSpace(bd.ExternalParameters); len(ep) == 0 || ep[0] != '{' {
		return refusef(ErrMalformed, "provenance buildDefinition.externalParameters must be a JSON object")
	}
	if s.Predicate.RunDetails.Builder.ID == "" {
		return refusef(ErrMalformed, "provenance has no runDetails.builder.id")
	}
	return nil
}

// ParseStatement decodes an in-toto v1 statement with SLSA v1 provenance and
// checks its type, predicate type, and single sha256 subject. Unknown fields
// are ignored, as in-toto asks of consumers; duplicate keys are refused.
func ParseStatement(data []byte) (*Statement, error) {
	if err := checkJSONKeys(data); err != nil {
		return nil, refusef(ErrMalformed, "parse statement: %w", err)
	}
	var s Statement
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, refusef(ErrMalformed, "parse statement: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, withPrefix("parse statement", err)
	}
	return &s, nil
}

// Marshal encodes the statement as JSON, the payload of a DSSE envelope.
func (s *Statement) Marshal() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("marshal statement: %w", err)
	}
	return json.Marshal(s)
}

// DetectSource returns the origin URL (credentials stripped) and HEAD commit
// of the git work tree at dir. Either is "" when git, the repository or the
// remote is missing: provenance records what it can find.
func DetectSource(dir string) (repo, commit string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	git := func(args ...string) string {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(cmd.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_OPTIONAL_LOCKS=0")
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	repo = stripCredentials(git("remote", "get-url", "origin"))
	commit = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
	return repo, commit
}

// stripCredentials drops a user:token from an https remote, which must not
// end up in a signed, widely copied statement.
func stripCredentials(remote string) string {
	u, err := url.Parse(remote)
	if err != nil || u.Scheme == "" || u.Host == "" || u.User == nil {
		return remote
	}
	if _, hasPassword := u.User.Password(); hasPassword || u.Scheme == "https" || u.Scheme == "http" {
		u.User = nil
	}
	return u.String()
}
