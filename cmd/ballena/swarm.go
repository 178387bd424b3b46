package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"

	"ballena.dev/artifact"
	"ballena.dev/internal/daemon"
	"ballena.dev/internal/localapi"
	"ballena.dev/internal/units"
	"ballena.dev/launcher"
	"ballena.dev/swarm"
)

func fetchCommand() *cli.Command {
	return &cli.Command{
		Name:      "fetch",
		Usage:     "fetch a signed release from the mesh through the running node, verify it and keep seeding it",
		ArgsUsage: "NAME@VERSION",
		UsageText: "ballena fetch api@1.4.0\nballena fetch api@1.4.0 --timeout 30s --json",
		Description: "Exit codes: 3 the trust policy refuses the release, 4 no node in reach has it,\n" +
			"5 no node running here, or holders known but the wait ran out.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Value: daemon.DefaultFetchTimeout, Usage: "give up after this long"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			ref, err := refArg(c)
			if err != nil {
				return err
			}
			if c.Duration("timeout") <= 0 {
				return usageErrorf("fetch: --timeout must be positive")
			}
			cl, err := localapi.Dial(c.String("data"))
			if err != nil {
				return withCode(exitUnavailable, fmt.Errorf("fetch %s: %w: start `ballena node` first", ref, err))
			}
			// The daemon bounds the fetch; this bound only covers a daemon that stops answering.
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout")+30*time.Second)
			defer cancel()
			resp, err := cl.Stream(ctx, http.MethodPost, "/v1/fetch", localapi.FetchRequest{Ref: ref.String(), Timeout: c.Duration("timeout").Seconds()})
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			show := newProgressView(c.App.ErrWriter, ref.String())
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				var ev localapi.FetchEvent
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					return fmt.Errorf("fetch %s: bad answer from the node: %w", ref, err)
				}
				switch {
				case ev.Progress != nil:
					if !c.Bool("json") {
						show.update(*ev.Progress)
					}
				case ev.Error != nil:
					show.finish()
					return ev.Error
				case ev.Release != nil:
					show.finish()
					if c.Bool("json") {
						return printJSON(c.App.Writer, ev.Release)
					}
					fmt.Fprintf(c.App.Writer, "fetched %s sha256:%s (%s), verified and seeding\n",
						ev.Release.Ref(), ev.Release.Digest, units.FormatBytes(ev.Release.Size))
					return nil
				}
			}
			if err := sc.Err(); err != nil {
				return withCode(exitUnavailable, fmt.Errorf("fetch %s: %w", ref, err))
			}
			return withCode(exitUnavailable, fmt.Errorf("fetch %s: the node hung up before the fetch ended", ref))
		},
	}
}

// progressView draws a progress bar on a terminal and plain lines, at most
// one a second, elsewhere.
type progressView struct {
	w     io.Writer
	label string
	tty   bool
	bar   *progressbar.ProgressBar
	last  time.Time
}

func newProgressView(w io.Writer, label string) *progressView {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = isatty.IsTerminal(f.Fd())
	}
	return &progressView{w: w, label: label, tty: tty}
}

func (v *progressView) update(p localapi.FetchProgress) {
	if v.tty {
		if v.bar == nil && p.Total > 0 {
			v.bar = progressbar.NewOptions64(p.Total,
				progressbar.OptionSetWriter(v.w),
				progressbar.OptionSetDescription(v.label),
				progressbar.OptionShowBytes(true),
				progressbar.OptionShowCount(),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionClearOnFinish(),
			)
		}
		if v.bar != nil {
			_ = v.bar.Set64(p.Have)
		}
		return
	}
	if time.Since(v.last) < time.Second && p.Have != p.Total {
		return
	}
	v.last = time.Now()
	pct := 0.0
	if p.Total > 0 {
		pct = 100 * float64(p.Have) / float64(p.Total)
	}
	fmt.Fprintf(v.w, "%s: %s of %s (%.0f%%), %d peers, %s/s\n",
		v.label, units.FormatBytes(p.Have), units.FormatBytes(p.Total), pct, p.Peers, units.FormatBytes(int64(p.Rate)))
}

func (v *progressView) finish() {
	if v.bar != nil {
		_ = v.bar.Finish()
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show the running node: ID and addresses, peers, what it holds, transfers with rates, how it confines tasks",
		UsageText: "ballena status\nballena status --json | jq -r .id",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			cl, err := localapi.Dial(c.String("data"))
			if err != nil {
				return withCode(exitUnavailable, fmt.Errorf("status: %w: start `ballena node` first", err))
			}
			var s daemon.Status
			if err := cl.Do(c.Context, http.MethodGet, "/v1/status", nil, &s); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, s)
			}
			if err := printStatus(c.App.Writer, s.Status); err != nil {
				return err
			}
			return printIsolation(c.App.Writer, s.Isolation)
		},
	}
}

