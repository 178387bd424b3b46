package placement

import (
	"slices"
	"sync"
	"time"
)

// What nodes say, with each heartbeat, about the releases they hold or fetch:
// provenance and transfer progress for the web UI's release pages. It is kept
// in the leader's memory only (heartbeats go to the leader and add no Raft
// entries): a new leader knows it again one heartbeat later. It is shown as
// reported by each node, which verified the release against its own trust
// policy before it stored it; the server checks nothing of it.

// ReleaseReport is one release a node holds, or one it is fetching.
type ReleaseReport struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"` // empty for a fetch whose release record is not stored yet
	Digest  string `json:"digest"`            // hex sha256 of the blob
	Size    int64  `json:"size"`
	Kind    string `json:"kind,omitempty"`
	// Signers are the key IDs of the release's signatures.
	Signers      []string  `json:"signers,omitempty"`
	Builder      string    `json:"builder,omitempty"`
	SourceRepo   string    `json:"source_repo,omitempty"`
	SourceCommit string    `json:"source_commit,omitempty"`
	PublishedAt  time.Time `json:"published_at,omitzero"`
	// BytesHave is how much of the blob the node holds verified: Size once it
	// holds it, less while a transfer is in progress.
	BytesHave int64 `json:"bytes_have"`
	Seeding   bool  `json:"seeding,omitempty"`
	Peers     int   `json:"peers,omitempty"`
}

// Fetching reports whether the node is still downloading the release.
func (r ReleaseReport) Fetching() bool { return r.BytesHave < r.Size }

// Limits on what one heartbeat may report.
const (
	maxReportedReleases = 256
	maxReportString     = 512
	maxReportSigners    = 16
)

func (r ReleaseReport) valid() bool {
	if len(r.Digest) != 64 || r.Size < 0 || r.BytesHave < 0 || len(r.Signers) > maxReportSigners {
		return false
	}
	for _, s := range append([]string{r.Name, r.Version, r.Kind, r.Builder, r.SourceRepo, r.SourceCommit}, r.Signers...) {
		if len(s) > maxReportString {
			return false
		}
	}
	return true
}

type nodeReport struct {
	at       time.Time
	releases []ReleaseReport
}

type fleetReports struct {
	mu     sync.Mutex
	byNode map[string]nodeReport
}

// record replaces a node's reports; nil (an older node) leaves them as they are.
func (f *fleetReports) record(node string, rs []ReleaseReport, now time.Time) {
	if rs == nil {
		return
	}
	keep := make([]ReleaseReport, 0, min(len(rs), maxReportedReleases))
	for _, r := range rs {
		if len(keep) == maxReportedReleases {
			break
		}
		if r.valid() {
			keep = append(keep, r)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byNode == nil {
		f.byNode = map[string]nodeReport{}
	}
	f.byNode[node] = nodeReport{at: now, releases: keep}
}

// node returns what a node last reported, and when.
func (f *fleetReports) node(id string) ([]ReleaseReport, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.byNode[id]
	return slices.Clone(r.releases), r.at
}

// all returns every node's reports.
func (f *fleetReports) all() map[string][]ReleaseReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]ReleaseReport, len(f.byNode))
	for id, r := range f.byNode {
		out[id] = slices.Clone(r.releases)
	}
	return out
}
