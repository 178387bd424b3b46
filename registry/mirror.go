package registry

import (
	"fmt"
	"strings"

	"ballena.dev/artifact"
)

// Mapping maps upstream references to release names in mirror mode: a
// repository whose full name (registry host, then path) starts with Upstream
// is the release NamePrefix followed by the rest of the name. With Upstream
// "registry.example.com/team/" and NamePrefix "", the image
// registry.example.com/team/api:1.4.0 is the release api@1.4.0.
type Mapping struct {
	Upstream   string
	NamePrefix string
}

// ParseMapping reads UPSTREAM/PREFIX=NAMEPREFIX, as --registry-map takes it.
func ParseMapping(s string) (Mapping, error) {
	up, prefix, ok := strings.Cut(s, "=")
	if !ok {
		return Mapping{}, fmt.Errorf("registry map %q: want UPSTREAM/PREFIX=NAMEPREFIX, e.g. registry.example.com/team/= (NAMEPREFIX may be empty)", s)
	}
	up = strings.TrimPrefix(strings.TrimPrefix(up, "https://"), "http://")
	host, _, _ := strings.Cut(up, "/")
	if host == "" || strings.ContainsAny(host, " \t@") {
		return Mapping{}, fmt.Errorf("registry map %q: the upstream must start with a registry host, e.g. registry.example.com/team/", s)
	}
	if !strings.Contains(up, "/") {
		up += "/" // a whole registry
	}
	if prefix != "" && !artifact.ValidName(prefix+"x") {
		return Mapping{}, fmt.Errorf("registry map %q: the name prefix %q must be lower-case letters, digits, '.', '-' or '_'", s, prefix)
	}
	return Mapping{Upstream: up, NamePrefix: prefix}, nil
}

func (m Mapping) String() string { return m.Upstream + "=" + m.NamePrefix }

// releaseName turns a requested repository into a release name. A request
// without ns whose repository is a valid release name is direct
// (127.0.0.1:5000/api:1.4.0). Otherwise it is a mirror request: containerd
// names the upstream host in ns; Docker's registry-mirrors only mirrors
// docker.io and sends no ns. The longest matching mapping wins.
func (s *Server) releaseName(repo, ns string) (string, bool) {
	if ns == "" {
		if artifact.ValidName(repo) {
			return repo, true
		}
		ns = "docker.io"
	}
	full := ns + "/" + repo
	best := -1
	for i, m := range s.cfg.Map {
		if strings.HasPrefix(full, m.Upstream) && (best < 0 || len(m.Upstream) > len(s.cfg.Map[best].Upstream)) {
			best = i
		}
	}
	if best < 0 {
		return "", false
	}
	m := s.cfg.Map[best]
	name := m.NamePrefix + strings.TrimPrefix(full, m.Upstream)
	return name, artifact.ValidName(name)
}