func printStatus(out io.Writer, s swarm.Status) error {
	fmt.Fprintf(out, "node %s\n", s.ID)
	for _, a := range s.Addrs {
		fmt.Fprintf(out, "  %s\n", a)
	}
	fmt.Fprintf(out, "peers: %d connected, %d in the DHT\n", len(s.Peers), s.DHTPeers)
	for _, p := range s.Peers {
		fmt.Fprintf(out, "  %s %s\n", p.ID, strings.Join(p.Addrs, " "))
	}
	if s.Gate.Allowlist != "" {
		fmt.Fprintf(out, "allowlist: %d peers (%s)\n", s.Gate.Allowed, s.Gate.Allowlist)
	}
	for _, reason := range slices.Sorted(maps.Keys(s.Gate.Refused)) {
		fmt.Fprintf(out, "  refused %d connections: %s\n", s.Gate.Refused[reason], reason)
	}
	if s.Gossip.Rejected > 0 || len(s.Gossip.Graylisted) > 0 {
		fmt.Fprintf(out, "gossip: %d announcements rejected; graylisted: %s\n", s.Gossip.Rejected, orDash(strings.Join(s.Gossip.Graylisted, " ")))
	}
	for _, t := range s.RevokedTasks {
		fmt.Fprintf(out, "task %s (%s) runs on a revoked key and will not restart: %s\n", t.ID, t.Artifact, t.Reason)
	}
	if len(s.BannedPeers) > 0 {
		fmt.Fprintf(out, "banned for bad pieces: %s\n", strings.Join(s.BannedPeers, " "))
	}
	fmt.Fprintf(out, "holds: %d releases\n", len(s.Holds))
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, r := range s.Holds {
		fmt.Fprintf(w, "  %s\t%s\t%s\tsha256:%s\n", r.Ref(), r.Kind, units.FormatBytes(r.Size), r.Digest[:16])
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "transfers: %d\n", len(s.Transfers))
	if len(s.Transfers) == 0 {
		return nil
	}
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "  NAME\tSTATE\tHAVE\tPEERS\tDOWN/s\tUP/s\tUPLOADED\n")
	for _, t := range s.Transfers {
		state := "downloading"
		if t.Seeding {
			state = "seeding"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s/%s\t%d\t%s\t%s\t%s\n", orDash(t.Name), state,
			units.FormatBytes(t.BytesHave), units.FormatBytes(t.BytesTotal), t.Peers,
			units.FormatBytes(int64(t.DownloadRate)), units.FormatBytes(int64(t.UploadRate)), units.FormatBytes(t.BytesUploaded))
	}
	return w.Flush()
}

// printIsolation says how the node confines tasks, loudly where it cannot.
func printIsolation(out io.Writer, iso launcher.IsolationStatus) error {
	seccomp := "seccomp filter on every task (unless a task opts out)"
	if !iso.Seccomp {
		seccomp = "NO SECCOMP: the kernel has no seccomp filters"
	}
	userns := "a user namespace per task, ids " + iso.IDRange
	if !iso.UserNS {
		userns = "NO USER NAMESPACES: uid 0 in a task is uid 0 on the host (without capabilities): " + iso.UserNSError
	}
	roots := "image roots idmapped"
	if iso.UserNS && !iso.IDMappedMounts {
		roots = "image roots copied and chowned per task (no idmapped mounts: " + iso.IDMappedError + ")"
	}
	if !iso.UserNS {
		roots = ""
	}
	_, err := fmt.Fprintf(out, "isolation: %s; %s%s\n", seccomp, userns, map[bool]string{true: "; " + roots, false: ""}[roots != ""])
	return err
}

func torrentCommand() *cli.Command {
	return &cli.Command{
		Name:      "torrent",
		Usage:     "write a held release's standard .torrent (v1) and print its magnet link",
		ArgsUsage: "NAME@VERSION",
		UsageText: "ballena torrent api@1.4.0 --out api.torrent && aria2c api.torrent",
		Description: "With a node running, the .torrent announces to the node's HTTP tracker (ballena node\n" +
			"--bt-listen ADDR --tracker-listen ADDR), which points standard clients at the node's\n" +
			"plain TCP BitTorrent listener. Without a node, it has no tracker.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "file to write the .torrent to (required)"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			ref, err := refArg(c)
			if err != nil {
				return err
			}
			if c.String("out") == "" {
				return usageErrorf("torrent: --out FILE is required, e.g. ballena torrent %s --out %s.torrent", ref, ref.Name)
			}
			var ans localapi.TorrentAnswer
			err = withStore(c, func(cl *localapi.Client) error {
				return cl.Do(c.Context, http.MethodGet, "/v1/torrent/"+ref.String(), nil, &ans)
			}, func(st *artifact.Store) error {
				rel, _, err := st.Release(ref)
				if err != nil {
					return err
				}
				if !st.HasBlob(rel.Digest) {
					return fmt.Errorf("torrent %s: blob %w here: fetch it first", ref, artifact.ErrNotFound)
				}
				info, err := artifact.TorrentInfo(st.BlobPath(rel.Digest), rel.Digest)
				if err != nil {
					return err
				}
				b, err := bencode.Marshal(info)
				if err != nil {
					return err
				}
				mi := &metainfo.MetaInfo{InfoBytes: b, CreatedBy: "ballena", CreationDate: rel.PublishedAt.Unix(), Comment: ref.String()}
				ans, err = daemon.TorrentOf(mi, rel)
				return err
			})
			if err != nil {
				return err
			}
			if err := os.WriteFile(c.String("out"), ans.Torrent, 0o644); err != nil {
				return fmt.Errorf("torrent: %w", err)
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, map[string]string{"torrent": c.String("out"), "magnet": ans.Magnet})
			}
			fmt.Fprintf(c.App.Writer, "wrote %s\n%s\n", c.String("out"), ans.Magnet)
			return nil
		},
	}
}
