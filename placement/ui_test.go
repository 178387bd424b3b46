package placement

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"ballena.dev/placement/cellca"
)

// uiGet fetches a UI page with hc (which does not follow redirects).
func uiGet(t *testing.T, hc *http.Client, u string, cookie *http.Cookie) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func noRedirects(tr http.RoundTripper) *http.Client {
	return &http.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// sessionCookie opens a login URL and returns the session cookie it sets.
func sessionCookie(t *testing.T, hc *http.Client, loginURL string) *http.Cookie {
	t.Helper()
	resp, body := uiGet(t, hc, loginURL, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/jobs" {
		t.Fatalf("login: %s to %q, want 303 to /ui/jobs: %s", resp.Status, resp.Header.Get("Location"), body)
	}
	for _, c := range resp.Cookies() {
		if c.Name == uiCookie {
			return c
		}
	}
	t.Fatalf("login set no %s cookie", uiCookie)
	return nil
}

// TestUILoginIsOneTime: the login URL works once and within its 5 minutes; the
// cookie it sets is HttpOnly, SameSite=Strict, limited to /ui/ and expires;
// pages need the cookie (or the admin token); the token is in no page; logging
// out ends the session.
func TestUILoginIsOneTime(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	n := ts.addNode(t, 4000, 8, nil)
	ts.submit(t, job("api", 2, 100, 64, BandProd))
	n.converge()
	hc := noRedirects(http.DefaultTransport)

	// No credentials: refused, and the page says what to do, with no data.
	resp, body := uiGet(t, hc, ts.url+"/ui/jobs", nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "ballena ui --url") || strings.Contains(body, "api@1.0.0") {
		t.Fatalf("no cookie: %s\n%s", resp.Status, body)
	}
	for _, bad := range []string{"/ui/login", "/ui/login?token=" + strings.Repeat("0", 64)} {
		if resp, _ := uiGet(t, hc, ts.url+bad, nil); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s: %s, want 403", bad, resp.Status)
		}
	}

	loginURL, exp, err := ts.admin.UILoginURL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := exp.Sub(ts.clock.Now()); d != loginTokenTTL {
		t.Fatalf("login token good for %v, want %v", d, loginTokenTTL)
	}
	token := strings.TrimPrefix(loginURL, ts.url+"/ui/login?token=")
	if len(token) != 64 {
		t.Fatalf("login URL %q", loginURL)
	}
	cookie := sessionCookie(t, hc, loginURL)
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/ui/" || cookie.MaxAge != int(sessionTTL/time.Second) {
		t.Fatalf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/ui/, Max-Age 12h", cookie)
	}
	if cookie.Secure {
		t.Fatalf("cookie Secure over plain HTTP would never be sent back")
	}
	if resp, _ := uiGet(t, hc, loginURL, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("second use of the login URL: %s, want 403", resp.Status)
	}

	// With the cookie: the jobs page lists api's tasks, running on the node.
	resp, body = uiGet(t, hc, ts.url+"/ui/jobs", cookie)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("jobs page: %s\n%s", resp.Status, body)
	}
	for _, want := range []string{"api@1.0.0", `id="task-0" class="state-running"`, `id="task-1" class="state-running"`, "/ui/nodes/" + n.NodeID(), "2 running"} {
		if !strings.Contains(body, want) {
			t.Fatalf("jobs page lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, token) || strings.Contains(body, testAdmin) || strings.Contains(body, cookie.Value) {
		t.Fatal("a page shows a secret")
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || resp.Header.Get("Referrer-Policy") != "no-referrer" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("headers: %v", resp.Header)
	}
	for _, page := range []string{"/ui/jobs/api", "/ui/nodes", "/ui/nodes/" + n.NodeID(), "/ui/releases", "/ui/releases/api@1.0.0", "/ui/events", "/ui/static/ui.js", "/ui/static/ui.css"} {
		if resp, body := uiGet(t, hc, ts.url+page, cookie); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s\n%s", page, resp.Status, body)
		}
	}
	// The job's page: its recent evaluations, newest first.
	ts.submit(t, job("api", 3, 100, 64, BandProd))
	if _, body := uiGet(t, hc, ts.url+"/ui/jobs/api", cookie); strings.Count(body, "<td>job-register</td><td>complete</td>") != 2 || !strings.Contains(body, "<td>complete</td><td>1</td><td>0</td><td>0</td>") {
		t.Fatalf("job page lacks its two evaluations:\n%s", body)
	}
	if resp, _ := uiGet(t, hc, ts.url+"/ui/jobs/nope", cookie); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing job: %s", resp.Status)
	}

	// The admin token works too (scripts); a wrong one does not.
	for tok, want := range map[string]int{testAdmin: http.StatusOK, "wrong": http.StatusUnauthorized} {
		req, _ := http.NewRequest(http.MethodGet, ts.url+"/ui/nodes", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("bearer %s: %s, want %d", tok, resp.Status, want)
		}
	}

	// An unused URL expires after 5 minutes; a session after 12 hours.
	late, _, err := ts.admin.UILoginURL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ts.clock.Advance(loginTokenTTL + time.Second)
	if resp, _ := uiGet(t, hc, late, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("expired login URL: %s, want 403", resp.Status)
	}
	if resp, _ := uiGet(t, hc, ts.url+"/ui/jobs", cookie); resp.StatusCode != http.StatusOK {
		t.Fatalf("session after 5 minutes: %s", resp.Status)
	}
	ts.clock.Advance(sessionTTL)
	if resp, _ := uiGet(t, hc, ts.url+"/ui/jobs", cookie); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("session after 12 hours: %s, want 401", resp.Status)
	}

	// Log out ends a session.
	again, _, _ := ts.admin.UILoginURL(ctx)
	c2 := sessionCookie(t, hc, again)
	req, _ := http.NewRequest(http.MethodPost, ts.url+"/ui/logout", nil)
	req.AddCookie(c2)
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("logout: %v %v", resp, err)
	}
	if resp, _ := uiGet(t, hc, ts.url+"/ui/jobs", c2); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout: %s, want 401", resp.Status)
	}
}

