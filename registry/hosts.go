package registry

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"ballena.dev/internal/atomicfile"
)

// DefaultHostsDir is the hosts directory containerd (and the kubelet through
// it) reads when its CRI plugin's registry.config_path names it.
const DefaultHostsDir = "/etc/containerd/certs.d"

// ContainerdHosts is the hosts.toml that makes containerd try the node's
// registry at mirror first for upstream's images ("pull" and "resolve" only,
// as Spegel writes it), then upstream itself: whatever the node does not
// serve answers 404 and containerd falls back. An empty upstream is the
// `_default` directory, which containerd (1.6.20 and later, at least)
// applies to every registry without a directory of its own.
func ContainerdHosts(upstream, mirror string) []byte {
	var b strings.Builder
	b.WriteString("# Written by `ballena registry config containerd`: pull through the Ballena node's\n")
	b.WriteString("# registry first; it serves only releases that verify against the node's trust policy\n")
	b.WriteString("# and answers 404 for everything else, so containerd falls back to the server below.\n")
	if upstream != "" {
		server := "https://" + upstream
		if upstream == "docker.io" {
			server = "https://registry-1.docker.io"
		}
		fmt.Fprintf(&b, "server = %s\n", strconv.Quote(server))
	}
	fmt.Fprintf(&b, "\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", strconv.Quote(mirror))
	return []byte(b.String())
}

// CheckMirrorURL checks the node registry's address as containerd will use it.
func CheckMirrorURL(mirror string) error {
	u, err := url.Parse(mirror)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("registry URL %q: want http://HOST:PORT, e.g. http://127.0.0.1:5000 (the node's --registry-listen)", mirror)
	}
	return nil
}

// CheckUpstream checks an upstream registry host as containerd names its
// directory: HOST or HOST:PORT, no scheme or path.
func CheckUpstream(host string) error {
	if host == "" || strings.ContainsAny(host, "/\\ \t") || host == "." || host == ".." || strings.HasPrefix(host, "_") {
		return fmt.Errorf("registry %q: want a registry host such as registry.example.com or docker.io (no scheme, no path)", host)
	}
	return nil
}

// WriteContainerdConfig writes DIR/<upstream>/hosts.toml for each upstream
// (DIR/_default/hosts.toml when there is none) and returns the files written.
// Each file is written whole or not at all.
func WriteContainerdConfig(dir string, upstreams []string, mirror string) ([]string, error) {
	if err := CheckMirrorURL(mirror); err != nil {
		return nil, err
	}
	mirror = strings.TrimSuffix(mirror, "/")
	for _, up := range upstreams {
		if err := CheckUpstream(up); err != nil {
			return nil, err
		}
	}
	if len(upstreams) == 0 {
		upstreams = []string{""}
	}
	var written []string
	for _, up := range upstreams {
		sub := up
		if sub == "" {
			sub = "_default"
		}
		d := filepath.Join(dir, sub)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return written, fmt.Errorf("hosts directory: %w", err)
		}
		p := filepath.Join(d, "hosts.toml")
		if err := atomicfile.Write(p, ContainerdHosts(up, mirror), 0o644); err != nil {
			return written, fmt.Errorf("write %s: %w", p, err)
		}
		written = append(written, p)
	}
	return written, nil
}
