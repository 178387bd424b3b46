// Package signing provides Ballena's trust primitives: ed25519 publisher keys,
// DSSE envelopes carrying in-toto statements with SLSA provenance, the local
// trust policy, and rollback protection.
package signing

import (
	"crypto/ed25519"
	"encoding/json"
	"time"
)

// PayloadType is the DSSE payload type of every envelope Ballena signs.
const PayloadType = "application/vnd.in-toto+json"

// StatementType and PredicateType identify an in-toto v1 statement with SLSA v1 provenance.
const (
	StatementType = "https://in-toto.io/Statement/v1"
	PredicateType = "https://slsa.dev/provenance/v1"
)

// Envelope is a DSSE envelope (https://github.com/secure-systems-lab/dsse).
// Payload is raw bytes; JSON encodes it as standard base64, as the spec requires.
type Envelope struct {
	Payload     []byte      `json:"payload"`
	PayloadType string      `json:"payloadType"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one DSSE signature; Sig is base64 in JSON.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"`
}

// Statement is an in-toto Statement v1 whose predicate is SLSA provenance v1.
type Statement struct {
	Type          string     `json:"_type"`
	Subject       []Subject  `json:"subject"`
	PredicateType string     `json:"predicateType"`
	Predicate     Provenance `json:"predicate"`
}

// Subject names one signed artifact: Name is "name@version", Digest["sha256"] its hex digest.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// Provenance is the SLSA v1 provenance predicate.
type Provenance struct {
	BuildDefinition BuildDefinition `json:"buildDefinition"`
	RunDetails      RunDetails      `json:"runDetails"`
}

// BuildDefinition says what was built from what. ExternalParameters carries the
// Ballena release record (artifact.Release) so the signature covers it.
type BuildDefinition struct {
	BuildType            string               `json:"buildType"`
	ExternalParameters   json.RawMessage      `json:"externalParameters"`
	InternalParameters   json.RawMessage      `json:"internalParameters,omitempty"`
	ResolvedDependencies []ResourceDescriptor `json:"resolvedDependencies,omitempty"`
}

// ResourceDescriptor is an in-toto ResourceDescriptor (source repo and commit, for instance).
type ResourceDescriptor struct {
	URI    string            `json:"uri,omitempty"`
	Digest map[string]string `json:"digest,omitempty"`
	Name   string            `json:"name,omitempty"`
}

// RunDetails says who built it and when.
type RunDetails struct {
	Builder  Builder       `json:"builder"`
	Metadata BuildMetadata `json:"metadata"`
}

// Builder identifies the build platform.
type Builder struct {
	ID string `json:"id"`
}

// BuildMetadata carries the invocation ID and start and finish times.
type BuildMetadata struct {
	InvocationID string    `json:"invocationId,omitempty"`
	StartedOn    time.Time `json:"startedOn"`
	FinishedOn   time.Time `json:"finishedOn"`
}

// Verified is the outcome of a successful policy verification.
type Verified struct {
	Statement *Statement
	KeyIDs    []string // distinct trusted keys whose signatures counted, sorted
}

// RollbackState remembers the highest version verified per artifact name.
// The artifact store implements it on badger; it is defined here, where it is consumed.
type RollbackState interface {
	HighestVersion(name string) (version string, ok bool, err error)
	RecordVersion(name, version string) error
}

var _ = ed25519.PublicKeySize
