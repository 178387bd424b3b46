package daemon

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/launcher"
	"ballena.dev/placement"
	"ballena.dev/placement/cellca"
	"ballena.dev/swarm"
)

// AgentConfig joins the node to a placement cell. The agent (launcher.Agent)
// registers the machine, heartbeats, watches its allocations and runs them
// through this node's swarm and launcher.
type AgentConfig struct {
	Server    string            // placement server URLs, comma-separated
	CA        string            // the cell CA (ca.pem) that signed the servers' certificates
	JoinToken string            // the cell's join token
	Labels    map[string]string // for constraints and spread, e.g. rack=r1
	// Capacity offered to tasks; a zero CPU or Memory means all cores, 90% of RAM.
	Capacity placement.Resources
}

// fetchTimeout bounds one fetch by the agent, so that it reports "nobody has
// it" and tries again later instead of waiting forever.
const fetchTimeout = 2 * time.Minute

func (d *Daemon) newAgent(ac AgentConfig) (*launcher.Agent, error) {
	key, err := NodeSigningKey(d.cfg.DataDir)
	if err != nil {
		return nil, err
	}
	var opts []placement.ClientOption
	if ac.CA != "" {
		pool, err := cellca.LoadPool(ac.CA)
		if err != nil {
			return nil, usageErrorf("node: --ca: %v", err)
		}
		opts = append(opts, placement.WithTLS(cellca.ClientConfig(pool)))
	}
	pc, err := placement.NewNodeClient(ac.Server, ac.JoinToken, key, opts...)
	if err != nil {
		return nil, usageErrorf("node: --server: %v", err)
	}
	capacity := ac.Capacity
	if capacity.CPU == 0 {
		capacity.CPU = int64(runtime.NumCPU()) * 1000
	}
	if capacity.Memory == 0 {
		capacity.Memory = memTotal() * 9 / 10
	}
	if capacity.PIDs == 0 {
		capacity.PIDs = 32768
	}
	fetch := func(ctx context.Context, ref artifact.Ref) error {
		if _, _, err := d.st.Release(ref); err == nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		defer cancel()
		_, err := d.node.Fetch(ctx, ref, nil)
		return err
	}
	return launcher.NewAgent(launcher.AgentConfig{
		Placement: pc, Fetch: fetch, Holdings: holdings(d.st), Releases: d.releaseReports, Addrs: swarm.FullAddrs(d.node.Host()),
		Labels: ac.Labels, Capacity: capacity, Logger: d.log,
	}), nil
}

// NodeSigningKey is the node's mesh identity as an ed25519 key: the same key
// signs its requests to the placement service, so one name means one machine.
func NodeSigningKey(dataDir string) (ed25519.PrivateKey, error) {
	sk, err := swarm.LoadIdentity(filepath.Join(dataDir, swarm.KeyFile))
	if err != nil {
		return nil, err
	}
	raw, err := sk.Raw()
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("node key: not an ed25519 private key")
	}
	return ed25519.PrivateKey(raw), nil
}

// holdings lists what the store holds, as the placement service's ranking wants it.
func holdings(st *artifact.Store) launcher.Holdings {
	return func() []string {
		rels, err := st.Releases()
		if err != nil {
			return nil
		}
		out := make([]string, 0, 2*len(rels))
		for _, r := range rels {
			out = append(out, r.Ref().String(), "sha256:"+r.Digest)
		}
		return out
	}
}

// memTotal reads MemTotal from /proc/meminfo, in bytes.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
