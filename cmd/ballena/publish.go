package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/internal/atomicfile"
	"ballena.dev/internal/localapi"
	"ballena.dev/internal/units"
	"ballena.dev/signing"
)

func publishFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "key", Required: true, Usage: "signing key (PKCS#8 PEM); repeat for several signatures"},
		&cli.StringFlag{Name: "name", Required: true, Usage: "artifact name, e.g. api"},
		&cli.StringFlag{Name: "version", Required: true, Usage: "semantic version, e.g. 1.4.0"},
		&cli.StringFlag{Name: "kind", Usage: "whale or oci (default: detected: directories and tarballs are images)"},
		&cli.StringFlag{Name: "builder-id", Usage: "SLSA builder id (default " + artifact.DefaultBuilderID + ")"},
		&cli.StringFlag{Name: "source-repo", Usage: "source repository (default: git remote of the input's directory)"},
		&cli.StringFlag{Name: "source-commit", Usage: "source commit (default: git HEAD of the input's directory)"},
		jsonFlag,
	}
}

func publishOptions(c *cli.Context) (artifact.PublishOptions, error) {
	opts := artifact.PublishOptions{
		Name: c.String("name"), Version: c.String("version"),
		BuilderID: c.String("builder-id"), SourceRepo: c.String("source-repo"), SourceCommit: c.String("source-commit"),
		Started: time.Now(),
	}
	if k := c.String("kind"); k != "" {
		kind, err := artifact.ParseKind(k)
		if err != nil {
			return opts, usageErrorf("--kind: %v", err)
		}
		opts.Kind = kind
	}
	for _, p := range c.StringSlice("key") {
		k, err := signing.LoadPrivateKey(p)
		if err != nil {
			return opts, withCode(exitUsage, fmt.Errorf("--key: %w", err))
		}
		opts.Keys = append(opts.Keys, k)
	}
	if c.NArg() != 1 {
		return opts, usageErrorf("want exactly one input file or directory")
	}
	return opts, nil
}

func publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "check, sign (DSSE, in-toto, SLSA provenance) and store an artifact; a running node also seeds and announces it",
		ArgsUsage: "PATH",
		UsageText: "ballena publish --key release.key --name api --version 1.4.0 ./api\n" +
			"   ballena publish --key release.key --name web --version 2.0.0 --kind oci ./web.tar",
		Flags: publishFlags(),
		Action: func(c *cli.Context) error {
			opts, err := publishOptions(c)
			if err != nil {
				return err
			}
			input := c.Args().First()
			var rel artifact.Release
			err = withStore(c, func(cl *localapi.Client) error {
				p, err := artifact.Prepare(c.Context, input, os.TempDir(), opts)
				if err != nil {
					return err
				}
				defer p.Cleanup()
				env, err := artifact.Sign(p.Release, input, opts)
				if err != nil {
					return err
				}
				abs, err := filepath.Abs(p.Path)
				if err != nil {
					return err
				}
				return cl.Do(c.Context, http.MethodPost, "/v1/artifacts", localapi.PublishRequest{Path: abs, Envelope: env}, &rel)
			}, func(st *artifact.Store) error {
				rel, _, err = artifact.Publish(c.Context, st, input, opts)
				return err
			})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, rel)
			}
			fmt.Fprintf(c.App.Writer, "published %s %s sha256:%s (%s)\n", rel.Ref(), rel.Kind, rel.Digest, units.FormatBytes(rel.Size))
			return nil
		},
	}
}

func signCommand() *cli.Command {
	return &cli.Command{
		Name:      "sign",
		Usage:     "sign a file offline and write its DSSE envelope; needs no store",
		ArgsUsage: "PATH",
		UsageText: "ballena sign --key release.key --name api --version 1.4.0 ./api   # writes ./api.dsse.json",
		Flags:     append(publishFlags(), &cli.StringFlag{Name: "out", Usage: "envelope path (default PATH.dsse.json)"}),
		Action: func(c *cli.Context) error {
			opts, err := publishOptions(c)
			if err != nil {
				return err
			}
			input := c.Args().First()
			p, err := artifact.Prepare(c.Context, input, os.TempDir(), opts)
			if err != nil {
				return err
			}
			defer p.Cleanup()
			if p.Path != input {
				return usageErrorf("sign: %s is not a docker-save tarball; offline signing covers exact bytes, so `ballena publish` it or save it as a docker-save tarball first", input)
			}
			env, err := artifact.Sign(p.Release, input, opts)
			if err != nil {
				return err
			}
			b, err := env.Marshal()
			if err != nil {
				return err
			}
			out := c.String("out")
			if out == "" {
				out = strings.TrimSuffix(input, "/") + ".dsse.json"
			}
			if err := atomicfile.Write(out, b, 0o644); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, map[string]any{"envelope": out, "release": p.Release})
			}
			fmt.Fprintf(c.App.Writer, "wrote %s: %s sha256:%s\n", out, p.Release.Ref(), p.Release.Digest)
			return nil
		},
	}
}
