package main

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/placement/cellca"
)

// floorRow names the floor's row.
const floorRow = "floor: TLS + SHA-1 + SHA-256"

// singleFloor measures what moving the blob costs at the least on this
// machine, with the work every Ballena transfer must do and nothing else: one
// TLS 1.3 connection over loopback (AES-GCM, as libp2p's TLS negotiates here),
// the receiver checking each piece's SHA-1 and the whole blob's SHA-256 and
// writing it to the page cache, the sender reading it from the page cache. Both
// ends run in this process and their CPU is counted together. The goal of
// issue 18 was set just above this figure; the machine it runs on varies by
// day, so it is measured in the same run as the rows it is compared with.
func singleFloor(ctx context.Context, path string, size int64) (singleRow, error) {
	id, err := floorIdentity(filepath.Join(filepath.Dir(path), "floor-ca"))
	if err != nil {
		return singleRow{}, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", id.APIConfig())
	if err != nil {
		return singleRow{}, err
	}
	defer ln.Close()
	sent := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		f, err := os.Open(path)
		if err != nil {
			sent <- err
			return
		}
		defer f.Close()
		_, err = io.CopyBuffer(c, f, make([]byte, 1<<20))
		sent <- err
	}()

	dst := path + ".floor"
	defer os.Remove(dst)
	c0 := selfCPU()
	start := time.Now()
	d := tls.Dialer{Config: &tls.Config{RootCAs: id.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}}
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return singleRow{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	f, err := os.Create(dst)
	if err != nil {
		return singleRow{}, err
	}
	defer f.Close()
	pieceLen := artifact.PieceLength(size)
	buf := make([]byte, pieceLen)
	whole := sha256.New()
	var n int64
	for n < size {
		k, err := io.ReadFull(conn, buf[:min(pieceLen, size-n)])
		if err != nil {
			return singleRow{}, fmt.Errorf("read at %d: %w", n, err)
		}
		sha1.Sum(buf[:k])
		whole.Write(buf[:k])
		if _, err := f.Write(buf[:k]); err != nil {
			return singleRow{}, err
		}
		n += int64(k)
	}
	if err := <-sent; err != nil {
		return singleRow{}, fmt.Errorf("send: %w", err)
	}
	secs := time.Since(start).Seconds()
	cpu := selfCPU() - c0
	return singleRow{
		Name: floorRow, Seconds: secs, MiBs: float64(size) / mib / secs,
		Seed: roleFigures{CPU: cpu, PerGiB: cpu / (float64(size) / (1 << 30))},
		Note: "one process, one TLS 1.3 connection: page cache → AES-GCM → loopback → SHA-1 per piece, SHA-256 whole, page cache; CPU both ends together (shown under seed)",
	}, nil
}

// floorIdentity makes a cell CA in dir and a server certificate from it: the
// TLS the placement API serves, so the floor's handshake and cipher are a real
// deployment's.
func floorIdentity(dir string) (*cellca.Identity, error) {
	if err := cellca.Init(dir); err != nil {
		return nil, err
	}
	ca, err := cellca.Load(dir)
	if err != nil {
		return nil, err
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := ca.IssueServer("floor", nil, tlsDir); err != nil {
		return nil, err
	}
	return cellca.LoadIdentity(tlsDir, "")
}
