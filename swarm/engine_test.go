package swarm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/internal/poll"
)

var _ BlobStore = (*artifact.Store)(nil)

// TestDownloadOverLibp2p moves a blob between two engines that have no plain TCP
// at all: the peer wire can only have run over libp2p streams.
func TestDownloadOverLibp2p(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{})
	leech := newTestEngine(t, EngineConfig{StallTimeout: 20 * time.Second})
	rel := publish(t, seed.store, 6<<20+12345)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	introduce(leech.h, addrInfo(seed.h))
	leech.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last Progress
	if err := leech.Download(ctx, rel, func(p Progress) { last = p }); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, leech.store, rel.Digest)
	if last.Have != rel.Size {
		t.Errorf("last progress has %d of %d bytes", last.Have, rel.Size)
	}
	// Still seeding after the download: a third node fetches from the leecher alone.
	seed.Drop(rel.Digest)
	third := newTestEngine(t, EngineConfig{StallTimeout: 20 * time.Second})
	introduce(third.h, addrInfo(leech.h))
	third.AddPeers(rel.InfoHash, []peer.ID{leech.h.ID()})
	if err := third.Download(ctx, rel, nil); err != nil {
		t.Fatalf("fetch from a node that downloaded it: %v", err)
	}
	checkBlob(t, third.store, rel.Digest)
	var up int64
	for _, ts := range leech.Transfers() {
		if ts.Digest == rel.Digest {
			up = ts.BytesUploaded
			if !ts.Seeding {
				t.Error("leecher is not seeding after its download")
			}
		}
	}
	if up < rel.Size {
		t.Errorf("leecher uploaded %d bytes, want at least %d", up, rel.Size)
	}
	if _, err := os.Stat(leech.stagingDir(rel.Digest)); err != nil {
		t.Errorf("staging gone while seeding from it: %v", err)
	}
	if err := leech.Drop(rel.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leech.stagingDir(rel.Digest)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging left after Drop: %v", err)
	}
	checkBlob(t, leech.store, rel.Digest)
}

