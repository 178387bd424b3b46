package main

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/internal/atomicfile"
	"ballena.dev/internal/daemon"
	"ballena.dev/internal/localapi"
	"ballena.dev/internal/units"
	"ballena.dev/signing"
)

// withStore runs f on the daemon's API when a daemon serves the data dir, else
// on the store opened in this process.
func withStore(c *cli.Context, viaDaemon func(*localapi.Client) error, direct func(*artifact.Store) error) error {
	data := c.String("data")
	if cl, err := localapi.Dial(data); err == nil {
		return viaDaemon(cl)
	}
	st, err := artifact.Open(data)
	if err != nil {
		return err
	}
	defer st.Close()
	return direct(st)
}

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func keyCommand() *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "make and inspect publisher signing keys",
		Subcommands: []*cli.Command{{
			Name:      "generate",
			Usage:     "write NAME.key (PKCS#8 PEM, 0600) and NAME.pub (PKIX PEM) and print the key ID",
			ArgsUsage: "NAME",
			UsageText: "ballena key generate release\n   ballena key generate --dir /etc/ballena/keys ci-2026",
			Flags:     []cli.Flag{&cli.StringFlag{Name: "dir", Value: ".", Usage: "where to write the key pair"}, jsonFlag},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageErrorf("key generate: want one NAME, e.g. `ballena key generate release`")
				}
				keyPath, pubPath, id, err := signing.WriteKeyPair(c.String("dir"), c.Args().First())
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, map[string]string{"key": keyPath, "pub": pubPath, "keyId": id})
				}
				fmt.Fprintf(c.App.Writer, "wrote %s (private, 0600) and %s\nkey ID %s\n", keyPath, pubPath, id)
				return nil
			},
		}, {
			Name:      "id",
			Usage:     "print the key ID of a public or private key file",
			ArgsUsage: "FILE",
			UsageText: "ballena key id release.pub",
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageErrorf("key id: want one key FILE")
				}
				pub, err := loadAnyPublicKey(c.Args().First())
				if err != nil {
					return withCode(exitUsage, err)
				}
				fmt.Fprintln(c.App.Writer, signing.KeyID(pub))
				return nil
			},
		}},
	}
}

func loadAnyPublicKey(path string) (ed25519.PublicKey, error) {
	if pub, err := signing.LoadPublicKey(path); err == nil {
		return pub, nil
	}
	priv, err := signing.LoadPrivateKey(path)
	if err != nil {
		return nil, fmt.Errorf("%s holds neither an ed25519 public nor private key: %w", path, err)
	}
	return priv.Public().(ed25519.PublicKey), nil
}

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

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list the releases in the local store",
		UsageText: "ballena ls\n   ballena ls --json | jq -r '.[].digest'",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			var rels []artifact.Release
			err := withStore(c, func(cl *localapi.Client) error {
				return cl.Do(c.Context, http.MethodGet, "/v1/artifacts", nil, &rels)
			}, func(st *artifact.Store) (err error) {
				rels, err = st.Releases()
				return err
			})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if rels == nil {
					rels = []artifact.Release{}
				}
				return printJSON(c.App.Writer, rels)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tKIND\tSIZE\tDIGEST\tPUBLISHED")
			for _, r := range rels {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\tsha256:%s\t%s\n", r.Name, r.Version, r.Kind, units.FormatBytes(r.Size), r.Digest[:12], r.PublishedAt.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
}

// provenance is what `inspect` shows: the release and who signed it how.
type provenance struct {
	artifact.Release
	SignerKeyIDs []string  `json:"signerKeyIds"`
	Verified     bool      `json:"verified"` // inspect reports claims; `verify` checks them
	BuilderID    string    `json:"builderId"`
	BuildType    string    `json:"buildType"`
	SourceRepo   string    `json:"sourceRepo,omitempty"`
	SourceCommit string    `json:"sourceCommit,omitempty"`
	StartedOn    time.Time `json:"startedOn"`
	FinishedOn   time.Time `json:"finishedOn"`
}

