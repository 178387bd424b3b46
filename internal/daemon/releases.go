package daemon

import (
	"slices"
	"sync"

	"ballena.dev/placement"
	"ballena.dev/signing"
)

// releaseReports describes, for the placement service's web UI, every release
// this node holds (with the provenance its verified envelope carries) and every
// download in progress. Provenance is read once per release.
func (d *Daemon) releaseReports() []placement.ReleaseReport {
	rels, err := d.st.Releases()
	if err != nil {
		d.log.Warn("list releases for the heartbeat", "err", err)
		return nil
	}
	out := make([]placement.ReleaseReport, 0, len(rels))
	byDigest := map[string]int{}
	for _, rel := range rels {
		key := rel.Ref().String() + " " + rel.Digest
		rep, ok := provenanceCache.get(key)
		if !ok {
			rep = placement.ReleaseReport{Name: rel.Name, Version: rel.Version, Digest: rel.Digest, Size: rel.Size,
				Kind: string(rel.Kind), PublishedAt: rel.PublishedAt}
			if _, env, err := d.st.Release(rel.Ref()); err == nil && env != nil {
				rep = withProvenance(rep, env)
			}
			provenanceCache.put(key, rep)
		}
		if d.st.HasBlob(rel.Digest) {
			rep.BytesHave = rep.Size
		}
		byDigest[rel.Digest] = len(out)
		out = append(out, rep)
	}
	for _, tr := range d.node.Engine().Transfers() {
		if i, ok := byDigest[tr.Digest]; ok {
			out[i].Seeding, out[i].Peers = tr.Seeding, tr.Peers
			if !tr.Seeding && tr.BytesHave < tr.BytesTotal {
				out[i].BytesHave = tr.BytesHave
			}
			continue
		}
		out = append(out, placement.ReleaseReport{Name: tr.Name, Digest: tr.Digest, Size: tr.BytesTotal,
			BytesHave: tr.BytesHave, Seeding: tr.Seeding, Peers: tr.Peers})
	}
	return out
}

// withProvenance adds what the signed statement says: signers, builder, source.
func withProvenance(rep placement.ReleaseReport, env *signing.Envelope) placement.ReleaseReport {
	for _, sig := range env.Signatures {
		if !slices.Contains(rep.Signers, sig.KeyID) {
			rep.Signers = append(rep.Signers, sig.KeyID)
		}
	}
	st, err := signing.ParseStatement(env.Payload)
	if err != nil {
		return rep
	}
	rep.Builder = st.Predicate.RunDetails.Builder.ID
	rep.SourceRepo, rep.SourceCommit = st.Source()
	return rep
}

// provenanceCache keeps what envelopes said, by ref and digest: a stored
// release's envelope never changes.
var provenanceCache = &repCache{m: map[string]placement.ReleaseReport{}}

type repCache struct {
	mu sync.Mutex
	m  map[string]placement.ReleaseReport
}

func (c *repCache) get(digest string) (placement.ReleaseReport, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[digest]
	return r, ok
}

func (c *repCache) put(digest string, r placement.ReleaseReport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) > 4096 {
		clear(c.m)
	}
	c.m[digest] = r
}
