package main

// ballena server: the placement service, one server of a cell; server members,
// server remove.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"ballena.dev/internal/daemon"
	"ballena.dev/placement"
	"ballena.dev/placement/cellca"
)

func serverCommand() *cli.Command {
	return &cli.Command{
		Name:  "server",
		Usage: "run the placement service: one server of a cell (1, 3 or 5 servers replicating with Raft)",
		UsageText: "ballena server --data /var/lib/ballena-server --listen 127.0.0.1:7480\n" +
			"ballena server --data /var/lib/ballena-server --listen 10.0.0.1:7480 --raft-listen 10.0.0.1:7481 --cell cell/ --tls-dir s1-tls/ --bootstrap-expect 3 --join 10.0.0.2:7481 --join 10.0.0.3:7481\n" +
			"ballena server --data /var/lib/ballena-server --listen 127.0.0.1:7480 --metrics-listen 127.0.0.1:9465\n" +
			"ballena server members --json\n" +
			"ballena server remove s3",
		Description: "State (machines, jobs, tasks, allocations, evaluations) is replicated with Raft: a\n" +
			"write is acknowledged once a majority of the cell's servers hold it. Every server keeps\n" +
			"it in badger under DATA/placement (Raft's log and snapshots in DATA/placement/raft).\n" +
			"The API is HTTPS (TLS 1.3) with a certificate from the cell CA; Raft between servers is\n" +
			"mutual TLS and accepts only server certificates of that CA. Every request needs the\n" +
			"admin token or a node's signature, reads included.\n\n" +
			"Without --cell the server is a cell of one and makes its own CA and tokens in DATA\n" +
			"(ca.pem, ca.key, admin.token, join.token, 0600 for secrets). With --cell (from\n" +
			"`ballena cell init`) it takes the CA and tokens from there and its certificate from\n" +
			"--tls-dir (`ballena cell cert`). A new cell's servers start with --bootstrap-expect N and\n" +
			"--join naming the others' Raft addresses; a server added later gives only --join.\n\n" +
			"--metrics-listen serves Prometheus metrics at /metrics over plain HTTP, without auth:\n" +
			"keep it on loopback or a trusted network.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Usage: "data dir for the server's state (default: the global --data)"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:7480", Usage: "HTTPS API listen address"},
			&cli.StringFlag{Name: "advertise", Usage: "API URL other servers, nodes and clients use (default https://LISTEN)"},
			&cli.StringFlag{Name: "raft-listen", Usage: "Raft listen address (default: the API host, port + 1)"},
			&cli.StringFlag{Name: "raft-advertise", Usage: "Raft address other servers dial (default: --raft-listen)"},
			&cli.StringFlag{Name: "cell", Usage: "cell dir from `ballena cell init` (ca.pem, admin.token, join.token); default: a cell of one in DATA"},
			&cli.StringFlag{Name: "tls-dir", Usage: "this server's cert.pem and key.pem from `ballena cell cert` (default: issued in DATA/tls when the cell's ca.key is at hand)"},
			&cli.StringFlag{Name: "name", Usage: "server name for a certificate issued here (default: the host name)"},
			&cli.IntFlag{Name: "bootstrap-expect", Usage: "servers of a new cell: wait for them (see --join), then elect a leader (default 1 without --join)"},
			&cli.StringSliceFlag{Name: "join", Usage: "Raft address of another server of the cell; repeatable"},
			&cli.StringFlag{Name: "token-file", Usage: "admin token file (default CELL/admin.token; created 0600 if absent)"},
			&cli.StringFlag{Name: "join-token-file", Usage: "join token file for machines (default CELL/join.token; created 0600 if absent)"},
			&cli.Float64Flag{Name: "batch-share", Value: placement.DefaultBatchShare, Usage: "largest share of the cell's cpu and memory batch tasks may use"},
			&cli.DurationFlag{Name: "node-ttl", Value: placement.DefaultNodeTTL, Usage: "a machine silent this long is down and its tasks move"},
			metricsListenFlag,
			&cli.StringFlag{Name: "restore", Usage: "start a new cell from a backup (ballena server backup): the first server only, on an empty --data"},
		},
		Subcommands: []*cli.Command{serverMembersCommand(), serverRemoveCommand(), serverBackupCommand()},
		Action:      runServer,
	}
}

