package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"image/png"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"ballena.dev/internal/poll"
	"ballena.dev/placement"
	"ballena.dev/signing"
)

// TestUIInBrowser drives Debian's headless Chromium through the web UI of a
// real cell: an in-process `ballena server` and two `ballena node` processes,
// the first publishing a release that the second, rate-limited, downloads to
// run the job's second task. The browser opens the one-time login URL from
// `ballena ui --url` and keeps the jobs page open while the job is submitted:
// the job appears, a task waits for its node's download, then both run, all
// without a reload (the events stream). Meanwhile a second tab sees the
// download in progress on the release's page. Then: the page with JavaScript
// off, a node, the release (provenance, held by both nodes), and the tasks'
// states changing live when the job is stopped. With
// BALLENA_UI_SCREENSHOTS=DIR (make ui-screenshots) the pages are saved there
// as ui-*.png.
func TestUIInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server, two nodes and a browser")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is needed: apt-get install chromium (.ci/run installs it)")
	}
	if os.Geteuid() != 0 {
		t.Skip("starting tasks needs root (cgroups and namespaces)")
	}
	shots := os.Getenv("BALLENA_UI_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	dir := t.TempDir()
	srvDir := filepath.Join(dir, "server")
	apiURL := uiTestServer(t, srvDir)
	ca, join := filepath.Join(srvDir, "ca.pem"), filepath.Join(srvDir, "join.token")
	srv := []string{"--server", apiURL, "--ca", ca, "--token-file", filepath.Join(srvDir, "admin.token")}

	// Two nodes trusting one release key; the first publishes hello@1.0.0.
	if code, _, msg := run(t, dir, "key", "generate", "--dir", dir, "release"); code != 0 {
		t.Fatal(msg)
	}
	policy := fmt.Sprintf("keys:\n  - path: %s\n    names: [\"hello\"]\n", filepath.Join(dir, "release.pub"))
	var data []string
	for _, n := range []string{"a", "b"} {
		d := filepath.Join(dir, n)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "trust.yaml"), []byte(policy), 0o600); err != nil {
			t.Fatal(err)
		}
		data = append(data, d)
	}
	nodeArgs := []string{"--server", apiURL, "--ca", ca, "--join-token-file", join}
	a := startNodeAt(t, "uia", data[0], append(nodeArgs, "--label", "rack=r1")...)
	// The second node downloads slowly (8 MiB at 512 KiB/s), so that its
	// transfer is seen in progress.
	startNodeAt(t, "uib", data[1], append(nodeArgs, "--label", "rack=r2", "--bootstrap", a.addr, "--download-limit", "512KiB")...)
	commit := strings.Repeat("5eed", 10)
	if out, err := exec.Command(ballenaBinary(t), "publish", "--data", data[0], "--key", filepath.Join(dir, "release.key"),
		"--name", "hello", "--version", "1.0.0", "--builder-id", "https://ci.example/ballena-builder",
		"--source-repo", "https://git.example/hello", "--source-commit", commit, sampleWhale(t)).CombinedOutput(); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	pub, err := signing.LoadPublicKey(filepath.Join(dir, "release.pub"))
	if err != nil {
		t.Fatal(err)
	}
	keyID := signing.KeyID(pub)

	tc, err := cellTLS(nil, ca)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := placement.NewClient(apiURL, readFile(t, filepath.Join(srvDir, "admin.token")), placement.WithTLS(tc))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	poll.Until(t, 30*time.Second, "both nodes ready", func() bool {
		nodes, err := admin.Nodes(ctx)
		return err == nil && len(nodes) == 2 && nodes[0].Status == placement.NodeReady && nodes[1].Status == placement.NodeReady
	})
	jobFile := filepath.Join(dir, "hello.yaml")
	base := 26000 + os.Getpid()%20000
	if err := os.WriteFile(jobFile, fmt.Appendf(nil, "name: hello\nartifact: hello@1.0.0\ncount: 2\ndistinct_hosts: true\n"+
		"resources: {cpu: 100m, memory: 64MiB, pids: 64}\npriority: prod\nargs: [--port-base, %q]\n", fmt.Sprint(base)), 0o644); err != nil {
		t.Fatal(err)
	}

	code, out, msg := run(t, dir, append([]string{"ui", "--url"}, srv...)...)
	if code != 0 {
		t.Fatalf("ui --url: %d %s", code, msg)
	}
	loginURL := strings.TrimSpace(out)
	if !strings.HasPrefix(loginURL, apiURL+"/ui/login?token=") {
		t.Fatalf("ui --url printed %q", out)
	}

	// The browser trusts exactly this server's key (the cell CA is not in its store).
	spki := serverSPKI(t, apiURL, tc)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1360, 900),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", spki),
	}
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelA()
	bctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	bctx, cancelT := context.WithTimeout(bctx, 4*time.Minute)
	defer cancelT()
	do := func(ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
	}
	shot := func(ctx context.Context, name string) {
		t.Helper()
		buf := browse(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
		img, err := png.Decode(bytes.NewReader(buf))
		if err != nil || img.Bounds().Dx() < 1000 {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }

	// Log in: the token is consumed and leaves the address bar; the cookie is
	// out of the page's reach.
	do(bctx, "open the login URL", chromedp.Navigate(loginURL), chromedp.WaitVisible(css(`body[data-live="yes"]`)))
	loc := browse(t, bctx, "location", chromedp.Location())
	cookies := browse(t, bctx, "document.cookie", chromedp.Evaluate[string](`document.cookie`))
	if loc != apiURL+"/ui/jobs" || cookies != "" {
		t.Fatalf("after login: at %q with document.cookie %q; want /ui/jobs and an HttpOnly cookie", loc, cookies)
	}

	// Live: the jobs page, marked, open while the job is submitted. The job
	// appears, its second task waits for its node's download, then runs: all
	// without a reload.
	browse(t, bctx, "mark the page", chromedp.Evaluate[int](`window.notReloaded = 42`))
	if code, out, msg := run(t, dir, append(append([]string{"job", "run"}, srv...), jobFile)...); code != 0 {
		t.Fatalf("job run: %d %s %s", code, out, msg)
	}
	browse(t, bctx, "a task starting (its node downloading)", chromedp.Poll[bool](
		`document.querySelector("#job-hello tr.state-starting") !== null`, chromedp.WithPollingTimeout(60*time.Second)))

	// Meanwhile, in another tab: the release, with the download in progress.
	rel, cancelRel := chromedp.NewContext(bctx)
	defer cancelRel()
	do(rel, "open the release", chromedp.Navigate(apiURL+"/ui/releases/hello@1.0.0"), chromedp.WaitVisible(css(`#holders`)))
	poll.Until(t, 30*time.Second, "the second node's download on the release's page", func() bool {
		n := browse(t, rel, "fetching rows", chromedp.Evaluate[int](`document.querySelectorAll("tr.spread-fetching progress").length`))
		if n == 1 {
			return true
		}
		do(rel, "reload", chromedp.Reload(), chromedp.WaitVisible(css(`#holders`)))
		return false
	})
	have := browse(t, rel, "progress", chromedp.Evaluate[[]int](`(() => { const p = document.querySelector("tr.spread-fetching progress"); return [+p.value, +p.max]; })()`))
	if len(have) != 2 || have[0] >= have[1] || have[1] < 8<<20 {
		t.Fatalf("download progress %v: want part of an 8 MiB blob", have)
	}
	shot(rel, "ui-release-fetching.png")
	cancelRel()

	browse(t, bctx, "both tasks running, live", chromedp.Poll[bool](
		`document.querySelectorAll("#job-hello tr.state-running").length === 2`, chromedp.WithPollingTimeout(90*time.Second)))
	if marker := browse(t, bctx, "the mark", chromedp.Evaluate[int](`window.notReloaded`)); marker != 42 {
		t.Fatal("the page was reloaded; the changes should have arrived over the events stream")
	}
	jobText := browse(t, bctx, "the job's text", chromedp.Text(css(`#job-hello`)))
	if !strings.Contains(jobText, "2 running") || !strings.Contains(jobText, "hello@1.0.0") {
		t.Fatalf("jobs page says:\n%s", jobText)
	}
	live := browse(t, bctx, "the live panel", chromedp.Text(css(`#live-log`)))
	if !strings.Contains(live, "job hello v1") || !strings.Contains(live, ": running") {
		t.Fatalf("live panel:\n%s", live)
	}
	shot(bctx, "ui-jobs.png")

	// The same page with JavaScript off, in another tab of the same browser
	// (the session cookie is shared): complete, only not live.
	nojs, cancelNoJS := chromedp.NewContext(bctx)
	if err := chromedp.Do(nojs, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		return err
	}), chromedp.Navigate(apiURL+"/ui/jobs"), chromedp.WaitVisible(css(`#task-1.state-running`))); err != nil {
		t.Fatalf("browser without JavaScript: %v", err)
	}
	if st := browse(t, nojs, "the live status without JavaScript", chromedp.Text(css(`#live-status`))); st != "not live (JavaScript off)" {
		t.Fatalf("without JavaScript the page says %q", st)
	}
	cancelNoJS()

	// A node, from a task's row: healthy, holding the release.
	do(bctx, "open a node", chromedp.Click(css(`#task-0 a[href^="/ui/nodes/"]`)), chromedp.WaitVisible(css(`h1 .health-healthy`)))
	nodeText := browse(t, bctx, "the node's text", chromedp.Text(css(`main`)))
	if !strings.Contains(nodeText, "hello@1.0.0") || !strings.Contains(nodeText, "rack=r") {
		t.Fatalf("node page says:\n%s", nodeText)
	}
	shot(bctx, "ui-node.png")

	// The release, from the node: provenance as the nodes report it with their
	// heartbeats, and its spread over both nodes.
	do(bctx, "open the release", chromedp.Click(css(`ul.releases a[href="/ui/releases/hello@1.0.0"]`)), chromedp.WaitVisible(css(`#holders`)))
	var relText string
	poll.Until(t, 30*time.Second, "the release's provenance and spread on its page", func() bool {
		relText = browse(t, bctx, "the release's text", chromedp.Text(css(`main`)))
		if strings.Contains(relText, keyID) && strings.Contains(relText, "held by 2 of 2 nodes") {
			return true
		}
		do(bctx, "reload", chromedp.Reload(), chromedp.WaitVisible(css(`#holders`)))
		return false
	})
	for _, want := range []string{"https://ci.example/ballena-builder", "https://git.example/hello", commit, "sha256:"} {
		if !strings.Contains(relText, want) {
			t.Fatalf("release page lacks %q:\n%s", want, relText)
		}
	}
	shot(bctx, "ui-release.png")

	// Live: the job's page, marked; stopping the job changes its tasks' states
	// on the page without a reload, and the live panel lists the changes.
	do(bctx, "open the job", chromedp.Navigate(apiURL+"/ui/jobs/hello"), chromedp.WaitVisible(css(`body[data-live="yes"]`)),
		chromedp.WaitVisible(css(`#task-1.state-running`)))
	browse(t, bctx, "mark the page", chromedp.Evaluate[int](`window.notReloaded = 42`))
	if code, _, msg := run(t, dir, append(append([]string{"job", "stop"}, srv...), "hello")...); code != 0 {
		t.Fatalf("job stop: %s", msg)
	}
	browse(t, bctx, "see the tasks stop, live", chromedp.Poll[bool](
		`document.querySelectorAll("tr.state-running").length === 0 && document.querySelectorAll("tr.state-complete, tr.state-done").length === 2`,
		chromedp.WithPollingTimeout(60*time.Second)))
	if marker := browse(t, bctx, "the mark", chromedp.Evaluate[int](`window.notReloaded`)); marker != 42 {
		t.Fatal("the page was reloaded; the change should have arrived over the events stream")
	}
	live = browse(t, bctx, "the live panel", chromedp.Text(css(`#live-log`)))
	if !strings.Contains(live, "job hello stopped") || !strings.Contains(live, "task hello[0]") {
		t.Fatalf("live panel:\n%s", live)
	}
	shot(bctx, "ui-live.png")
}

// browse runs one browser action and returns its value, failing the test on error.
func browse[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// uiTestServer runs `ballena server` in-process with a short node TTL (nodes
// heartbeat every second) and returns its API URL.
func uiTestServer(t *testing.T, dir string) string {
	t.Helper()
	return cliServer(t, dir, "--node-ttl", "3s")
}

// serverSPKI is base64(sha256(SubjectPublicKeyInfo)) of the server's
// certificate, verified against the cell CA: what Chromium's
// --ignore-certificate-errors-spki-list takes.
func serverSPKI(t *testing.T, apiURL string, tc *tls.Config) string {
	t.Helper()
	u, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tc.Clone()
	cfg.ServerName = u.Hostname()
	conn, err := tls.Dial("tcp", u.Host, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