// TestNobodyHolds fails after the stall timeout with ErrUnavailable and leaves
// nothing behind.
func TestNobodyHolds(t *testing.T) {
	src := newTestEngine(t, EngineConfig{})
	rel := publish(t, src.store, 1<<20)
	e := newTestEngine(t, EngineConfig{StallTimeout: 2 * time.Second})
	start := time.Now()
	err := e.Download(context.Background(), rel, nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if e.store.HasBlob(rel.Digest) {
		t.Error("blob in store")
	}
	ents, _ := os.ReadDir(e.store.TempDir())
	for _, ent := range ents {
		t.Errorf("left behind in temp dir: %s", ent.Name())
	}
	if len(e.Transfers()) != 0 {
		t.Errorf("transfers left: %+v", e.Transfers())
	}
}

// TestWrongInfo refuses a release whose torrent does not describe its blob.
func TestCheckInfo(t *testing.T) {
	s := newDirStore(t, t.TempDir())
	rel := publish(t, s, 300<<10)
	info, err := artifact.TorrentInfo(s.BlobPath(rel.Digest), rel.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkInfo(&info, rel); err != nil {
		t.Fatal(err)
	}
	bad := rel
	bad.Size++
	if checkInfo(&info, bad) == nil {
		t.Error("size mismatch accepted")
	}
	bad = rel
	bad.Digest = "00" + rel.Digest[2:]
	if checkInfo(&info, bad) == nil {
		t.Error("name mismatch accepted")
	}
}

// TestCappedLargeDownload moves a blob larger than anacrolix's default
// unverified-bytes window between capped engines on artifact.Store, with
// super-seeding hiding most pieces at first. Both once stalled: the hidden
// pieces filled that window, and the upload limiter lost writer wake-ups.
func TestCappedLargeDownload(t *testing.T) {
	mk := func() (*Engine, *artifact.Store, host.Host) {
		dir := t.TempDir()
		st, err := artifact.Open(filepath.Join(dir, "store"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		h, err := newTestHost(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		e, err := NewEngine(context.Background(), EngineConfig{
			DataDir: filepath.Join(dir, "torrent"), Host: h, Store: st,
			UploadLimit: 32 << 20, DownloadLimit: 32 << 20, StallTimeout: 20 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e, st, h
	}
	seed, sst, sh := mk()
	src := newDirStore(t, t.TempDir())
	rel := publish(t, src, 80<<20)
	if _, _, err := sst.IngestFile(context.Background(), src.BlobPath(rel.Digest), rel.Digest); err != nil {
		t.Fatal(err)
	}
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	leech, lst, lh := mk()
	introduce(lh, addrInfo(sh))
	leech.AddPeers(rel.InfoHash, []peer.ID{sh.ID()})
	if err := leech.Download(context.Background(), rel, nil); err != nil {
		t.Fatal(err)
	}
	if err := lst.VerifyBlob(context.Background(), rel.Digest); err != nil {
		t.Fatal(err)
	}
}

// TestIdleTime counts the time a download waits with nobody to fetch from, and
// stops counting once it is done.
func TestIdleTime(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{})
	leech := newTestEngine(t, EngineConfig{StallTimeout: 20 * time.Second})
	rel := publish(t, seed.store, 2<<20)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	stats := func() TransferStats {
		for _, ts := range leech.Transfers() {
			if ts.Digest == rel.Digest {
				return ts
			}
		}
		return TransferStats{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- leech.Download(ctx, rel, nil) }()
	// No peer known yet: the download idles.
	poll.Until(t, 10*time.Second, "download idle time", func() bool { return stats().DownloadIdleSeconds >= 1 })
	introduce(leech.h, addrInfo(seed.h))
	leech.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	idle := stats().DownloadIdleSeconds
	if idle < 1 {
		t.Fatalf("download idle %.2fs after waiting at least 1s for a peer", idle)
	}
	// Seeding now: a seed waiting for requests is not a download idling.
	n := leech.samples.Load()
	poll.Until(t, 10*time.Second, "two more samples", func() bool { return leech.samples.Load() >= n+2 })
	if got := stats().DownloadIdleSeconds; got != idle {
		t.Errorf("download idle went on after the download: %.2fs -> %.2fs", idle, got)
	}
}

// TestDownloadDiskFull fails a download whose blob does not fit at once, with
// ENOSPC rather than a stall, and leaves no staging file.
func TestDownloadDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	seed := newTestEngine(t, EngineConfig{})
	leech := newTestEngine(t, EngineConfig{StallTimeout: time.Minute})
	tmp := leech.store.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", tmp).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", tmp).Run() })
	rel := publish(t, seed.store, 4<<20)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	introduce(leech.h, addrInfo(seed.h))
	leech.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := leech.Download(ctx, rel, nil)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no room") {
		t.Fatalf("download onto a full disk: %v; want a no-room error with ENOSPC", err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in the temp dir: %v", ents)
	}
}

// TestSeedServesWholePieces moves blobs whose last piece is shorter than the
// others, or is the only piece and short, between two engines. A seed serves
// whole-piece requests from anacrolix's pool of buffers the size of its
// torrent's chunk (see Seed), and a request of any other length (the short
// tail) from a buffer of its own: both must reach the leecher whole.
func TestSeedServesWholePieces(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{})
	leech := newTestEngine(t, EngineConfig{StallTimeout: 20 * time.Second})
	introduce(leech.h, addrInfo(seed.h))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pl := artifact.PieceLength(1 << 20)
	for _, size := range []int64{2 * pl, 2*pl + 1, pl - 1} {
		rel := publish(t, seed.store, size)
		if rel.PieceLength != pl {
			t.Fatalf("piece length %d, want %d", rel.PieceLength, pl)
		}
		if err := seed.Seed(ctx, rel); err != nil {
			t.Fatal(err)
		}
		leech.AddPeers(rel.InfoHash, []peer.ID{seed.h.ID()})
		if err := leech.Download(ctx, rel, nil); err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		checkBlob(t, leech.store, rel.Digest)
	}
}