func describe(rel artifact.Release, env *signing.Envelope) (provenance, error) {
	st, err := signing.ParseStatement(env.Payload)
	if err != nil {
		return provenance{}, fmt.Errorf("inspect %s: %w", rel.Ref(), err)
	}
	p := provenance{Release: rel, BuilderID: st.Predicate.RunDetails.Builder.ID,
		BuildType:  st.Predicate.BuildDefinition.BuildType,
		StartedOn:  st.Predicate.RunDetails.Metadata.StartedOn,
		FinishedOn: st.Predicate.RunDetails.Metadata.FinishedOn}
	p.SourceRepo, p.SourceCommit = st.Source()
	for _, s := range env.Signatures {
		p.SignerKeyIDs = append(p.SignerKeyIDs, s.KeyID)
	}
	return p, nil
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show an artifact's provenance: digest, size, kind, signers, builder, source, times",
		ArgsUsage: "NAME@VERSION",
		UsageText: "ballena inspect api@1.4.0\n   ballena inspect --json api@1.4.0",
		Flags:     []cli.Flag{jsonFlag, &cli.BoolFlag{Name: "envelope", Usage: "print the raw DSSE envelope"}},
		Action: func(c *cli.Context) error {
			ref, err := refArg(c)
			if err != nil {
				return err
			}
			var rw localapi.ReleaseWithEnvelope
			err = withStore(c, func(cl *localapi.Client) error {
				return cl.Do(c.Context, http.MethodGet, "/v1/artifacts/"+ref.String(), nil, &rw)
			}, func(st *artifact.Store) (err error) {
				rw.Release, rw.Envelope, err = st.Release(ref)
				return err
			})
			if err != nil {
				return err
			}
			if c.Bool("envelope") {
				return printJSON(c.App.Writer, rw.Envelope)
			}
			p, err := describe(rw.Release, rw.Envelope)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, p)
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "%s\n", p.Ref())
			fmt.Fprintf(w, "  kind:\t%s (%s)\n", p.Kind, p.Arch)
			fmt.Fprintf(w, "  digest:\tsha256:%s\n", p.Digest)
			fmt.Fprintf(w, "  size:\t%s (%d bytes)\n", units.FormatBytes(p.Size), p.Size)
			fmt.Fprintf(w, "  infohash:\t%s (pieces of %s)\n", p.InfoHash, units.FormatBytes(p.PieceLength))
			if len(p.Entrypoint)+len(p.Cmd) > 0 {
				fmt.Fprintf(w, "  runs:\t%s\n", strings.Join(append(append([]string{}, p.Entrypoint...), p.Cmd...), " "))
			}
			for i, id := range p.SignerKeyIDs {
				label := ""
				if i == 0 {
					label = "signed by:"
				}
				fmt.Fprintf(w, "  %s\t%s\n", label, id)
			}
			fmt.Fprintf(w, "  builder:\t%s\n", p.BuilderID)
			if p.SourceRepo != "" || p.SourceCommit != "" {
				fmt.Fprintf(w, "  source:\t%s @ %s\n", orDash(p.SourceRepo), orDash(p.SourceCommit))
			}
			fmt.Fprintf(w, "  built:\t%s .. %s\n", p.StartedOn.Format(time.RFC3339), p.FinishedOn.Format(time.RFC3339))
			fmt.Fprintf(w, "  signatures:\tnot checked by inspect; run `ballena verify --trust trust.yaml %s`\n", p.Ref())
			return w.Flush()
		},
	}
}

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

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:      "gc",
		Usage:     "remove blobs that no release references (a node stops seeding them)",
		UsageText: "ballena rm api@1.3.0 && ballena gc",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			var removed []string
			err := withStore(c, func(cl *localapi.Client) error {
				return cl.Do(c.Context, http.MethodPost, "/v1/gc", nil, &removed)
			}, func(st *artifact.Store) (err error) {
				removed, err = st.GC(c.Context)
				return err
			})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if removed == nil {
					removed = []string{}
				}
				return printJSON(c.App.Writer, removed)
			}
			for _, d := range removed {
				fmt.Fprintf(c.App.Writer, "removed sha256:%s\n", d)
			}
			fmt.Fprintf(c.App.Writer, "%d blobs removed\n", len(removed))
			return nil
		},
	}
}

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "forget a release; `ballena gc` then removes its blob if nothing else uses it",
		ArgsUsage: "NAME@VERSION",
		UsageText: "ballena rm api@1.3.0",
		Action: func(c *cli.Context) error {
			ref, err := refArg(c)
			if err != nil {
				return err
			}
			return withStore(c, func(cl *localapi.Client) error {
				return cl.Do(c.Context, http.MethodDelete, "/v1/artifacts/"+ref.String(), nil, nil)
			}, func(st *artifact.Store) error { return st.DeleteRelease(ref) })
		},
	}
}

func refArg(c *cli.Context) (artifact.Ref, error) {
	if c.NArg() != 1 {
		return artifact.Ref{}, usageErrorf("%s: want one NAME@VERSION, e.g. api@1.4.0", c.Command.Name)
	}
	ref, err := artifact.ParseRef(c.Args().First())
	if err != nil {
		return artifact.Ref{}, withCode(exitUsage, err)
	}
	return ref, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
