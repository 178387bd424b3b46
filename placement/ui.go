package placement

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

// The web UI under /ui/: server-side templates (ui/templates) and one small
// script (ui/static/ui.js) that follows the events stream and refreshes the
// page's main part when something changes. Every page reads fine without
// JavaScript. The leader serves it (followers forward), with the same TLS as
// the API; ui_auth.go says who may look.

//go:embed ui
var uiFiles embed.FS

var uiPages = loadUIPages()

func loadUIPages() map[string]*template.Template {
	funcs := template.FuncMap{
		"short": ShortID,
		"size":  FormatSize,
		"res":   func(r Resources) string { return r.String() },
		"ago": func(now, t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return now.Sub(t).Round(time.Second).String() + " ago"
		},
		"when": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05 UTC")
		},
		"pct": func(have, total int64) int64 {
			if total <= 0 {
				return 0
			}
			return have * 100 / total
		},
		"join": strings.Join,
	}
	names, err := fs.Glob(uiFiles, "ui/templates/*.html")
	if err != nil {
		panic(err)
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		base := strings.TrimSuffix(n[len("ui/templates/"):], ".html")
		if base == "layout" || base == "partials" {
			continue
		}
		out[base] = template.Must(template.New(base).Funcs(funcs).ParseFS(uiFiles, "ui/templates/layout.html", "ui/templates/partials.html", n))
	}
	return out
}

// registerUI adds the web UI, its login endpoint and the events stream to mux.
func (s *Server) registerUI(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/events", s.admin(s.handleEvents))
	mux.HandleFunc("POST /v1/ui/login", s.admin(s.atLeader(s.handleUILoginToken)))

	ui := http.NewServeMux()
	ui.HandleFunc("GET /ui/login", s.handleUILogin)
	authed := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !s.uiAuthed(r) {
				s.uiRefuse(w, http.StatusUnauthorized, "You are not logged in, or your session ended (sessions live in the leader's memory, so they end when the leader changes).")
				return
			}
			h(w, r)
		}
	}
	ui.HandleFunc("POST /ui/logout", s.handleUILogout)
	ui.HandleFunc("GET /ui/{$}", authed(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/jobs", http.StatusSeeOther)
	}))
	ui.HandleFunc("GET /ui/jobs", authed(s.uiJobs))
	ui.HandleFunc("GET /ui/jobs/{name}", authed(s.uiJob))
	ui.HandleFunc("GET /ui/nodes", authed(s.uiNodes))
	ui.HandleFunc("GET /ui/nodes/{id}", authed(s.uiNode))
	ui.HandleFunc("GET /ui/releases", authed(s.uiReleases))
	ui.HandleFunc("GET /ui/releases/{ref}", authed(s.uiRelease))
	ui.HandleFunc("GET /ui/events", authed(s.uiEventsPage))
	ui.HandleFunc("GET /ui/events/stream", authed(func(w http.ResponseWriter, r *http.Request) {
		s.serveEvents(w, r, r.URL.Query().Get("job"))
	}))
	static, _ := fs.Sub(uiFiles, "ui/static")
	ui.Handle("GET /ui/static/", authed(http.StripPrefix("/ui/static/", http.FileServerFS(static)).ServeHTTP))
	ui.HandleFunc("/ui/", authed(func(w http.ResponseWriter, r *http.Request) {
		s.uiRefuse(w, http.StatusNotFound, "There is no page "+r.URL.Path+".")
	}))

	lead := s.atLeader(uiHeaders(ui).ServeHTTP)
	mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		if !s.IsLeader() && r.Header.Get(headerForwarded) == "" {
			if _, err := s.leaderURL(); err != nil {
				s.uiRefuse(w, http.StatusServiceUnavailable, "This server cannot reach a leader of the cell right now ("+err.Error()+"). Reload in a few seconds.")
				return
			}
		}
		if r.URL.Path == "/ui/events/stream" {
			// A follower proxies the stream from the leader: no API write timeout.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
		}
		lead(w, r)
	})
}

// uiHeaders sets what every UI answer carries: no caching, no referrer (the
// login URL never leaks), no framing, and scripts and styles from here only.
func uiHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Cache-Control", "no-store")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.ServeHTTP(w, r)
	})
}

// uiPage is what every page template gets.
type uiPage struct {
	Title  string
	Nav    string // jobs, nodes, releases, events
	Server string
	Index  uint64
	Job    string // the events filter of the page's live part, if any
	NoAuth bool   // the refusal page: no navigation, no script
	Now    time.Time
	Body   any
}

