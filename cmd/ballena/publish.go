package main

import (
	"context"
	"crypto/ed25519"
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

// publishFlags are the flags publish and sign share: what to sign and with what.
// --key, --name and --version are needed unless --envelope names a signed
// statement already.
func publishFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "key", Usage: "signing key (PKCS#8 PEM); repeat for several signatures"},
		&cli.StringFlag{Name: "name", Usage: "artifact name, e.g. api (with --envelope: must match it)"},
		&cli.StringFlag{Name: "version", Usage: "semantic version, e.g. 1.4.0 (with --envelope: must match it)"},
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
	if !c.IsSet("key") || opts.Name == "" || opts.Version == "" {
		return opts, usageErrorf("%s: want --key, --name and --version (or --envelope FILE, a signed envelope of PATH)", c.Command.Name)
	}
	if k := c.String("kind"); k != "" {
		kind, err := artifact.ParseKind(k)
		if err != nil {
			return opts, usageErrorf("--kind: %v", err)
		}
		opts.Kind = kind
	}
	keys, err := loadKeys(c)
	if err != nil {
		return opts, err
	}
	opts.Keys = keys
	if c.NArg() != 1 {
		return opts, usageErrorf("want exactly one input file or directory")
	}
	return opts, nil
}

func loadKeys(c *cli.Context) ([]ed25519.PrivateKey, error) {
	var keys []ed25519.PrivateKey
	for _, p := range c.StringSlice("key") {
		k, err := signing.LoadPrivateKey(p)
		if err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("--key: %w", err))
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// publishOnlyFlags: reading an envelope, checking trust, and pushing to a
// fleet from a throwaway node.
func publishOnlyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "envelope", Usage: "publish PATH as this DSSE envelope signs it (from `ballena sign`); needs no key"},
		&cli.StringFlag{Name: "trust", Usage: "with --envelope: refuse unless the envelope meets this trust policy (YAML), as the fleet will check"},
		&cli.StringSliceFlag{Name: "bootstrap", Usage: "push to the fleet: run a short-lived node that joins through this multiaddr (with /p2p/PEERID); repeatable"},
		&cli.StringFlag{Name: "psk", Usage: "with --bootstrap: the fleet's pre-shared key file"},
		&cli.StringFlag{Name: "allow-peers", Usage: "with --bootstrap: file of peer IDs, one per line: connect with no others"},
		&cli.StringSliceFlag{Name: "listen", Usage: "with --bootstrap: libp2p listen multiaddr (default /ip4/0.0.0.0/tcp/0 with --psk, else loopback)"},
		&cli.StringFlag{Name: "identity", Usage: "with --bootstrap: the pushing node's libp2p key file, made if missing (0600), so that fleets with --allow-peers can list its peer ID (default: a new one each run)"},
		&cli.StringFlag{Name: "upload-limit", Usage: "with --bootstrap: cap the pushing node's upload, e.g. 50MiB (per second); default unlimited"},
		&cli.IntFlag{Name: "wait-replicas", Value: 1, Usage: "with --bootstrap: wait until this many fleet nodes prove they hold the verified release"},
		&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "with --bootstrap: give up waiting for replicas after this long"},
	}
}

func publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "check, sign (DSSE, in-toto, SLSA provenance) and store an artifact, or store one signed elsewhere; a running node also seeds and announces it, --bootstrap pushes it to a fleet",
		ArgsUsage: "PATH",
		UsageText: "ballena publish --key release.key --name api --version 1.4.0 ./api\n" +
			"   ballena publish --key release.key --name web --version 2.0.0 --kind oci ./web.tar\n" +
			"   ballena publish --envelope ./api.dsse.json ./api\n" +
			"   ballena publish --envelope ./api.dsse.json ./api --bootstrap /ip4/10.0.0.1/tcp/7400/p2p/12D3KooW... --psk fleet.psk --wait-replicas 3 --timeout 5m",
		Description: "With --envelope, PATH must be exactly what the envelope signs (digest, and the name, version\n" +
			"and kind it records); the release is stored as signed, with no key at hand.\n" +
			"With --bootstrap, nothing is stored here: a short-lived node in a temporary directory joins\n" +
			"the fleet, seeds and announces the release, and waits until --wait-replicas fleet nodes\n" +
			"prove they hold it (over /ballena/hold/1.0.0: a hash of the whole blob under a fresh\n" +
			"nonce, signed by their peer key). Fleet nodes fetch what matches their --auto-fetch.\n" +
			"Exit codes: 2 bad flags or input, 3 PATH does not match the envelope or the trust policy\n" +
			"refuses it, 5 no bootstrap peer reachable or too few replicas before --timeout.",
		Flags: append(publishFlags(), publishOnlyFlags()...),
		Action: func(c *cli.Context) error {
			if c.IsSet("envelope") {
				return publishEnvelope(c)
			}
			for _, f := range []string{"trust", "bootstrap", "psk", "allow-peers", "listen", "identity", "upload-limit", "wait-replicas", "timeout"} {
				if c.IsSet(f) {
					return usageErrorf("publish: --%s goes with --envelope: sign first (`ballena sign`), then publish the envelope", f)
				}
			}
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
			return printPublished(c, rel)
		},
	}
}

