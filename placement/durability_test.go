package placement

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const helperEnv = "BALLENA_PLACEMENT_TEST_SERVER_DIR"

// TestHelperServerProcess is not a test: re-executed by TestKillNineLosesNothing,
// it runs a placement server on the given dir until it is killed.
func TestHelperServerProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestKillNineLosesNothing")
	}
	s, err := Open(Options{Dir: dir, AdminToken: testAdmin, JoinToken: testJoin, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("LISTEN", ln.Addr().String())
	http.Serve(ln, s.Handler())
	os.Exit(0)
}

// startChild runs the server in a child process and returns its URL.
func startChild(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperServerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "LISTEN ") || strings.HasPrefix(l, "ERROR ") {
				lines <- l
				return
			}
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok || strings.HasPrefix(l, "ERROR ") {
			t.Fatalf("child server did not start: %q", l)
		}
		return cmd, "http://" + strings.TrimPrefix(l, "LISTEN ")
	case <-time.After(60 * time.Second):
		t.Fatal("child server did not start within 60s")
	}
	return nil, ""
}

func TestKillNineLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	dir := t.TempDir()
	ctx := context.Background()
	cmd, url := startChild(t, dir)
	admin, _ := NewClient(url, testAdmin)
	_, key, _ := ed25519.GenerateKey(nil)
	node, _ := NewNodeClient(url, testJoin, key)
	if _, _, err := node.Register(ctx, NodeRegistration{Labels: map[string]string{"rack": "r1"},
		Capacity: Resources{CPU: 64000, Memory: 256 * gib}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SubmitJob(ctx, job("api", 3, 500, 256, BandProd)); err != nil {
		t.Fatal(err)
	}
	l, err := node.WatchAllocations(ctx, 0, 0)
	if err != nil || len(l.Allocations) != 3 {
		t.Fatalf("allocations %v, %v", l, err)
	}
	var hb Heartbeat
	for _, a := range l.Allocations {
		hb.Tasks = append(hb.Tasks, TaskState{AllocID: a.ID, State: ClientRunning})
	}
	if _, err := node.Heartbeat(ctx, hb); err != nil {
		t.Fatal(err)
	}
	// A burst of acknowledged writes, then kill -9 right after the last answer.
	for i := range 20 {
		if _, err := admin.SubmitJob(ctx, job(fmt.Sprintf("batch-%02d", i), 2, 100, 64, BandBatch)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Drain(ctx, node.NodeID(), true); err != nil {
		t.Fatal(err)
	}
	before, err := admin.JobStatus(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no graceful shutdown
		t.Fatal(err)
	}
	cmd.Wait()

	_, url = startChild(t, dir)
	admin, _ = NewClient(url, testAdmin)
	after, err := admin.JobStatus(ctx, "api")
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	for i, task := range before.Tasks {
		got := after.Tasks[i]
		if got.AllocID != task.AllocID || got.NodeID != task.NodeID || got.ClientStatus != task.ClientStatus {
			t.Errorf("task %d before kill %+v, after %+v", i, task, got)
		}
	}
	jobs, err := admin.Jobs(ctx)
	if err != nil || len(jobs) != 21 {
		t.Fatalf("after restart %d jobs (%v), want 21", len(jobs), err)
	}
	nodes, err := admin.Nodes(ctx)
	if err != nil || len(nodes) != 1 || !nodes[0].Drain || nodes[0].Labels["rack"] != "r1" {
		t.Fatalf("after restart nodes %+v (%v)", nodes, err)
	}
	// The node's signed requests still work: its key binding survived.
	node2, _ := NewNodeClient(url, testJoin, key)
	if l, err := node2.WatchAllocations(ctx, 0, 0); err != nil || len(l.Allocations) == 0 {
		t.Fatalf("node after restart: %v, %v", l, err)
	}
}