func (s *Server) render(w http.ResponseWriter, status int, name string, p uiPage) {
	p.Server, p.Now = s.Name(), s.opts.Now()
	if p.Index == 0 {
		p.Index = s.Index()
	}
	var b bytes.Buffer
	if err := uiPages[name].ExecuteTemplate(&b, "layout", p); err != nil {
		s.log.Error("render UI page", "page", name, "err", err)
		http.Error(w, "render "+name+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// uiMessage is the body of the message page.
type uiMessage struct {
	Text  string
	Login bool // say how to log in
}

func (s *Server) uiRefuse(w http.ResponseWriter, status int, msg string) {
	login := status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusOK
	s.render(w, status, "message", uiPage{Title: "Ballena", NoAuth: true, Body: uiMessage{msg, login}})
}

// uiRead runs fn on the committed state, like the API's reads.
func (s *Server) uiRead(w http.ResponseWriter, r *http.Request, fn func(c *Cell)) bool {
	if err := s.readCommitted(r.Context(), fn); err != nil {
		s.uiRefuse(w, statusOf(err), err.Error())
		return false
	}
	return true
}

type uiTask struct {
	Index    int
	State    string // as `job status` says: running, starting, waiting, complete, failed, done
	Reason   string
	AllocID  string
	NodeID   string
	Version  uint64
	Desired  string
	Restarts int
	ExitCode *int
	OOM      bool
	Message  string
	Health   string
	Verdict  string // the node's rollout verdict: healthy, unhealthy, or "" before it
}

type uiJob struct {
	Job     Job
	Summary []string // "2 running", "1 waiting"
	Tasks   []uiTask
	More    int // tasks not shown on the list page
	Evals   []*Evaluation
}

// Pages stay readable, and cheap to render under the cell's lock, in a big
// cell: the jobs page shows the tasks of at most uiMaxJobs jobs,
// uiTasksPerJob each; a job's page and the nodes page show at most uiMaxRows.
const (
	uiTasksPerJob = 20
	uiMaxJobs     = 200
	uiMaxRows     = 2000
)

type uiJobs struct {
	Jobs     []uiJob
	MoreJobs []string // names of the jobs not shown in full
}

func (c *Cell) uiJob(js *jobState, limit int) uiJob {
	out := uiJob{Job: *js.Job}
	counts := map[string]int{}
	for i, t := range js.tasks {
		ut := uiTask{Index: t.Index, State: t.State, Reason: t.Reason}
		if a := c.allocs[t.AllocID]; a != nil {
			ut.AllocID, ut.NodeID, ut.Version, ut.Desired = a.ID, a.NodeID, a.JobVersion, a.DesiredStatus
			ut.Restarts, ut.ExitCode, ut.OOM, ut.Message = a.Restarts, a.ExitCode, a.OOMKilled, a.Message
			ut.Health = a.Health
			if a.Healthy != nil {
				ut.Verdict = map[bool]string{true: HealthHealthy, false: HealthUnhealthy}[*a.Healthy]
			}
			if t.State == TaskPlaced {
				ut.State = a.ClientStatus
				if a.ClientStatus == ClientPending {
					ut.State = "starting"
				}
			}
			if a.DesiredStatus == DesiredStop && ut.Reason == "" {
				ut.Reason = a.DesiredDescription
			}
		}
		if t.State == TaskPending {
			ut.State = "waiting"
		}
		counts[ut.State]++
		if limit == 0 || i < limit {
			out.Tasks = append(out.Tasks, ut)
		} else {
			out.More++
		}
	}
	for _, st := range slices.Sorted(maps.Keys(counts)) {
		out.Summary = append(out.Summary, fmt.Sprintf("%d %s", counts[st], st))
	}
	return out
}

func (s *Server) uiJobs(w http.ResponseWriter, r *http.Request) {
	var jobs uiJobs
	if !s.uiRead(w, r, func(c *Cell) {
		for _, name := range slices.Sorted(maps.Keys(c.jobs)) {
			if len(jobs.Jobs) == uiMaxJobs {
				jobs.MoreJobs = append(jobs.MoreJobs, name)
				continue
			}
			jobs.Jobs = append(jobs.Jobs, c.uiJob(c.jobs[name], uiTasksPerJob))
		}
	}) {
		return
	}
	s.render(w, http.StatusOK, "jobs", uiPage{Title: "Jobs", Nav: "jobs", Body: jobs})
}

func (s *Server) uiJob(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var job *uiJob
	var last *Evaluation
	if !s.uiRead(w, r, func(c *Cell) {
		if js := c.jobs[name]; js != nil {
			j := c.uiJob(js, uiMaxRows)
			job = &j
			if js.lastEval != nil {
				cp := *js.lastEval
				last = &cp
			}
		}
	}) {
		return
	}
	if job == nil {
		s.uiRefuse(w, http.StatusNotFound, "There is no job "+name+".")
		return
	}
	job.Evals = s.events.recent(name)
	if len(job.Evals) == 0 && last != nil {
		job.Evals = []*Evaluation{last}
	}
	s.render(w, http.StatusOK, "job", uiPage{Title: "Job " + name, Nav: "jobs", Job: name, Body: job})
}

type uiNodes struct {
	Nodes []uiNode
	More  int // nodes not shown
}

type uiNode struct {
	NodeInfo
	Health     string
	Releases   []string // refs held
	Allocs     []Alloc
	Reports    []ReleaseReport
	ReportedAt time.Time
}

func nodeHealth(n *Node, now time.Time, ttl time.Duration) string {
	switch {
	case n.Revoked:
		return "revoked"
	case n.Status != NodeReady:
		return n.Status
	case n.Drain:
		return "draining"
	case !n.LastSeen.IsZero() && now.Sub(n.LastSeen) > ttl/2:
		return "late"
	}
	return "healthy"
}

func refsOnly(arts []string) []string {
	var out []string
	for _, a := range arts {
		if !strings.HasPrefix(a, "sha256:") {
			out = append(out, a)
		}
	}
	return out
}

func (s *Server) uiNodes(w http.ResponseWriter, r *http.Request) {
	var nodes uiNodes
	now := s.opts.Now()
	if !s.uiRead(w, r, func(c *Cell) {
		for _, info := range c.nodeInfos() {
			if len(nodes.Nodes) == uiMaxRows {
				nodes.More++
				continue
			}
			n := uiNode{NodeInfo: info, Health: nodeHealth(&info.Node, now, s.opts.NodeTTL), Releases: refsOnly(info.Artifacts)}
			nodes.Nodes = append(nodes.Nodes, n)
		}
	}) {
		return
	}
	s.render(w, http.StatusOK, "nodes", uiPage{Title: "Nodes", Nav: "nodes", Body: nodes})
}

func (s *Server) uiNode(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var node *uiNode
	now := s.opts.Now()
	if !s.uiRead(w, r, func(c *Cell) {
		ns := c.byID[id]
		if ns == nil {
			return
		}
		n := uiNode{NodeInfo: NodeInfo{Node: *ns.Node, Allocated: ns.used, Tasks: len(ns.live)}}
		n.PublicKey = nil
		n.Labels, n.Artifacts = maps.Clone(ns.Labels), slices.Clone(ns.Artifacts)
		n.Health, n.Releases = nodeHealth(ns.Node, now, s.opts.NodeTTL), refsOnly(ns.Artifacts)
		for _, a := range sortedAllocs(ns.assigned) {
			n.Allocs = append(n.Allocs, *a)
		}
		node = &n
	}) {
		return
	}
	if node == nil {
		s.uiRefuse(w, http.StatusNotFound, "There is no node "+id+".")
		return
	}
	node.Reports, node.ReportedAt = s.fleet.node(id)
	s.render(w, http.StatusOK, "node", uiPage{Title: "Node " + ShortID(id), Nav: "nodes", Body: node})
}

type uiReleaseRow struct {
	Ref      string
	Holders  int
	Fetching int
	Nodes    int
	Jobs     []string
}

// releaseRefs lists every release the cell knows of: held by a node or named by a job.
func (c *Cell) releaseRefs() map[string]*uiReleaseRow {
	rows := map[string]*uiReleaseRow{}
	row := func(ref string) *uiReleaseRow {
		if rows[ref] == nil {
			rows[ref] = &uiReleaseRow{Ref: ref}
		}
		return rows[ref]
	}
	for _, n := range c.nodes {
		for _, a := range refsOnly(n.Artifacts) {
			row(a).Holders++
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.jobs)) {
		js := c.jobs[name]
		row(js.Artifact).Jobs = append(row(js.Artifact).Jobs, name)
	}
	for _, r := range rows {
		r.Nodes = len(c.nodes)
	}
	return rows
}

func (s *Server) uiReleases(w http.ResponseWriter, r *http.Request) {
	var rows map[string]*uiReleaseRow
	if !s.uiRead(w, r, func(c *Cell) { rows = c.releaseRefs() }) {
		return
	}
	reports := s.fleet.all()
	var list []*uiReleaseRow
	for _, ref := range slices.Sorted(maps.Keys(rows)) {
		row := rows[ref]
		for _, rs := range reports {
			for _, rep := range rs {
				if rep.Fetching() && rep.Name+"@"+rep.Version == ref {
					row.Fetching++
				}
			}
		}
		list = append(list, row)
	}
	s.render(w, http.StatusOK, "releases", uiPage{Title: "Releases", Nav: "releases", Body: list})
}

// uiProvenance is a release as the nodes that hold it describe it.
type uiProvenance struct {
	ReleaseReport
	ReportedBy int
	Conflicts  []string // other digests reported for the same name and version
}

type uiSpread struct {
	NodeID    string
	Status    string
	State     string // holds, fetching, missing
	BytesHave int64
	Size      int64
	Peers     int
	Seeding   bool
}

type uiRelease struct {
	Ref        string
	Provenance *uiProvenance
	Spread     []uiSpread
	Holders    int
	Fetching   int
	Nodes      int
	Jobs       []string
	Tasks      []Alloc // live allocations running it
}

func (s *Server) uiRelease(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	reports := s.fleet.all()
	rel := &uiRelease{Ref: ref}
	// Provenance: the reports of the nodes that hold the release agree on one digest.
	byDigest := map[string]*uiProvenance{}
	for _, id := range slices.Sorted(maps.Keys(reports)) {
		for _, rep := range reports[id] {
			if rep.Version == "" || rep.Name+"@"+rep.Version != ref {
				continue
			}
			p := byDigest[rep.Digest]
			if p == nil {
				p = &uiProvenance{ReleaseReport: rep}
				byDigest[rep.Digest] = p
			}
			p.ReportedBy++
		}
	}
	for _, d := range slices.Sorted(maps.Keys(byDigest)) {
		if rel.Provenance == nil || byDigest[d].ReportedBy > rel.Provenance.ReportedBy {
			rel.Provenance = byDigest[d]
		}
	}
	if rel.Provenance != nil {
		for d := range byDigest {
			if d != rel.Provenance.Digest {
				rel.Provenance.Conflicts = append(rel.Provenance.Conflicts, d)
			}
		}
		sort.Strings(rel.Provenance.Conflicts)
	}
	known := false
	if !s.uiRead(w, r, func(c *Cell) {
		_, known = c.releaseRefs()[ref]
		digest := ""
		if rel.Provenance != nil {
			digest = rel.Provenance.Digest
		}
		for _, n := range c.nodes {
			sp := uiSpread{NodeID: n.ID, Status: n.Status, State: "missing"}
			if slices.Contains(n.Artifacts, ref) || digest != "" && slices.Contains(n.Artifacts, "sha256:"+digest) {
				sp.State = "holds"
				rel.Holders++
			}
			for _, rep := range reports[n.ID] {
				if digest != "" && rep.Digest == digest || rep.Version != "" && rep.Name+"@"+rep.Version == ref {
					sp.BytesHave, sp.Size, sp.Peers, sp.Seeding = rep.BytesHave, rep.Size, rep.Peers, rep.Seeding
					if rep.Fetching() && sp.State != "holds" {
						sp.State = "fetching"
						rel.Fetching++
					}
				}
			}
			rel.Spread = append(rel.Spread, sp)
		}
		rel.Nodes = len(c.nodes)
		for _, name := range slices.Sorted(maps.Keys(c.jobs)) {
			js := c.jobs[name]
			if js.Artifact != ref {
				continue
			}
			rel.Jobs = append(rel.Jobs, name)
			for _, a := range sortedAllocs(js.live) {
				rel.Tasks = append(rel.Tasks, *a)
			}
		}
	}) {
		return
	}
	if !known && rel.Provenance == nil {
		s.uiRefuse(w, http.StatusNotFound, "No node holds "+ref+" and no job runs it.")
		return
	}
	sort.SliceStable(rel.Spread, func(i, j int) bool { return spreadRank(rel.Spread[i].State) < spreadRank(rel.Spread[j].State) })
	s.render(w, http.StatusOK, "release", uiPage{Title: "Release " + ref, Nav: "releases", Body: rel})
}

func spreadRank(state string) int {
	switch state {
	case "fetching":
		return 0
	case "holds":
		return 1
	}
	return 2
}

func (s *Server) uiEventsPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, http.StatusOK, "events", uiPage{Title: "Events", Nav: "events", Job: r.URL.Query().Get("job")})
}