func printPublished(c *cli.Context, rel artifact.Release) error {
	if c.Bool("json") {
		return printJSON(c.App.Writer, rel)
	}
	fmt.Fprintf(c.App.Writer, "published %s %s sha256:%s (%s)\n", rel.Ref(), rel.Kind, rel.Digest, units.FormatBytes(rel.Size))
	return nil
}

// publishEnvelope stores (or, with --bootstrap, pushes) PATH as the envelope signs it.
func publishEnvelope(c *cli.Context) error {
	for _, f := range []string{"key", "builder-id", "source-repo", "source-commit"} {
		if c.IsSet(f) {
			return usageErrorf("publish: --%s cannot go with --envelope: the envelope is signed as it is; add signatures with `ballena sign --envelope FILE --key K PATH`", f)
		}
	}
	if c.NArg() != 1 {
		return usageErrorf("publish: want exactly one PATH, the file the envelope signs")
	}
	input := c.Args().First()
	env, rel, err := loadEnvelopeFor(c, input)
	if err != nil {
		return err
	}
	if c.IsSet("trust") {
		pol, err := signing.LoadPolicy(c.String("trust"))
		if err != nil {
			return withCode(exitUsage, err)
		}
		if _, _, err := artifact.VerifyEnvelope(env, pol, time.Now()); err != nil {
			return fmt.Errorf("publish %s: %w", rel.Ref(), err)
		}
	}
	if c.IsSet("bootstrap") {
		return pushCommand(c, input, rel, env)
	}
	for _, f := range []string{"psk", "allow-peers", "listen", "identity", "upload-limit", "wait-replicas", "timeout"} {
		if c.IsSet(f) {
			return usageErrorf("publish: --%s goes with --bootstrap, which pushes the release to a fleet", f)
		}
	}
	err = withStore(c, func(cl *localapi.Client) error {
		abs, err := filepath.Abs(input)
		if err != nil {
			return err
		}
		return cl.Do(c.Context, http.MethodPost, "/v1/artifacts", localapi.PublishRequest{Path: abs, Envelope: env}, &rel)
	}, func(st *artifact.Store) error {
		rel, err = st.Import(c.Context, input, env)
		return err
	})
	if err != nil {
		return err
	}
	return printPublished(c, rel)
}

// loadEnvelopeFor reads --envelope and checks that input is exactly what it
// signs: the same bytes, of the kind it records, and the --name, --version and
// --kind given, if any.
func loadEnvelopeFor(c *cli.Context, input string) (*signing.Envelope, artifact.Release, error) {
	file := c.String("envelope")
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, artifact.Release{}, withCode(exitUsage, fmt.Errorf("--envelope: %w", err))
	}
	env, err := signing.ParseEnvelope(b)
	if err != nil {
		return nil, artifact.Release{}, fmt.Errorf("%s: %w", file, err)
	}
	st, err := signing.ParseStatement(env.Payload)
	if err != nil {
		return nil, artifact.Release{}, fmt.Errorf("%s: %w", file, err)
	}
	rel, err := artifact.ReleaseFromStatement(st)
	if err != nil {
		return nil, artifact.Release{}, fmt.Errorf("%s: %w", file, err)
	}
	for flag, want := range map[string]string{"name": rel.Name, "version": rel.Version, "kind": string(rel.Kind)} {
		if c.IsSet(flag) && c.String(flag) != want {
			return nil, artifact.Release{}, artifact.Tagged(signing.ErrSubjectMismatch,
				"%s signs %s %s, not --%s %s", file, rel.Ref(), rel.Kind, flag, c.String(flag))
		}
	}
	if err := matchRelease(c.Context, input, file, rel); err != nil {
		return nil, artifact.Release{}, err
	}
	return env, rel, nil
}