func runServer(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageErrorf("server takes no arguments (got %q)", c.Args().First())
	}
	share := c.Float64("batch-share")
	if share <= 0 || share > 1 {
		return usageErrorf("--batch-share %v: want a fraction in (0, 1]", share)
	}
	if c.Duration("node-ttl") < time.Second {
		return usageErrorf("--node-ttl %v: want at least 1s", c.Duration("node-ttl"))
	}
	var joins []string
	for _, j := range c.StringSlice("join") {
		for _, a := range strings.Split(j, ",") {
			if a = strings.TrimSpace(a); a != "" {
				joins = append(joins, a)
			}
		}
	}
	expect := c.Int("bootstrap-expect")
	if expect < 0 || expect > 7 {
		return usageErrorf("--bootstrap-expect %d: want 1, 3 or 5", expect)
	}
	if expect > 1 && len(joins) < expect-1 {
		return usageErrorf("--bootstrap-expect %d needs --join for the %d other servers (got %d)", expect, expect-1, len(joins))
	}
	defer placement.UseServerGC()()
	dir := dataDir(c)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	listen := c.String("listen")
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return usageErrorf("--listen %q: %v", listen, err)
	}
	raftListen := c.String("raft-listen")
	if raftListen == "" {
		p, err := strconv.Atoi(port)
		if err != nil || p == 0 {
			return usageErrorf("--listen %q: give --raft-listen too when the API port is not fixed", listen)
		}
		raftListen = net.JoinHostPort(host, strconv.Itoa(p+1))
	}
	if f := c.String("restore"); f != "" {
		if len(joins) > 0 && expect <= 1 {
			return usageErrorf("--restore starts a new cell: give it to the first server (with --bootstrap-expect), not to one joining")
		}
		in, err := os.Open(f)
		if err != nil {
			return withCode(exitUsage, fmt.Errorf("--restore: %w", err))
		}
		err = placement.RestoreBackup(filepath.Join(dir, "placement"), in)
		in.Close()
		if err != nil {
			return withCode(exitUsage, err)
		}
		fmt.Fprintf(c.App.Writer, "state restored from %s\n", f)
	}
	cellDir := c.String("cell")
	ownCell := cellDir == ""
	if ownCell {
		cellDir = dir
	}
	var reg *prometheus.Registry
	if a := c.String("metrics-listen"); a != "" {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return withCode(exitUnavailable, fmt.Errorf("metrics listen: %w", err))
		}
		defer ln.Close()
		reg = daemon.NewRegistry()
		daemon.ServeMetrics(c.Context, ln, reg)
		fmt.Fprintf(c.App.Writer, "metrics http://%s/metrics\n", ln.Addr())
	}
	ps, err := startServer(c.Context, serverSetup{
		dataDir: dir, cellDir: cellDir, ownCell: ownCell, tlsDir: c.String("tls-dir"), name: c.String("name"),
		listen: listen, advertise: c.String("advertise"), raftListen: raftListen, raftAdvertise: c.String("raft-advertise"),
		adminPath: c.String("token-file"), joinPath: c.String("join-token-file"),
		expect: expect, join: joins, batchShare: share, nodeTTL: c.Duration("node-ttl"), log: slog.Default(),
		metrics: reg,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "placement server listening on %s (server %s, raft %s; cell CA %s; admin token %s, join token %s)\n",
		ps.url, ps.name, ps.raftAddr, ps.caPath, ps.adminPath, ps.joinPath)
	<-ps.done
	return ps.err
}

