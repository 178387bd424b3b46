package main

// ballena cell init, cell cert: the cell's CA, tokens and server certificates.

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"ballena.dev/placement/cellca"
)

func cellCommand() *cli.Command {
	return &cli.Command{
		Name:  "cell",
		Usage: "create a placement cell's CA and tokens, and certificates for its servers",
		UsageText: "ballena cell init --out cell/\n" +
			"ballena cell cert --cell cell/ --server --name s1 --host 10.0.0.1 --out s1-tls/",
		Subcommands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create a cell directory: ca.pem, ca.key, admin.token, join.token (secrets 0600)",
				UsageText: "ballena cell init --out cell/\n\n" +
					"Keep ca.key offline once the servers have their certificates; copy ca.pem to every\n" +
					"node and client (--ca, BALLENA_CA), join.token to every node, admin.token to admins.",
				Flags: []cli.Flag{&cli.StringFlag{Name: "out", Required: true, Usage: "directory to create (refused if it holds a CA already)"}},
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return usageErrorf("cell init takes no arguments (got %q)", c.Args().First())
					}
					dir := c.String("out")
					if err := cellca.Init(dir); err != nil {
						return withCode(exitUsage, err)
					}
					fmt.Fprintf(c.App.Writer, "cell CA %s (key %s), admin token %s, join token %s\n",
						filepath.Join(dir, cellca.CAFile), filepath.Join(dir, cellca.CAKeyFile),
						filepath.Join(dir, cellca.AdminTokenFile), filepath.Join(dir, cellca.JoinTokenFile))
					return nil
				},
			},
			{
				Name:  "cert",
				Usage: "issue a server certificate from the cell CA: cert.pem, key.pem (0600) and ca.pem in --out",
				UsageText: "ballena cell cert --cell cell/ --server --name s1 --host 10.0.0.1 --out s1-tls/\n" +
					"ballena cell cert --cell cell/ --server --name s2 --host 10.0.0.2 --host s2.example.org --out s2-tls/",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "cell", Required: true, Usage: "cell directory (ca.pem and ca.key)"},
					&cli.BoolFlag{Name: "server", Usage: "a server certificate (for the API and Raft); the only kind there is"},
					&cli.StringFlag{Name: "name", Required: true, Usage: "the server's name in the cell"},
					&cli.StringSliceFlag{Name: "host", Usage: "IP address or DNS name the server is reached at; repeatable (loopback is always included)"},
					&cli.StringFlag{Name: "out", Required: true, Usage: "directory for cert.pem, key.pem and ca.pem"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return usageErrorf("cell cert takes no arguments (got %q)", c.Args().First())
					}
					if !c.Bool("server") {
						return usageErrorf("cell cert: only server certificates exist: give --server")
					}
					ca, err := cellca.Load(c.String("cell"))
					if err != nil {
						return withCode(exitUsage, err)
					}
					var hosts []string
					for _, h := range c.StringSlice("host") {
						hosts = append(hosts, strings.Split(h, ",")...)
					}
					if err := ca.IssueServer(c.String("name"), hosts, c.String("out")); err != nil {
						return withCode(exitUsage, err)
					}
					fmt.Fprintf(c.App.Writer, "server certificate for %s (%s): %s, key %s\n", c.String("name"),
						strings.Join(append([]string{"localhost", "127.0.0.1"}, hosts...), ", "),
						filepath.Join(c.String("out"), cellca.CertFile), filepath.Join(c.String("out"), cellca.KeyFile))
					return nil
				},
			},
		},
	}
}
