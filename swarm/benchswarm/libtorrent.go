package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"ballena.dev/swarm/internal/dirstore"
)

// libtorrentScript is one libtorrent-rasterbar session: "seed BLOB TORRENT"
// makes a .torrent of BLOB and seeds it on loopback, printing its port;
// "leech TORRENT DIR PORT" downloads from that port and prints the seconds
// it took. Plain TCP, no uTP, no encryption, no DHT, LSD or port mapping.
const libtorrentScript = `
import sys, time, os
import libtorrent as lt
s = lt.session({
    'listen_interfaces': '127.0.0.1:0', 'enable_dht': False, 'enable_lsd': False,
    'enable_upnp': False, 'enable_natpmp': False, 'enable_incoming_utp': False,
    'enable_outgoing_utp': False, 'out_enc_policy': 1, 'in_enc_policy': 1,
    'alert_mask': 0, 'allow_multiple_connections_per_ip': True,
})
mode = sys.argv[1]
if mode == 'seed':
    blob, tf = sys.argv[2], sys.argv[3]
    fs = lt.file_storage()
    lt.add_files(fs, blob)
    ct = lt.create_torrent(fs)
    lt.set_piece_hashes(ct, os.path.dirname(blob))
    open(tf, 'wb').write(lt.bencode(ct.generate()))
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(tf)
    p.save_path = os.path.dirname(blob)
    p.flags |= lt.torrent_flags.seed_mode
    s.add_torrent(p)
    print('ready', s.listen_port(), flush=True)
    sys.stdin.read()
else:
    tf, d, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(tf)
    p.save_path = d
    h = s.add_torrent(p)
    start = time.time()
    h.connect_peer(('127.0.0.1', port))
    while not h.status().is_seeding:
        time.sleep(0.02)
    print('done', time.time() - start, flush=True)
`

// singleLibtorrent runs a libtorrent seed and a libtorrent leecher, each a
// python3 process, and measures them like the ballena nodes.
func singleLibtorrent(ctx context.Context, work, blob string, size int64) (singleRow, error) {
	// Debian's python3-libtorrent is for the system python, which a pyenv
	// shim in PATH may hide.
	py := ""
	for _, p := range []string{"python3", "/usr/bin/python3"} {
		if exec.Command(p, "-c", "import libtorrent").Run() == nil {
			py = p
			break
		}
	}
	if py == "" {
		return singleRow{}, fmt.Errorf("python3-libtorrent is not installed (apt-get install python3-libtorrent)")
	}
	dir := filepath.Join(work, "libtorrent")
	if err := os.MkdirAll(filepath.Join(dir, "dl"), 0o700); err != nil {
		return singleRow{}, err
	}
	script := filepath.Join(dir, "lt.py")
	if err := os.WriteFile(script, []byte(libtorrentScript), 0o644); err != nil {
		return singleRow{}, err
	}
	tf := filepath.Join(dir, "blob.torrent")
	seed := exec.CommandContext(ctx, py, script, "seed", blob, tf)
	seed.Stderr = os.Stderr
	in, err := seed.StdinPipe()
	if err != nil {
		return singleRow{}, err
	}
	out, err := seed.StdoutPipe()
	if err != nil {
		return singleRow{}, err
	}
	if err := seed.Start(); err != nil {
		return singleRow{}, err
	}
	sd := &daemon{dir: dir, cmd: seed}
	defer sd.kill()
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		return singleRow{}, fmt.Errorf("libtorrent seed did not start")
	}
	port, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "ready "))
	if err != nil {
		return singleRow{}, fmt.Errorf("libtorrent seed said %q", sc.Text())
	}
	s0 := sd.cpu()
	leech := exec.CommandContext(ctx, py, script, "leech", tf, filepath.Join(dir, "dl"), fmt.Sprint(port))
	leech.Stderr = os.Stderr
	start := time.Now()
	lout, err := leech.Output()
	secs := time.Since(start).Seconds()
	s1 := sd.cpu()
	in.Close()
	if err != nil {
		return singleRow{}, fmt.Errorf("libtorrent leecher: %w", err)
	}
	if f := strings.Fields(string(lout)); len(f) == 2 {
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			secs = v // without python's start-up
		}
	}
	got, err := dirstore.SHA256File(filepath.Join(dir, "dl", filepath.Base(blob)))
	if err != nil {
		return singleRow{}, err
	}
	want, err := dirstore.SHA256File(blob)
	if err != nil || got != want {
		return singleRow{}, fmt.Errorf("libtorrent leecher got sha256 %s, want %s (%v)", got, want, err)
	}
	os.RemoveAll(dir)
	gib := float64(size) / (1 << 30)
	lc := (leech.ProcessState.UserTime() + leech.ProcessState.SystemTime()).Seconds()
	return singleRow{
		Name: "libtorrent 2.0 → libtorrent", Seconds: secs, MiBs: float64(size) / mib / secs,
		Seed:    roleFigures{CPU: s1 - s0, PerGiB: (s1 - s0) / gib},
		Leecher: roleFigures{CPU: lc, PerGiB: lc / gib},
		Note:    "plain TCP, no encryption, SHA-1 pieces only (no whole-blob sha256); leecher CPU includes python start-up",
	}, nil
}
