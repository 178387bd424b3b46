package placement_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"sort"
	"time"

	"ballena.dev/placement"
)

// A machine joins a cell and runs what it is given: register, watch its
// allocations, report each one's state. Here the cell is a cell of one on
// loopback; a launcher does the same against a cell's server list and CA.
func ExampleNewNodeClient() {
	dir, err := os.MkdirTemp("", "placement-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := placement.Open(placement.Options{Dir: dir, AdminToken: "ADMIN-TOKEN", JoinToken: "JOIN-TOKEN",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	_, nodeKey, _ := ed25519.GenerateKey(nil) // a node uses the key in its data dir
	cl, err := placement.NewNodeClient(hs.URL, "JOIN-TOKEN", nodeKey)
	if err != nil {
		log.Fatal(err)
	}
	if _, _, err := cl.Register(ctx, placement.NodeRegistration{
		Labels:   map[string]string{"rack": "r12"},
		Capacity: placement.Resources{CPU: 16000, Memory: 64 << 30, PIDs: 32768},
	}); err != nil {
		log.Fatal(err)
	}

	// An admin runs a job of two tasks.
	admin, err := placement.NewClient(hs.URL, "ADMIN-TOKEN")
	if err != nil {
		log.Fatal(err)
	}
	job, err := placement.ParseJob("api.yaml", []byte("name: api\nartifact: api@1.4.0\ncount: 2\nresources: {cpu: 500m, memory: 256MiB}\n"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := admin.SubmitJob(ctx, job); err != nil {
		log.Fatal(err)
	}

	// The machine sees them, starts them, and says so.
	l, err := cl.WatchAllocations(ctx, 0, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	sort.Slice(l.Allocations, func(i, j int) bool { return l.Allocations[i].TaskIndex < l.Allocations[j].TaskIndex })
	for _, a := range l.Allocations {
		fmt.Printf("%s[%d] %s %s %s\n", a.Job, a.TaskIndex, a.Artifact, a.Resources, a.DesiredStatus)
		if err := cl.ReportTaskState(ctx, placement.TaskState{AllocID: a.ID, State: placement.ClientRunning}); err != nil {
			log.Fatal(err)
		}
	}
	st, err := admin.JobStatus(ctx, "api")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("running:", st.Summary["running"])
	// Output:
	// api[0] api@1.4.0 cpu 500m, memory 256MiB run
	// api[1] api@1.4.0 cpu 500m, memory 256MiB run
	// running: 2
}
