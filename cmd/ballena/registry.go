package main

import (
	"fmt"
	"net"

	"github.com/urfave/cli/v2"

	"ballena.dev/internal/daemon"
	"ballena.dev/registry"
)

// registryFlags are the node's flags for its OCI registry.
func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "registry-listen",
			Usage: "serve verified images as a read-only OCI registry at http://ADDR/v2/ for containerd and Docker, e.g. 127.0.0.1:5000 (plain HTTP: loopback or the node's own network)"},
		&cli.StringSliceFlag{Name: "registry-map",
			Usage: "as a mirror, serve UPSTREAM/PREFIX...:TAG as the release NAMEPREFIX...@TAG, e.g. registry.example.com/team/= ; repeatable"},
	}
}

// registryConfig reads the registry flags into cfg.
func registryConfig(c *cli.Context, cfg *daemon.Config) error {
	cfg.RegistryListen = c.String("registry-listen")
	if cfg.RegistryListen != "" {
		if _, _, err := net.SplitHostPort(cfg.RegistryListen); err != nil {
			return usageErrorf("node: --registry-listen %q: want HOST:PORT, e.g. 127.0.0.1:5000", cfg.RegistryListen)
		}
	}
	for _, s := range c.StringSlice("registry-map") {
		m, err := registry.ParseMapping(s)
		if err != nil {
			return usageErrorf("node: --%v", err)
		}
		cfg.RegistryMap = append(cfg.RegistryMap, m)
	}
	if len(cfg.RegistryMap) > 0 && cfg.RegistryListen == "" {
		return usageErrorf("node: --registry-map needs --registry-listen: it maps the registry's mirror requests")
	}
	return nil
}

func registryCommand() *cli.Command {
	return &cli.Command{
		Name:  "registry",
		Usage: "set up clients of the node's OCI registry (ballena node --registry-listen)",
		Subcommands: []*cli.Command{{
			Name:  "config",
			Usage: "write a container runtime's configuration to pull through the node's registry",
			Subcommands: []*cli.Command{{
				Name:  "containerd",
				Usage: "write containerd's hosts.toml: pull through the node's registry first, the upstream registry on 404",
				UsageText: "ballena registry config containerd --out /etc/containerd/certs.d --registry registry.example.com\n" +
					"ballena registry config containerd --out /etc/containerd/certs.d --registry docker.io --mirror http://127.0.0.1:5000",
				Description: "Writes OUT/<registry>/hosts.toml for each --registry (OUT/_default/hosts.toml without one,\n" +
					"which containerd applies to every registry without a directory), naming the node's registry as a\n" +
					"mirror with capabilities pull and resolve. containerd reads the files at each pull when its\n" +
					"CRI plugin's registry config_path is OUT (Kubernetes), or with `ctr image pull --hosts-dir OUT`.\n" +
					"Existing files are replaced whole.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Value: registry.DefaultHostsDir, Usage: "containerd's hosts directory"},
					&cli.StringSliceFlag{Name: "registry", Usage: "upstream registry host to mirror, e.g. registry.example.com; repeatable"},
					&cli.StringFlag{Name: "mirror", Value: "http://127.0.0.1:5000", Usage: "the node's registry, as --registry-listen serves it"},
					jsonFlag,
				},
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return usageErrorf("registry config containerd: unexpected argument %q (use --registry HOST)", c.Args().First())
					}
					if err := registry.CheckMirrorURL(c.String("mirror")); err != nil {
						return usageErrorf("registry config containerd: --mirror: %v", err)
					}
					for _, r := range c.StringSlice("registry") {
						if err := registry.CheckUpstream(r); err != nil {
							return usageErrorf("registry config containerd: --%v", err)
						}
					}
					files, err := registry.WriteContainerdConfig(c.String("out"), c.StringSlice("registry"), c.String("mirror"))
					if err != nil {
						return fmt.Errorf("registry config containerd: %w", err)
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, map[string]any{"files": files, "mirror": c.String("mirror")})
					}
					for _, f := range files {
						fmt.Fprintf(c.App.Writer, "wrote %s\n", f)
					}
					return nil
				},
			}},
		}},
	}
}
