package swarm

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

const mdnsNetnsEnv = "BALLENA_SWARM_MDNS_NETNS"

// TestMDNS runs itself again in a fresh network namespace whose loopback
// carries multicast, so the discovery traffic stays off every real network.
func TestMDNS(t *testing.T) {
	if os.Getenv(mdnsNetnsEnv) == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root for a network namespace")
		}
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("needs unshare (util-linux)")
		}
		if _, err := exec.LookPath("ip"); err != nil {
			t.Skip("needs ip (iproute2)")
		}
		cmd := exec.Command("unshare", "--net", "sh", "-c",
			`ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo && exec "$0" -test.run '^TestMDNS$' -test.count=1`,
			os.Args[0])
		cmd.Env = append(os.Environ(), mdnsNetnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mdns test in a network namespace: %v\n%s", err, out)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := testHost(t, nil), testHost(t, nil)
	ma, err := StartMDNS(ctx, a, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ma.Close()
	mb, err := StartMDNS(ctx, b, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	waitFor(t, 25*time.Second, "mDNS to connect the two hosts", func() bool {
		return len(a.Network().ConnsToPeer(b.ID())) > 0
	})
}
