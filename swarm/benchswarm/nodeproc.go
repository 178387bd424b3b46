package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"ballena.dev/internal/procs"
	"ballena.dev/internal/timerslack"
	"ballena.dev/swarm"
	"ballena.dev/swarm/internal/dirstore"
)

// runNode is one swarm node: a libp2p host and an engine, driven over stdin.
func runNode(args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	dir := fs.String("dir", "", "node dir")
	up := fs.Int64("up", 0, "upload cap, bytes/s")
	down := fs.Int64("down", 0, "download cap, bytes/s")
	fs.Parse(args)
	// As ballena node does (--timer-slack, --procs).
	if err := timerslack.Set(timerslack.Default); err != nil {
		return err
	}
	procs.Set(*up, *down)
	if p := os.Getenv("BENCHSWARM_CPUPROFILE"); p != "" {
		f, err := os.Create(filepath.Join(p, filepath.Base(*dir)+".pprof"))
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	h, err := libp2p.New(
		libp2p.NoTransports,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.DisableRelay(),
	)
	if err != nil {
		return err
	}
	defer h.Close()
	st, err := dirstore.New(*dir)
	if err != nil {
		return err
	}
	e, err := swarm.NewEngine(context.Background(), swarm.EngineConfig{
		DataDir: *dir, Host: h, Store: st, UploadLimit: *up, DownloadLimit: *down,
		StallTimeout: time.Minute,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	defer e.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	send := func(m any) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(m)
	}
	send(map[string]any{"ready": peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}})
	totals := func() (up, down int64) {
		for _, ts := range e.Transfers() {
			up += ts.BytesUploaded
			down += ts.BytesDownloaded
		}
		return
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var c cmd
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return err
		}
		switch c.Op {
		case "seed":
			if err := e.Seed(context.Background(), c.Rel); err != nil {
				send(map[string]string{"err": err.Error()})
				continue
			}
			send(map[string]string{"ok": "seed"})
		case "peers":
			var ids []peer.ID
			for _, ai := range c.Peers {
				if ai.ID == h.ID() {
					continue
				}
				h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
				ids = append(ids, ai.ID)
			}
			e.AddPeers(c.Rel.InfoHash, ids)
			send(map[string]string{"ok": "peers"})
		case "download":
			go func() {
				err := e.Download(context.Background(), c.Rel, nil)
				s := ""
				if err != nil {
					s = err.Error()
				}
				done := map[string]any{"err": s}
				for _, ts := range e.Transfers() {
					if ts.Digest == c.Rel.Digest {
						done["read"], done["idleDown"], done["idleUp"] = ts.BytesDownloaded, ts.DownloadIdleSeconds, ts.UploadIdleSeconds
					}
				}
				send(map[string]any{"done": done})
			}()
		case "stats":
			up, down := totals()
			send(map[string]any{"stats": nodeStats{Uploaded: up, Downloaded: down}})
		}
	}
	return sc.Err()
}