// TestUIReleasePage: what nodes report with their heartbeats shows as the
// release's provenance, and its spread: who holds it, who is fetching it and
// how far along.
func TestUIReleasePage(t *testing.T) {
	ts := startServer(t, t.TempDir())
	ctx := context.Background()
	holder := ts.addNode(t, 4000, 8, nil)
	fetcher := ts.addNode(t, 4000, 8, nil)
	ts.addNode(t, 4000, 8, nil) // holds nothing
	digest := strings.Repeat("ab", 32)
	rep := ReleaseReport{Name: "api", Version: "1.0.0", Digest: digest, Size: 4 << 20, Kind: "whale",
		Signers: []string{strings.Repeat("5", 64)}, Builder: "https://ci.example/builder",
		SourceRepo: "https://git.example/api", SourceCommit: strings.Repeat("c", 40), BytesHave: 4 << 20, Seeding: true, Peers: 1}
	if _, err := holder.Heartbeat(ctx, Heartbeat{Artifacts: []string{"api@1.0.0", "sha256:" + digest}, Releases: []ReleaseReport{rep}}); err != nil {
		t.Fatal(err)
	}
	partial := ReleaseReport{Name: "api", Digest: digest, Size: 4 << 20, BytesHave: 1 << 20, Peers: 1}
	bogus := ReleaseReport{Name: "x", Digest: "short"} // dropped: not a digest
	if _, err := fetcher.Heartbeat(ctx, Heartbeat{Releases: []ReleaseReport{partial, bogus}}); err != nil {
		t.Fatal(err)
	}
	loginURL, _, err := ts.admin.UILoginURL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hc := noRedirects(http.DefaultTransport)
	cookie := sessionCookie(t, hc, loginURL)
	resp, body := uiGet(t, hc, ts.url+"/ui/releases/api@1.0.0", cookie)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s\n%s", resp.Status, body)
	}
	for _, want := range []string{
		"sha256:" + digest, rep.Signers[0], rep.Builder, rep.SourceRepo, rep.SourceCommit, "4MiB (whale)",
		`held by <b id="holders">1</b> of 3 nodes, 1 fetching`,
		`<progress value="1048576" max="4194304">25%</progress>`,
		"/ui/nodes/" + holder.NodeID(), "/ui/nodes/" + fetcher.NodeID(),
	} {
		if !strings.Contains(body, want) {
			t.Fatalf("release page lacks %q:\n%s", want, body)
		}
	}
	if reps, _ := ts.fleet.node(fetcher.NodeID()); len(reps) != 1 {
		t.Fatalf("fetcher's reports: %+v, want the bogus one dropped", reps)
	}
	resp, body = uiGet(t, hc, ts.url+"/ui/nodes/"+holder.NodeID(), cookie)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `href="/ui/releases/api@1.0.0"`) || !strings.Contains(body, digest) {
		t.Fatalf("node page: %s\n%s", resp.Status, body)
	}

	// A node that no longer holds anything says so with an empty list; an
	// older node's heartbeat, without the list, changes nothing.
	if _, err := fetcher.Heartbeat(ctx, Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	if reps, _ := ts.fleet.node(fetcher.NodeID()); len(reps) != 1 {
		t.Fatalf("a heartbeat without releases dropped the reports: %+v", reps)
	}
	if _, err := fetcher.Heartbeat(ctx, Heartbeat{Releases: []ReleaseReport{}}); err != nil {
		t.Fatal(err)
	}
	if _, body := uiGet(t, hc, ts.url+"/ui/nodes/"+fetcher.NodeID(), cookie); !strings.Contains(body, "It holds and fetches nothing") {
		t.Fatalf("node page after an empty report:\n%s", body)
	}
}

