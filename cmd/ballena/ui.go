package main

// ballena ui --url: a one-time login URL for the placement server's web UI.

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
)

func uiCommand() *cli.Command {
	return &cli.Command{
		Name:  "ui",
		Usage: "print a one-time login URL for the web UI (jobs, nodes, releases, live events) that the placement servers serve under /ui/",
		Description: "The URL carries a token that works once, within 5 minutes: opening it sets a session cookie\n" +
			"(HttpOnly, Secure, SameSite=Strict, 12 hours) and redirects to the jobs page. Sessions live in the\n" +
			"leader's memory: when the leader changes, run this again. The browser must trust the cell CA (ca.pem).",
		UsageText: "ballena ui --url\nballena ui --url --server https://10.0.0.1:7480 --ca cell/ca.pem --token-file cell/admin.token\nballena ui --json",
		Flags: append(clientFlags(),
			&cli.BoolFlag{Name: "url", Usage: "print only the URL (for scripts: chromium \"$(ballena ui --url)\")"},
			&cli.BoolFlag{Name: "json", Usage: "print {url, expires} as JSON"}),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErrorf("ui takes no arguments (got %q)", c.Args().First())
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			u, exp, err := cl.UILoginURL(c.Context)
			if err != nil {
				return placementErr(err)
			}
			switch {
			case c.Bool("json"):
				return printJSON(c.App.Writer, map[string]any{"url": u, "expires": exp})
			case c.Bool("url"):
				fmt.Fprintln(c.App.Writer, u)
			default:
				fmt.Fprintf(c.App.Writer, "Open this URL once, before %s:\n%s\n", exp.Local().Format(time.TimeOnly), u)
			}
			return nil
		},
	}
}
