package swarm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"
)

// ErrOpenMesh refuses a node that would listen beyond this machine with no
// fleet key: anyone who can reach it could list and download every release.
var ErrOpenMesh = errors.New("open mesh refused")

// CheckClosedMesh refuses listen addresses reachable from other machines when
// there is no PSK, unless open says the operator accepts an open mesh. An empty
// listen list means the default, 0.0.0.0.
func CheckClosedMesh(listen []string, psk pnet.PSK, open bool) error {
	if psk != nil || open {
		return nil
	}
	if len(listen) == 0 {
		listen = []string{defaultListen}
	}
	for _, s := range listen {
		if !loopbackAddr(s) {
			return fmt.Errorf("%w: --listen %s is reachable from other machines and the mesh has no key; "+
				"give every node --psk FILE (ballena node psk generate FILE), "+
				"or pass --open-mesh to let anyone who can connect list and download every release", ErrOpenMesh, s)
		}
	}
	return nil
}

// loopbackAddr says whether multiaddr s listens on a loopback IP only.
func loopbackAddr(s string) bool {
	m, err := ma.NewMultiaddr(s)
	if err != nil {
		return false
	}
	for _, p := range []int{ma.P_IP4, ma.P_IP6} {
		if v, err := m.ValueForProtocol(p); err == nil {
			ip := net.ParseIP(v)
			return ip != nil && ip.IsLoopback()
		}
	}
	return false // dns names and the like: cannot tell, so not loopback
}

// Gate is the host's libp2p connection gater. With an allowlist it refuses
// every connection, inbound or outbound, to a peer that is not listed; without
// one it lets everything through. It counts what it refused.
type Gate struct {
	path string

	mu      sync.Mutex
	self    peer.ID
	allowed map[peer.ID]bool // nil: no allowlist
	refused map[string]int64 // by reason
}

// NewGate reads the allowlist at path (one peer ID per line; blank lines and
// # comments are skipped). An empty path gives a gate with no allowlist.
func NewGate(path string) (*Gate, error) {
	g := &Gate{path: path, refused: make(map[string]int64)}
	if path == "" {
		return g, nil
	}
	if err := g.Reload(); err != nil {
		return nil, err
	}
	return g, nil
}

// Reload re-reads the allowlist file. On error the old list stays.
func (g *Gate) Reload() error {
	if g.path == "" {
		return nil
	}
	allowed, err := readAllowlist(g.path)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.allowed = allowed
	g.mu.Unlock()
	return nil
}

func readAllowlist(path string) (map[peer.ID]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("allow-peers: %w", err)
	}
	allowed := make(map[peer.ID]bool)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s, _, _ := strings.Cut(sc.Text(), "#")
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		id, err := peer.Decode(s)
		if err != nil {
			return nil, fmt.Errorf("allow-peers %s:%d: %q is not a peer ID: %w", path, line, s, err)
		}
		allowed[id] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("allow-peers %s: %w", path, err)
	}
	return allowed, nil
}

// setSelf lets the node through its own gate.
func (g *Gate) setSelf(id peer.ID) {
	g.mu.Lock()
	g.self = id
	g.mu.Unlock()
}

// allow says whether p may connect, counting a refusal under reason.
func (g *Gate) allow(p peer.ID, reason string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.allowed == nil || g.allowed[p] || p == g.self {
		return true
	}
	g.refused[reason]++
	return false
}

// Refusals for inbound and outbound connections to peers not on the allowlist.
const (
	RefusedInbound  = "inbound from a peer not on the allowlist"
	RefusedOutbound = "outbound to a peer not on the allowlist"
)

// GateStatus is what the gate reports in Status.
type GateStatus struct {
	Allowlist string           `json:"allowlist,omitempty"` // the file, "" for none
	Allowed   int              `json:"allowed"`             // peers on it
	Refused   map[string]int64 `json:"refused,omitempty"`   // connections refused, by reason
}

// Status reports the allowlist and the refusals so far.
func (g *Gate) Status() GateStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	return GateStatus{Allowlist: g.path, Allowed: len(g.allowed), Refused: maps.Clone(g.refused)}
}

// Allowed lists the peers on the allowlist, nil without one.
func (g *Gate) Allowed() []peer.ID {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.allowed == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(g.allowed))
}

// InterceptPeerDial refuses dials to peers not on the allowlist.
func (g *Gate) InterceptPeerDial(p peer.ID) bool { return g.allow(p, RefusedOutbound) }

// InterceptAddrDial allows every address of an allowed peer.
func (g *Gate) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }

// InterceptAccept lets the handshake run: the peer's identity is known only after it.
func (g *Gate) InterceptAccept(network.ConnMultiaddrs) bool { return true }

// InterceptSecured refuses an authenticated connection, in either direction, with
// a peer not on the allowlist.
func (g *Gate) InterceptSecured(dir network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	reason := RefusedInbound
	if dir == network.DirOutbound {
		reason = RefusedOutbound
	}
	return g.allow(p, reason)
}

// InterceptUpgraded allows every connection that got this far.
func (g *Gate) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