// TestUIAndEventsFromAnyServer: in a cell of three, a login URL from one
// follower sets a Secure cookie that another follower honours (both forward to
// the leader, which holds the sessions), and a follower's events stream
// carries a job submitted through another server.
func TestUIAndEventsFromAnyServer(t *testing.T) {
	tc := startRaftCell(t, 3)
	lead := tc.leader()
	var followers []*cellMember
	for _, m := range tc.members {
		if m != lead {
			followers = append(followers, m)
		}
	}
	ctx := context.Background()
	events := follow(t, tc.client(followers[1].api), "")
	if _, err := tc.client(followers[0].api).SubmitJob(ctx, job("api", 1, 100, 64, BandProd)); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, "the job, on a follower's stream", func(e Event) bool {
		return e.Type == EventJob && e.Job == "api"
	})

	loginURL, _, err := tc.client(followers[0].api).UILoginURL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(loginURL, followers[0].api+"/ui/login?token=") {
		t.Fatalf("login URL %q is not on the server asked", loginURL)
	}
	pool, err := cellca.LoadPool(tc.cellDir + "/" + cellca.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	hc := noRedirects(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}})
	cookie := sessionCookie(t, hc, loginURL)
	if !cookie.Secure {
		t.Fatal("the session cookie over HTTPS is not Secure")
	}
	u, _ := url.Parse(followers[1].api)
	resp, body := uiGet(t, hc, u.String()+"/ui/jobs", cookie)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "api@1.0.0") || !strings.Contains(body, "server <b>"+lead.name+"</b>") {
		t.Fatalf("jobs page through the other follower: %s\n%s", resp.Status, body)
	}

	// The UI's own stream, through a follower, comes from the leader.
	req, _ := http.NewRequest(http.MethodGet, u.String()+"/ui/events/stream", nil)
	req.AddCookie(cookie)
	sresp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	if ct := sresp.Header.Get("Content-Type"); sresp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		t.Fatalf("UI stream through a follower: %s %q", sresp.Status, ct)
	}
	var first Event
	errFirst := errors.New("first")
	if err := readEvents(sresp.Body, func(e Event) error { first = e; return errFirst }); !errors.Is(err, errFirst) || first.Type != EventReady || first.Key != lead.name {
		t.Fatalf("UI stream through a follower: %v, first event %+v; want ready from %s", err, first, lead.name)
	}
}

// TestUIBigCellPagesAreCapped: the jobs page shows the tasks of at most
// uiMaxJobs jobs and names the rest; a job's page at most uiMaxRows tasks.
func TestUIBigCellPagesAreCapped(t *testing.T) {
	ts := startServer(t, t.TempDir())
	for i := range uiMaxJobs + 3 {
		ts.submit(t, job(fmt.Sprintf("j%03d", i), 1, 100, 64, BandProd))
	}
	ts.submit(t, job("zbig", uiMaxRows+5, 100, 64, BandBatch))
	loginURL, _, err := ts.admin.UILoginURL(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hc := noRedirects(http.DefaultTransport)
	cookie := sessionCookie(t, hc, loginURL)
	_, body := uiGet(t, hc, ts.url+"/ui/jobs", cookie)
	if n := strings.Count(body, `<section class="job"`); n != uiMaxJobs || !strings.Contains(body, "And 4 more jobs: ") || !strings.Contains(body, `<a href="/ui/jobs/zbig">zbig</a>`) {
		t.Fatalf("jobs page: %d jobs in full; want %d and 4 more named", n, uiMaxJobs)
	}
	_, body = uiGet(t, hc, ts.url+"/ui/jobs/zbig", cookie)
	if n := strings.Count(body, `<tr id="task-`); n != uiMaxRows || !strings.Contains(body, "… and 5 more tasks.") {
		t.Fatalf("job page: %d task rows, want %d and 5 more", n, uiMaxRows)
	}
}
