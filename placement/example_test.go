package placement_test

import (
	"context"
	"crypto/ed25519"
	"log"
	"time"

	"ballena.dev/placement"
)

// A launcher's loop: register, then watch allocations and heartbeat.
func ExampleNewNodeClient() {
	var nodeKey ed25519.PrivateKey // the node's key from its data dir
	cl, err := placement.NewNodeClient("http://127.0.0.1:7480", "JOIN-TOKEN", nodeKey)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	reg, kill, err := cl.Register(ctx, placement.NodeRegistration{
		Addrs:     []string{"/ip4/10.0.0.5/tcp/7400"},
		Labels:    map[string]string{"rack": "r12", "zone": "eu-1"},
		Capacity:  placement.Resources{CPU: 16000, Memory: 64 << 30, PIDs: 32768},
		Artifacts: []string{"api@1.4.0", "sha256:2c26b46b..."},
	})
	if err != nil {
		log.Fatal(err)
	}
	_ = kill // tasks this machine still runs that it must stop
	var index uint64
	for {
		l, err := cl.WatchAllocations(ctx, index, 30*time.Second)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		index = l.Index
		for _, a := range l.Allocations {
			switch a.DesiredStatus {
			case placement.DesiredRun:
				// fetch a.Artifact, verify, start with a.Resources, a.Args, a.Env; then:
				cl.ReportTaskState(ctx, placement.TaskState{AllocID: a.ID, State: placement.ClientRunning})
			case placement.DesiredStop:
				// kill it, then report complete so that the server forgets it.
			}
		}
		// Separately, every reg.HeartbeatInterval: cl.Heartbeat(ctx, placement.Heartbeat{Tasks: ...}).
		_ = reg.HeartbeatInterval
	}
}
