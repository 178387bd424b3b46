package main

// What every client of the placement service shares: --server (a list), --ca,
// the admin token, and the mapping of its answers to exit codes.

import (
	"context"
	"crypto/tls"
	"time"

	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"ballena.dev/placement/cellca"

	"github.com/urfave/cli/v2"

	"ballena.dev/placement"
)

const defaultServer = "https://127.0.0.1:7480"

// dataDir is the command's own --data if given, else the global one.
func dataDir(c *cli.Context) string {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet("data") {
			return ctx.String("data")
		}
	}
	if root := c.Lineage()[len(c.Lineage())-1]; root != nil {
		if d := root.String("data"); d != "" {
			return d
		}
	}
	return defaultDataDir()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func clientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", EnvVars: []string{"BALLENA_SERVER"}, Value: defaultServer,
			Usage: "placement server URLs, comma-separated (any server of the cell; the client moves to the next when one fails)"},
		&cli.StringFlag{Name: "ca", EnvVars: []string{"BALLENA_CA"}, Usage: "the cell CA certificate (ca.pem) that signed the servers' certificates (default DATA/ca.pem if present)"},
		&cli.StringFlag{Name: "token-file", Usage: "admin token file (or env BALLENA_TOKEN with the token; default DATA/admin.token if readable)"},
	}
}

// cellTLS is the TLS configuration that verifies the servers against the cell CA
// (path; DATA/ca.pem when empty and present; else the system's roots).
func cellTLS(c *cli.Context, path string) (*tls.Config, error) {
	if path == "" {
		if p := filepath.Join(dataDir(c), cellca.CAFile); fileExists(p) {
			path = p
		}
	}
	if path == "" {
		return &tls.Config{MinVersion: tls.VersionTLS13}, nil
	}
	pool, err := cellca.LoadPool(path)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--ca: %w", err))
	}
	return cellca.ClientConfig(pool), nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// placementClient builds an admin client from --server, --ca and the token sources.
func placementClient(c *cli.Context) (*placement.Client, error) {
	token := os.Getenv("BALLENA_TOKEN")
	if path := c.String("token-file"); path != "" {
		t, err := placement.ReadToken(path)
		if err != nil {
			return nil, withCode(exitUsage, err)
		}
		token = t
	} else if token == "" {
		if t, err := placement.ReadToken(filepath.Join(dataDir(c), "admin.token")); err == nil {
			token = t
		}
	}
	if token == "" {
		return nil, usageErrorf("no admin token: give --token-file or set BALLENA_TOKEN (every request to the placement service needs it)")
	}
	tc, err := cellTLS(c, c.String("ca"))
	if err != nil {
		return nil, err
	}
	cl, err := placement.NewClient(c.String("server"), token, placement.WithTLS(tc))
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	// Long enough for an election after a leader is lost, short enough that a
	// cell without quorum is an answer, not a hang.
	cl.FailoverWait = cliFailoverWait
	return cl, nil
}

// cliFailoverWait bounds how long a command tries the servers of its list.
const cliFailoverWait = 8 * time.Second

// placementErr maps the server's answers to exit codes.
func placementErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *placement.APIError
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusNotFound:
			return withCode(exitNotFound, err)
		case ae.Status == http.StatusBadRequest:
			return withCode(exitUsage, err)
		case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
			return fmt.Errorf("%w (give the admin token with --token-file or BALLENA_TOKEN)", err)
		case ae.Status >= 500:
			return withCode(exitUnavailable, err)
		}
		return err
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) {
		return withCode(exitUnavailable, fmt.Errorf("%w (give the cell CA with --ca or BALLENA_CA)", err))
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
		return withCode(exitUnavailable, err)
	}
	return err
}