// serverSetup is what startServer needs: the flags of `server`, or dev's choices.
type serverSetup struct {
	dataDir, cellDir    string
	ownCell             bool // cellDir is the server's own: create the CA and tokens there if absent
	tlsDir, name        string
	listen, advertise   string
	raftListen          string
	raftAdvertise       string
	adminPath, joinPath string
	expect              int
	join                []string
	batchShare          float64
	nodeTTL             time.Duration
	log                 *slog.Logger
	quickElection       bool
	metrics             *prometheus.Registry // nil: no metrics
}

// placementServer is a running server: its addresses and files, and done,
// closed (with err set) when it has stopped.
type placementServer struct {
	name, url, raftAddr         string
	caPath, adminPath, joinPath string
	done                        chan struct{}
	err                         error
}

// startServer opens the state, starts Raft and serves the API until ctx ends.
func startServer(ctx context.Context, ss serverSetup) (*placementServer, error) {
	host, _, _ := net.SplitHostPort(ss.listen)
	hosts := []string{host}
	if ss.advertise != "" {
		if u, err := url.Parse(ss.advertise); err == nil && u.Hostname() != "" {
			hosts = append(hosts, u.Hostname())
		}
	}
	if h, _, err := net.SplitHostPort(orDefault(ss.raftAdvertise, ss.raftListen)); err == nil {
		hosts = append(hosts, h)
	}
	name := ss.name
	if name == "" {
		name, _ = os.Hostname()
		name = orDefault(strings.Split(name, ".")[0], "server")
	}
	caPath := filepath.Join(ss.cellDir, cellca.CAFile)
	var tlsDir string
	var err error
	switch {
	case ss.tlsDir != "":
		tlsDir = ss.tlsDir
	case ss.ownCell || fileExists(filepath.Join(ss.cellDir, cellca.CAKeyFile)):
		// The CA key is at hand (a cell of one, or a cell dir with its key): issue
		// this server's certificate into DATA/tls.
		if ss.ownCell {
			if err := os.MkdirAll(ss.cellDir, 0o700); err != nil {
				return nil, err
			}
			if !fileExists(caPath) {
				if err := cellca.Init(ss.cellDir); err != nil {
					return nil, err
				}
			}
		}
		tlsDir = filepath.Join(ss.dataDir, "tls")
		if !certCovers(tlsDir, caPath, name, hosts) {
			ca, err := cellca.Load(ss.cellDir)
			if err != nil {
				return nil, withCode(exitUsage, err)
			}
			if err := ca.IssueServer(name, hosts, tlsDir); err != nil {
				return nil, err
			}
		}
	default:
		return nil, usageErrorf("server: --cell %s holds no ca.key: give this server's certificate with --tls-dir (ballena cell cert)", ss.cellDir)
	}
	id, err := cellca.LoadIdentity(tlsDir, caPath)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	adminPath := orDefault(ss.adminPath, filepath.Join(ss.cellDir, cellca.AdminTokenFile))
	joinPath := orDefault(ss.joinPath, filepath.Join(ss.cellDir, cellca.JoinTokenFile))
	admin, _, err := placement.LoadOrCreateToken(adminPath)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	join, _, err := placement.LoadOrCreateToken(joinPath)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	ln, err := net.Listen("tcp", ss.listen)
	if err != nil {
		return nil, withCode(exitUnavailable, fmt.Errorf("listen: %w (is another server running?)", err))
	}
	rln, err := net.Listen("tcp", ss.raftListen)
	if err != nil {
		ln.Close()
		return nil, withCode(exitUnavailable, fmt.Errorf("raft listen: %w", err))
	}
	apiURL := ss.advertise
	if apiURL == "" {
		apiURL = "https://" + ln.Addr().String()
	}
	cc := &placement.CellConfig{Identity: id, RaftListener: rln, RaftAdvertise: ss.raftAdvertise, APIURL: apiURL,
		BootstrapExpect: ss.expect, Join: ss.join}
	if ss.quickElection || (ss.expect <= 1 && len(ss.join) == 0) {
		// Alone in its cell: nobody to wait for.
		cc.Timeout = 150 * time.Millisecond
	}
	opts := placement.Options{Dir: filepath.Join(ss.dataDir, "placement"), AdminToken: admin, JoinToken: join,
		BatchShare: ss.batchShare, NodeTTL: ss.nodeTTL, Logger: ss.log, Cell: cc, ForwardTLS: cellca.ClientConfig(id.Pool)}
	if ss.metrics != nil {
		opts.Metrics = ss.metrics
	}
	s, err := placement.Open(opts)
	if err != nil {
		ln.Close()
		rln.Close()
		return nil, err
	}
	ps := &placementServer{name: id.Name, url: apiURL, raftAddr: rln.Addr().String(), caPath: caPath,
		adminPath: adminPath, joinPath: joinPath, done: make(chan struct{})}
	sctx, cancel := context.WithCancel(ctx)
	go s.Run(sctx)
	go func() {
		defer close(ps.done)
		defer cancel()
		ps.err = s.Serve(sctx, ln)
		s.Close()
	}()
	return ps, nil
}

