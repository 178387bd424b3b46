package main

import (
	"crypto/ed25519"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/internal/daemon"
	"ballena.dev/internal/localapi"
	"ballena.dev/signing"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "verify a stored artifact against a trust policy, or a file against an envelope offline",
		ArgsUsage: "NAME@VERSION | PATH",
		UsageText: "ballena verify --trust trust.yaml api@1.4.0\n" +
			"   ballena verify --pub release.pub --envelope ./api.dsse.json ./api",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "trust", Usage: "trust policy (YAML); default DATA/trust.yaml"},
			&cli.BoolFlag{Name: "allow-rollback", Usage: "accept a version older than one verified before"},
			&cli.StringSliceFlag{Name: "pub", Usage: "offline: trusted public key (PKIX PEM), any name; repeatable"},
			&cli.StringFlag{Name: "envelope", Usage: "offline: the DSSE envelope of PATH"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("verify: want one NAME@VERSION or, with --envelope, one PATH")
			}
			var res localapi.VerifyResult
			var err error
			if c.IsSet("envelope") {
				res, err = verifyOffline(c)
			} else {
				res, err = verifyStored(c)
			}
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, res)
			}
			fmt.Fprintf(c.App.Writer, "verified %s sha256:%s signed by %s\n", res.Release.Ref(), res.Release.Digest, strings.Join(res.KeyIDs, ", "))
			return nil
		},
	}
}

func verifyOffline(c *cli.Context) (localapi.VerifyResult, error) {
	var pol *signing.Policy
	switch {
	case c.IsSet("pub") && c.IsSet("trust"):
		return localapi.VerifyResult{}, usageErrorf("verify: give --pub or --trust, not both")
	case c.IsSet("pub"):
		var pubs []ed25519.PublicKey
		for _, p := range c.StringSlice("pub") {
			k, err := signing.LoadPublicKey(p)
			if err != nil {
				return localapi.VerifyResult{}, withCode(exitUsage, fmt.Errorf("--pub: %w", err))
			}
			pubs = append(pubs, k)
		}
		pol = signing.PolicyForKeys(pubs...)
	case c.IsSet("trust"):
		p, err := signing.LoadPolicy(c.String("trust"))
		if err != nil {
			return localapi.VerifyResult{}, withCode(exitUsage, err)
		}
		pol = p
	default:
		return localapi.VerifyResult{}, usageErrorf("verify --envelope needs --pub KEY or --trust POLICY")
	}
	b, err := os.ReadFile(c.String("envelope"))
	if err != nil {
		return localapi.VerifyResult{}, withCode(exitUsage, err)
	}
	env, err := signing.ParseEnvelope(b)
	if err != nil {
		return localapi.VerifyResult{}, fmt.Errorf("%s: %w", c.String("envelope"), err)
	}
	rel, v, err := artifact.VerifyEnvelope(env, pol, time.Now())
	if err != nil {
		return localapi.VerifyResult{}, err
	}
	path := c.Args().First()
	digest, err := artifact.HashFile(c.Context, path)
	if err != nil {
		return localapi.VerifyResult{}, withCode(exitUsage, err)
	}
	if digest != rel.Digest {
		return localapi.VerifyResult{}, artifact.Tagged(signing.ErrSubjectMismatch, "%s does not match the envelope: its sha256 is %s, the envelope signs %s for %s",
			path, digest[:12], rel.Digest[:12], rel.Ref())
	}
	return localapi.VerifyResult{Release: rel, KeyIDs: v.KeyIDs}, nil
}

func verifyStored(c *cli.Context) (localapi.VerifyResult, error) {
	ref, err := refArg(c)
	if err != nil {
		return localapi.VerifyResult{}, err
	}
	trust := trustPath(c)
	var res localapi.VerifyResult
	err = withStore(c, func(cl *localapi.Client) error {
		return cl.Do(c.Context, http.MethodPost, "/v1/artifacts/"+ref.String()+"/verify",
			localapi.VerifyRequest{Trust: trust, AllowRollback: c.Bool("allow-rollback")}, &res)
	}, func(st *artifact.Store) error {
		pol, err := daemon.LoadTrust(trust)
		if err != nil {
			return err
		}
		rel, v, err := st.Verify(c.Context, ref, pol, artifact.VerifyOptions{AllowRollback: c.Bool("allow-rollback")})
		if err != nil {
			return err
		}
		res = localapi.VerifyResult{Release: rel, KeyIDs: v.KeyIDs}
		return nil
	})
	return res, err
}

// trustPath is --trust made absolute (a daemon reads it), or DATA/trust.yaml.
func trustPath(c *cli.Context) string {
	p := c.String("trust")
	if p == "" {
		p = filepath.Join(c.String("data"), "trust.yaml")
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return p
}
