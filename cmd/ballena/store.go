package main

import (
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/internal/units"
	"ballena.dev/signing"
	"ballena.dev/swarm"
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
		Usage:     "show an artifact's provenance (digest, size, kind, signers, builder, source, times), or a task's record and isolation",
		ArgsUsage: "NAME@VERSION | TASK-ID",
		UsageText: "ballena inspect api@1.4.0\n   ballena inspect --json api@1.4.0\n   ballena inspect 3f2a9c",
		Flags:     []cli.Flag{jsonFlag, &cli.BoolFlag{Name: "envelope", Usage: "print the raw DSSE envelope"}, cgroupParentFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() == 1 && !strings.Contains(c.Args().First(), "@") {
				return inspectTask(c, c.Args().First())
			}
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

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:      "gc",
		Usage:     "remove blobs that no release references (a node stops seeding them) and abandoned partial downloads",
		UsageText: "ballena rm api@1.3.0 && ballena gc",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			var removed []string
			err := withStore(c, func(cl *localapi.Client) error {
				return cl.Do(c.Context, http.MethodPost, "/v1/gc", nil, &removed)
			}, func(st *artifact.Store) (err error) {
				if removed, err = st.GC(c.Context); err != nil {
					return err
				}
				// No node runs, so no download does: every partial one is abandoned.
				partials, err := swarm.RemovePartials(st.TempDir(), 0, time.Now(), nil)
				removed = append(removed, partials...)
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