// matchRelease checks that input is the artifact rel describes: its digest
// first, then what Prepare derives from it as the recorded kind.
func matchRelease(ctx context.Context, input, file string, rel artifact.Release) error {
	digest, err := artifact.HashFile(ctx, input)
	if err != nil {
		return withCode(exitUsage, err)
	}
	if digest != rel.Digest {
		return artifact.Tagged(signing.ErrSubjectMismatch, "%s does not match %s: its sha256 is %s, the envelope signs %s for %s; give the exact file that was signed",
			input, file, digest[:12], rel.Digest[:12], rel.Ref())
	}
	p, err := artifact.Prepare(ctx, input, os.TempDir(), artifact.PublishOptions{Name: rel.Name, Version: rel.Version, Kind: rel.Kind})
	if err != nil {
		return artifact.Tagged(signing.ErrSubjectMismatch, "%s is not a %s artifact as %s says: %v", input, rel.Kind, file, err)
	}
	defer p.Cleanup()
	got := p.Release
	switch {
	case p.Path != input:
		return artifact.Tagged(signing.ErrSubjectMismatch, "%s: an %s input other than a docker-save tarball cannot match a signature over exact bytes", input, rel.Kind)
	case got.Size != rel.Size, got.InfoHash != rel.InfoHash, got.PieceLength != rel.PieceLength:
		return artifact.Tagged(signing.ErrSubjectMismatch, "%s: the release record in %s does not describe its bytes (size %d, infohash %s; recorded %d, %s)",
			input, file, got.Size, got.InfoHash, rel.Size, rel.InfoHash)
	case got.Arch != rel.Arch:
		return artifact.Tagged(signing.ErrSubjectMismatch, "%s is built for %s, %s records %s", input, got.Arch, file, rel.Arch)
	}
	return nil
}

func signCommand() *cli.Command {
	return &cli.Command{
		Name:      "sign",
		Usage:     "sign a file offline and write its DSSE envelope, or add a signature to an envelope; needs no store",
		ArgsUsage: "PATH",
		UsageText: "ballena sign --key release.key --name api --version 1.4.0 ./api   # writes ./api.dsse.json\n" +
			"   ballena sign --key second.key --envelope ./api.dsse.json ./api   # co-signs the same statement",
		Description: "With --envelope, the signature goes over the statement the envelope holds, unchanged, and\n" +
			"is added beside the others (in place, or to --out): PATH must be exactly what it signs.\n" +
			"A key that signed it already is refused: its second signature would not count toward a threshold.",
		Flags: append(publishFlags(),
			&cli.StringFlag{Name: "out", Usage: "envelope path (default PATH.dsse.json, or with --envelope the envelope itself)"},
			&cli.StringFlag{Name: "envelope", Usage: "co-sign: add a signature to this envelope instead of making one"}),
		Action: func(c *cli.Context) error {
			if c.IsSet("envelope") {
				return coSign(c)
			}
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
			out := c.String("out")
			if out == "" {
				out = strings.TrimSuffix(input, "/") + ".dsse.json"
			}
			return writeEnvelope(c, out, env, p.Release, "wrote %s: %s sha256:%s\n", out, p.Release.Ref(), p.Release.Digest)
		},
	}
}

// coSign adds a signature by each --key to --envelope over its statement.
func coSign(c *cli.Context) error {
	if !c.IsSet("key") {
		return usageErrorf("sign --envelope: want --key, the key that co-signs")
	}
	for _, f := range []string{"builder-id", "source-repo", "source-commit"} {
		if c.IsSet(f) {
			return usageErrorf("sign: --%s cannot go with --envelope: co-signing keeps the statement as it is", f)
		}
	}
	if c.NArg() != 1 {
		return usageErrorf("sign --envelope: want exactly one PATH, the file the envelope signs")
	}
	input := c.Args().First()
	env, rel, err := loadEnvelopeFor(c, input)
	if err != nil {
		return err
	}
	keys, err := loadKeys(c)
	if err != nil {
		return err
	}
	file := c.String("envelope")
	var added []string
	for i, k := range keys {
		id := signing.KeyID(k.Public().(ed25519.PublicKey))
		if env.SignedBy(id) {
			return usageErrorf("sign: %s is already signed by key %s (%s); a second signature by one key does not count toward a threshold: co-sign with another key",
				file, id[:12], c.StringSlice("key")[i])
		}
		if err := env.AddSignature(k); err != nil {
			return withCode(exitUsage, fmt.Errorf("sign: %w", err))
		}
		added = append(added, id[:12])
	}
	out := c.String("out")
	if out == "" {
		out = file
	}
	return writeEnvelope(c, out, env, rel, "signed %s sha256:%s with key %s: %s has %d signatures\n",
		rel.Ref(), rel.Digest, strings.Join(added, ", "), out, len(env.Signatures))
}

func writeEnvelope(c *cli.Context, out string, env *signing.Envelope, rel artifact.Release, format string, args ...any) error {
	b, err := env.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(out, b, 0o644); err != nil {
		return err
	}
	if c.Bool("json") {
		ids := make([]string, 0, len(env.Signatures))
		for _, s := range env.Signatures {
			ids = append(ids, s.KeyID)
		}
		return printJSON(c.App.Writer, map[string]any{"envelope": out, "release": rel, "keyIds": ids})
	}
	fmt.Fprintf(c.App.Writer, format, args...)
	return nil
}
