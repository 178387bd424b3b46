package daemon

import (
	"context"
	"fmt"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"ballena.dev/artifact"
	"ballena.dev/registry"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// startRegistry serves the node's OCI registry on cfg.RegistryListen until ctx
// ends, its metrics in metrics (nil: none): the store's images, verified against the policy in force, and
// releases fetched from the mesh when a client asks for one the store lacks.
func (d *Daemon) startRegistry(ctx context.Context, metrics *prometheus.Registry) error {
	ln, err := net.Listen("tcp", d.cfg.RegistryListen)
	if err != nil {
		return fmt.Errorf("node: registry listen: %w", err)
	}
	srv, err := registry.New(registry.Config{
		Store:  d.st,
		Policy: func() *signing.Policy { return d.policy.Load() },
		Fetch: func(ctx context.Context, ref artifact.Ref, found func()) (artifact.Release, error) {
			return d.node.Fetch(ctx, ref, func(swarm.Progress) { found() })
		},
		Map:     d.cfg.RegistryMap,
		Metrics: registerer(metrics),
		Logger:  d.log,
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("node: %w", err)
	}
	d.registryDone = make(chan struct{})
	go func() {
		defer close(d.registryDone)
		if err := srv.Serve(ctx, ln); err != nil {
			d.log.Error("registry stopped", "err", err)
		}
	}()
	d.registryURL = "http://" + ln.Addr().String()
	return nil
}

// RegistryURL is where the node serves its OCI registry, "" if it does not.
func (d *Daemon) RegistryURL() string { return d.registryURL }
