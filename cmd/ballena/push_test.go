package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/internal/poll"
	"ballena.dev/swarm"
)

// A CI runner that is no fleet node pushes a co-signed release to a 4-node
// fleet (real libp2p and BitTorrent on loopback) and exits 0 once 3 nodes
// proved they hold it; the fleet holds it verified. A release the fleet's
// threshold-2 policy refuses, or more replicas than the fleet has, end in
// exit 5 with the count reached. For measurements, BALLENA_PUSH_MIB sets the
// artifact's size (default 16) and BALLENA_PUSH_LINK the links' cap (default 100MiB; none: unlimited).
func TestPublishPushToFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs several node processes")
	}
	dir := t.TempDir()
	key1, key2, trust := twoSigners(t, dir)
	psk := filepath.Join(dir, "fleet.psk")
	if code, _, msg := run(t, dir, "node", "psk", "generate", psk); code != 0 {
		t.Fatalf("psk generate: %d %s", code, msg)
	}
	// Every link is capped, the runner's too, as on a network: on unlimited
	// loopback the runner would serve as fast as the fleet nodes serve each other.
	linkCap := "100MiB"
	if s := os.Getenv("BALLENA_PUSH_LINK"); s != "" {
		linkCap = s
	}
	common := []string{"--psk", psk, "--trust", trust, "--auto-fetch", "api*"}
	runnerCap := []string{}
	if linkCap != "none" {
		common = append(common, "--upload-limit", linkCap, "--download-limit", linkCap)
		runnerCap = []string{"--upload-limit", linkCap}
	}
	fleet := []*daemonProc{startNode(t, "a", common...)}
	for _, name := range []string{"b", "c", "d"} {
		fleet = append(fleet, startNode(t, name, append(common, "--bootstrap", fleet[0].addr)...))
	}
	poll.Until(t, 30*time.Second, "a to see b, c and d", func() bool { return len(fleet[0].status(t).Peers) == 3 })
	ids := map[string]*daemonProc{}
	for _, n := range fleet {
		ids[n.status(t).ID] = n
	}

	size := int64(16)
	if s := os.Getenv("BALLENA_PUSH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("BALLENA_PUSH_MIB=%q: %v", s, err)
		}
		size = int64(n)
	}
	size <<= 20
	api := paddedWhale(t, filepath.Join(dir, "api"), size)
	env := api + ".dsse.json"
	if code, _, msg := run(t, dir, "sign", "--key", key1, "--name", "api", "--version", "1.4.0", api); code != 0 {
		t.Fatalf("sign: %d %s", code, msg)
	}
	if code, _, msg := run(t, dir, "sign", "--key", key2, "--envelope", env, api); code != 0 {
		t.Fatalf("co-sign: %d %s", code, msg)
	}

	// The runner has its own empty data dir and no key.
	runner := filepath.Join(dir, "runner")
	push := func(args ...string) (int, string, string, time.Duration) {
		cmd := exec.Command(ballenaBinary(t), append([]string{"--data", runner, "publish", "--bootstrap", fleet[0].addr, "--psk", psk}, append(runnerCap, args...)...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), stdout.String(), stderr.String(), took
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, stdout.String(), stderr.String(), took
	}

	identity := filepath.Join(dir, "runner.p2pkey") // made by the push, kept for the next
	code, out, errOut, took := push("--envelope", env, "--trust", trust, "--wait-replicas", "3", "--timeout", "120s", "--json",
		"--identity", identity, api)
	if code != 0 {
		t.Fatalf("push: exit %d\n%s\n%s", code, out, errOut)
	}
	var res pushResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("publish --json: %v: %s", err, out)
	}
	if len(res.Replicas) < 3 || res.Release.Ref().String() != "api@1.4.0" {
		t.Fatalf("push reported %d replicas of %s", len(res.Replicas), res.Release.Ref())
	}
	if st, err := os.Stat(identity); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("--identity: %v, want a 0600 key file", err)
	}
	key, err := swarm.LoadIdentity(identity)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := peer.IDFromPrivateKey(key); id.String() != res.PeerID {
		t.Errorf("the push ran as %s, not as --identity's %s", res.PeerID, id)
	}
	for _, r := range res.Replicas {
		if err := r.Verify(); err != nil {
			t.Error(err)
		}
		if ids[r.Holder.String()] == nil || r.Asker.String() != res.PeerID || r.Digest != res.Release.Digest {
			t.Errorf("receipt from %s to %s for %s: not a fleet node, or not this push", r.Holder, r.Asker, r.Digest)
		}
	}
	// Not a terminal: plain progress lines.
	mustContain(t, errOut, "api@1.4.0: ", "replicas confirmed, sent")
	t.Logf("runner stderr:\n%s", errOut)
	t.Logf("push: %s to a 4-node loopback fleet, links capped at %s, --wait-replicas 3: exit 0 after %s; the runner sent %s (%.2f copies)",
		mib(size), linkCap, took.Round(10*time.Millisecond), mib(res.BytesSent), copies(res.BytesSent, size))
	if res.BytesSent >= 3*size {
		t.Errorf("the runner sent %s, a copy per replica: the fleet should spread the release itself", mib(res.BytesSent))
	}
	// The confirmed nodes hold the release, verified against the fleet's policy.
	for _, r := range res.Replicas {
		n := ids[r.Holder.String()]
		if code, out, msg := n.cli("verify", "--trust", trust, "api@1.4.0"); code != 0 || !strings.Contains(out, "verified api@1.4.0") {
			t.Errorf("verify on %s: %d %s %s", r.Holder, code, out, msg)
		}
		if got := sha256Of(t, filepath.Join(n.data, "blobs", "sha256", res.Release.Digest)); got != res.Release.Digest {
			t.Errorf("%s holds a blob hashing to %s", r.Holder, got)
		}
	}
	if _, err := os.Stat(runner); !os.IsNotExist(err) {
		t.Errorf("the push left state in the runner's data dir: %v", err)
	}

	// Every fleet node gets it (the fourth from its peers); then asking for
	// five replicas runs out of time, saying how many it reached.
	poll.Until(t, 60*time.Second, "the whole fleet to hold api@1.4.0", func() bool {
		return !slices.ContainsFunc(fleet, func(n *daemonProc) bool { return !n.holds(t, "api@1.4.0") })
	})
	// In process from here, so that the race detector sees the push's goroutines.
	code, _, errOut = run(t, runner, "publish", "--bootstrap", fleet[0].addr, "--psk", psk,
		"--envelope", env, "--wait-replicas", "5", "--timeout", "10s", api)
	if code != exitUnavailable || !strings.Contains(errOut, "4 of 5 replicas confirmed before the timeout") {
		t.Errorf("push asking for 5 replicas of 4 nodes: exit %d, want %d with the count: %s", code, exitUnavailable, errOut)
	}

	// One signature under the fleet's threshold-2 policy: every node refuses
	// the announcement, so no replica; the runner was not told --trust.
	v2 := paddedWhale(t, filepath.Join(dir, "api2"), 1<<20)
	if code, _, msg := run(t, dir, "sign", "--key", key1, "--name", "api", "--version", "1.5.0", v2); code != 0 {
		t.Fatalf("sign: %d %s", code, msg)
	}
	code, _, errOut = run(t, runner, "publish", "--bootstrap", fleet[0].addr, "--psk", psk,
		"--envelope", v2+".dsse.json", "--wait-replicas", "1", "--timeout", "10s", v2)
	if code != exitUnavailable || !strings.Contains(errOut, "0 of 1 replicas confirmed") {
		t.Errorf("push of a release the fleet refuses: exit %d, want %d with the count: %s", code, exitUnavailable, errOut)
	}
	for _, n := range fleet {
		if n.holds(t, "api@1.5.0") {
			t.Errorf("a fleet node took a release signed by one key of two")
		}
	}
	for _, n := range fleet {
		if err := n.stop(); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
	}
}

// paddedWhale is the sample service padded with random bytes to size: a valid
// static ELF with a digest of its own.
func paddedWhale(t *testing.T, path string, size int64) string {
	t.Helper()
	b, err := os.ReadFile(sampleWhale(t))
	if err != nil {
		t.Fatal(err)
	}
	pad := make([]byte, max(size-int64(len(b)), 64<<10))
	_, _ = rand.Read(pad)
	if err := os.WriteFile(path, append(b, pad...), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}
