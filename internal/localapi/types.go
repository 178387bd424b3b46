package localapi

import (
	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// The bodies the daemon's local API takes and returns, shared by the daemon that
// serves them and the CLI that sends them. Task bodies are launcher's own types.

// PublishRequest asks a daemon to import a file the CLI has already signed.
type PublishRequest struct {
	Path     string            `json:"path"`
	Envelope *signing.Envelope `json:"envelope"`
}

// ReleaseWithEnvelope is a stored release and the envelope that signs it.
type ReleaseWithEnvelope struct {
	Release  artifact.Release  `json:"release"`
	Envelope *signing.Envelope `json:"envelope"`
}

// VerifyRequest asks a daemon to verify a stored release against a policy file.
type VerifyRequest struct {
	Trust         string `json:"trust"`
	AllowRollback bool   `json:"allowRollback"`
}

// VerifyResult is a release that verified and the keys that counted toward it.
type VerifyResult struct {
	Release artifact.Release `json:"release"`
	KeyIDs  []string         `json:"keyIds"`
}

// FetchRequest asks the daemon to fetch a release from the mesh.
type FetchRequest struct {
	Ref     string  `json:"ref"`
	Timeout float64 `json:"timeoutSeconds"` // 0: the daemon's default
}

// FetchEvent is one JSON line of the fetch stream: progress, then either the
// release or an error.
type FetchEvent struct {
	Progress *FetchProgress    `json:"progress,omitempty"`
	Release  *artifact.Release `json:"release,omitempty"`
	Error    *Error            `json:"error,omitempty"`
}

// FetchProgress is how far a fetch has come.
type FetchProgress struct {
	Have  int64   `json:"have"`
	Total int64   `json:"total"`
	Peers int     `json:"peers"`
	Rate  float64 `json:"rate"` // bytes per second
}

// TorrentAnswer is a release's standard .torrent and magnet link.
type TorrentAnswer struct {
	Torrent []byte `json:"torrent"` // bencoded metainfo
	Magnet  string `json:"magnet"`
}
