// Command ballena publishes signed artifacts, moves them peer to peer across a
// fleet, places tasks on machines and runs them isolated. See README.md.
package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"ballena.dev/launcher"
	"github.com/urfave/cli/v2"
)

func main() {
	launcher.MaybeRunInit() // a task's shim or init: never returns
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runApp(ctx, newApp(), os.Args)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ballena: "+oneLine(err))
		os.Exit(exitCode(err))
	}
}

// runApp runs the CLI with flags accepted anywhere on the line (see normalizeArgs).
func runApp(ctx context.Context, app *cli.App, args []string) error {
	return app.RunContext(ctx, normalizeArgs(app, args))
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "ballena",
		Usage:                "ship signed software to a fleet, peer to peer, and run it isolated",
		EnableBashCompletion: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", EnvVars: []string{"BALLENA_DATA"}, Value: defaultDataDir(),
				Usage: "data dir: artifact store, node identity, local API socket"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"BALLENA_LOG_LEVEL"}, Value: "info",
				Usage: "debug, info, warn or error"},
			&cli.BoolFlag{Name: "log-json", Usage: "log as JSON lines instead of text"},
		},
		Before: func(c *cli.Context) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return usageErrorf("--log-level: %v", err)
			}
			opts := &slog.HandlerOptions{Level: lvl}
			var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
			if c.Bool("log-json") {
				h = slog.NewJSONHandler(os.Stderr, opts)
			}
			slog.SetDefault(slog.New(h))
			return nil
		},
		Commands:       commands(),
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and picks the exit code
		OnUsageError:   usageError,
	}
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.OnUsageError = usageError
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
	return app
}

// usageError gives flag-parsing errors the usage exit code and a pointer to --help.
func usageError(c *cli.Context, err error, _ bool) error {
	return usageErrorf("%v (see %s --help)", err, cmp.Or(c.Command.HelpName, c.App.Name))
}

// commands lists every subcommand; each room's commands live in their own file.
func commands() []*cli.Command {
	return []*cli.Command{
		// signed artifacts (keys.go, publish.go, store.go, verify.go; output.go: --json and formatting)
		keyCommand(), signCommand(), publishCommand(), lsCommand(), inspectCommand(), verifyCommand(), rmCommand(), gcCommand(),
		// tasks (tasks.go)
		runCommand(), psCommand(), logsCommand(), stopCommand(),
		// the node daemon and the mesh (node.go, swarm.go)
		nodeCommand(), fetchCommand(), statusCommand(), torrentCommand(),
		// the node's OCI registry (registry.go)
		registryCommand(),
		devCommand(),
		// the placement service (server.go, cell.go, jobs.go, nodes.go; client.go: the shared client flags)
		serverCommand(), cellCommand(), jobCommand(), nodesCommand(),
		// watching the cell (events.go, ui.go)
		eventsCommand(), uiCommand(),
	}
}

// defaultDataDir is /var/lib/ballena for root, else the XDG data dir.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/ballena"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return d + "/ballena"
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h + "/.local/share/ballena"
	}
	return ".ballena"
}
