package swarm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/internal/testnet"
)

const mdnsPeerEnv = "BALLENA_SWARM_MDNS_PEER"

// TestMDNS runs two nodes as two processes, each in its own network namespace
// on one bridge, like two machines on a LAN: one machine has one mDNS
// responder on port 5353 (two in one namespace would share that port and the
// kernel may hand one's answers to the other). Nothing else tells them of
// each other; mDNS must connect them. The traffic stays on the test's bridge.
//
// Both start together, so they find each other in the same mDNS exchange, as
// nodes booting together on a LAN do: this is the case where both used to
// dial at once and fail in a TCP simultaneous open (see mdnsYield).
func TestMDNS(t *testing.T) {
	if os.Getenv(mdnsPeerEnv) != "" {
		mdnsPeer(t)
		return
	}
	if testing.Short() {
		t.Skip("starts network namespaces")
	}
	nt := testnet.New(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	type seen struct{ self, other string }
	results := make(chan seen, 2)
	logs := make([]*syncBuffer, len(nt.Hosts))
	for i, h := range nt.Hosts {
		logs[i] = new(syncBuffer)
		lg := logs[i]
		cmd := h.Command(ctx, os.Args[0], "-test.run", "^TestMDNS$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), mdnsPeerEnv+"=1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdin, err := cmd.StdinPipe() // kept open: the peer stays up until the test ends
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
		go func() {
			var s seen
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lg.WriteString(sc.Text() + "\n")
				f := strings.Fields(sc.Text())
				if len(f) == 2 && f[0] == "self" {
					s.self = f[1]
				}
				if len(f) == 2 && f[0] == "connected" {
					s.other = f[1]
					break
				}
			}
			results <- s
			io.Copy(io.Discard, out)
		}()
	}
	dumpLogs := func() {
		for i, lg := range logs {
			t.Logf("host %d:\n%s", i, lg.String())
		}
	}
	var got []seen
	for range nt.Hosts {
		select {
		case s := <-results:
			got = append(got, s)
		case <-ctx.Done():
			dumpLogs()
			t.Fatal("mDNS did not connect the two hosts within 90s")
		}
	}
	if got[0].other != got[1].self || got[1].other != got[0].self {
		dumpLogs()
		t.Fatalf("mDNS did not connect the two hosts to each other: %+v", got)
	}
}

// mdnsPeer is one host of TestMDNS: it prints its ID, then the first peer
// mDNS connects it to, and stays up until the test closes its stdin, so the
// other side is not left talking to a host that went away.
func mdnsPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()
	key, err := LoadIdentity(t.TempDir() + "/" + KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(HostConfig{Key: key, Listen: []string{"/ip4/0.0.0.0/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	connected := make(chan peer.ID, 1)
	h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		select {
		case connected <- c.RemotePeer():
		default:
		}
	}})
	fmt.Printf("self %s\n", h.ID())
	// Every connect attempt, for the parent's failure message.
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := StartMDNS(ctx, h, log)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	select {
	case p := <-connected:
		fmt.Printf("connected %s\n", p)
	case <-ctx.Done():
		t.Fatal("no peer found by mDNS")
	}
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// syncBuffer is a peer's output so far, for the failure message.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b.WriteString(s)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