// certCovers reports whether tlsDir holds a certificate of the CA for name that
// covers hosts.
func certCovers(tlsDir, caPath, name string, hosts []string) bool {
	id, err := cellca.LoadIdentity(tlsDir, caPath)
	if err != nil || id.Name != name {
		return false
	}
	for _, h := range hosts {
		if h == "" || h == "0.0.0.0" || h == "::" {
			continue
		}
		if id.Cert.Leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

func serverMembersCommand() *cli.Command {
	return &cli.Command{
		Name:      "members",
		Usage:     "list the cell's servers: name, API and Raft addresses, voter, leader, healthy, last index",
		UsageText: "ballena server members\nballena server members --json --server https://10.0.0.1:7480,https://10.0.0.2:7480 --ca cell/ca.pem",
		Flags:     append(clientFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageErrorf("server members takes no arguments")
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			members, err := cl.Members(c.Context)
			if err != nil {
				return placementErr(err)
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, members)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tAPI\tRAFT\tVOTER\tLEADER\tHEALTHY\tLAST INDEX\tNOTE")
			for _, m := range members {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%v\t%d\t%s\n", m.Name, orDash(m.API), m.Raft, m.Voter, m.Leader, m.Healthy, m.LastIndex, orDash(m.Error))
			}
			return tw.Flush()
		},
	}
}

func serverRemoveCommand() *cli.Command {
	return &cli.Command{
		Name:  "remove",
		Usage: "take a (dead) server out of the cell's configuration, so that quorum is counted without it",
		UsageText: "ballena server remove s3\n" +
			"ballena server remove --server https://10.0.0.1:7480 --ca cell/ca.pem s3",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("server remove takes one server name (see ballena server members)")
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			if err := cl.RemoveServer(c.Context, c.Args().First()); err != nil {
				return placementErr(err)
			}
			fmt.Fprintf(c.App.Writer, "server %s removed from the cell\n", c.Args().First())
			return nil
		},
	}
}

func serverBackupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "write a consistent copy of the cell's state (the Raft snapshot format) to FILE; restore with `server --restore`",
		UsageText: "ballena server backup cell-2026-12-02.snap\n" +
			"ballena server backup --server https://10.0.0.1:7480,https://10.0.0.2:7480 --ca cell/ca.pem cell.snap",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("server backup takes one output file")
			}
			cl, err := placementClient(c)
			if err != nil {
				return err
			}
			path := c.Args().First()
			tmp := path + ".tmp"
			f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("backup file: %w", err))
			}
			err = cl.Backup(c.Context, f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(tmp, path)
			}
			if err != nil {
				os.Remove(tmp)
				return placementErr(err)
			}
			fi, _ := os.Stat(path)
			fmt.Fprintf(c.App.Writer, "backup written to %s (%d bytes)\n", path, fi.Size())
			return nil
		},
	}
}
