package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/artifact"
	"ballena.dev/internal/localapi"
	"ballena.dev/launcher"
	"ballena.dev/signing"
	"ballena.dev/swarm"
)

// DefaultFetchTimeout bounds a fetch asked for over the local API without a timeout.
const DefaultFetchTimeout = 5 * time.Minute

// maxBody caps request bodies: they are small JSON documents.
const maxBody = 1 << 20

// routes registers the whole local API, the one place that serves it:
//
//	GET    /v1/artifacts                  -> []artifact.Release
//	POST   /v1/artifacts                  PublishRequest -> artifact.Release (seeded and announced)
//	GET    /v1/artifacts/{ref}            -> ReleaseWithEnvelope
//	DELETE /v1/artifacts/{ref}            forget a release (stops seeding)
//	POST   /v1/artifacts/{ref}/verify     VerifyRequest -> VerifyResult
//	POST   /v1/gc                         -> []digest removed
//	POST   /v1/fetch                      FetchRequest -> stream of FetchEvent (NDJSON)
//	GET    /v1/status                     -> swarm.Status
//	GET    /v1/torrent/{ref}              -> TorrentAnswer
//	POST   /v1/tasks                      launcher.TaskSpec -> launcher.Task (201)
//	GET    /v1/tasks                      -> []launcher.Task
//	GET    /v1/tasks/{id}                 -> launcher.Task
//	POST   /v1/tasks/{id}/stop            launcher.StopRequest -> launcher.Task
//	GET    /v1/tasks/{id}/wait            -> launcher.Task, once final
//	GET    /v1/tasks/{id}/logs            ?follow=1&stream=stdout|stderr&json=1 -> text stream (or JSON lines with the stream)
//	DELETE /v1/tasks/{id}                 forget a finished task
func (d *Daemon) routes() {
	m := d.mux
	m.HandleFunc("GET /v1/artifacts", d.listArtifacts)
	m.HandleFunc("POST /v1/artifacts", d.publish)
	m.HandleFunc("GET /v1/artifacts/{ref}", withRef(d.inspect))
	m.HandleFunc("DELETE /v1/artifacts/{ref}", withRef(d.remove))
	m.HandleFunc("POST /v1/artifacts/{ref}/verify", withRef(d.verify))
	m.HandleFunc("POST /v1/gc", d.gc)
	m.HandleFunc("POST /v1/fetch", d.fetch)
	m.HandleFunc("GET /v1/status", d.status)
	m.HandleFunc("GET /v1/torrent/{ref}", withRef(d.torrent))
	m.HandleFunc("POST /v1/tasks", d.startTask)
	m.HandleFunc("GET /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		localapi.WriteJSON(w, http.StatusOK, d.launcher.MarkRevoked(d.launcher.List()))
	})
	m.HandleFunc("GET /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		t, err := d.launcher.Get(r.PathValue("id"))
		reply(w, http.StatusOK, t, err)
	})
	m.HandleFunc("POST /v1/tasks/{id}/stop", d.stopTask)
	m.HandleFunc("GET /v1/tasks/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		t, err := d.launcher.Wait(r.Context(), r.PathValue("id"))
		reply(w, http.StatusOK, t, err)
	})
	m.HandleFunc("GET /v1/tasks/{id}/logs", d.logs)
	m.HandleFunc("DELETE /v1/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.launcher.Remove(r.PathValue("id")); err != nil {
			writeError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// reply writes v with status, or err.
func reply(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	localapi.WriteJSON(w, status, v)
}

func withRef(h func(http.ResponseWriter, *http.Request, artifact.Ref)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ref, err := artifact.ParseRef(r.PathValue("ref"))
		if err != nil {
			usage(w, err)
			return
		}
		h(w, r, ref)
	}
}

func decodeBody(r *http.Request, v any) error {
	return json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(v)
}

func (d *Daemon) listArtifacts(w http.ResponseWriter, r *http.Request) {
	rels, err := d.st.Releases()
	if rels == nil {
		rels = []artifact.Release{}
	}
	reply(w, http.StatusOK, rels, err)
}

// publish imports a file the CLI has signed, then seeds and announces it.
func (d *Daemon) publish(w http.ResponseWriter, r *http.Request) {
	var req localapi.PublishRequest
	if err := decodeBody(r, &req); err != nil || req.Envelope == nil {
		usage(w, fmt.Errorf("publish: want {path, envelope}"))
		return
	}
	rel, err := d.st.Import(r.Context(), req.Path, req.Envelope)
	if err == nil {
		d.log.Info("release published", "release", rel.Ref(), "digest", rel.Digest, "bytes", rel.Size)
		err = d.node.Announce(r.Context(), rel, req.Envelope)
	}
	reply(w, http.StatusOK, rel, err)
}

func (d *Daemon) inspect(w http.ResponseWriter, r *http.Request, ref artifact.Ref) {
	rel, env, err := d.st.Release(ref)
	reply(w, http.StatusOK, localapi.ReleaseWithEnvelope{Release: rel, Envelope: env}, err)
}

func (d *Daemon) remove(w http.ResponseWriter, r *http.Request, ref artifact.Ref) {
	// The blob stays, and is seeded, until gc finds nothing references it.
	reply(w, http.StatusOK, struct{}{}, d.st.DeleteRelease(ref))
}

func (d *Daemon) verify(w http.ResponseWriter, r *http.Request, ref artifact.Ref) {
	var req localapi.VerifyRequest
	if err := decodeBody(r, &req); err != nil {
		usage(w, err)
		return
	}
	pol, err := LoadTrust(req.Trust)
	if err != nil {
		usage(w, err)
		return
	}
	rel, v, err := d.st.Verify(r.Context(), ref, pol, artifact.VerifyOptions{AllowRollback: req.AllowRollback})
	if err != nil {
		writeError(w, err)
		return
	}
	localapi.WriteJSON(w, http.StatusOK, localapi.VerifyResult{Release: rel, KeyIDs: v.KeyIDs})
}

// gc removes unreferenced blobs, stops seeding them, removes abandoned partial
// downloads and prunes what the launcher derived from blobs (staged
// executables, unpacked images).
func (d *Daemon) gc(w http.ResponseWriter, r *http.Request) {
	removed, err := d.st.GC(r.Context())
	for _, digest := range removed {
		if err := d.node.Drop(digest); err != nil {
			d.log.Warn("stop seeding", "sha256", digest, "err", err)
		}
	}
	// Partial downloads no fetch is running for go too: their room is reserved
	// whole. They are listed with the blobs removed.
	partials, perr := d.node.RemovePartials()
	removed = append(removed, partials...)
	err = errors.Join(err, perr)
	if dropped, err := d.launcher.Prune(); err != nil {
		d.log.Warn("prune launcher files", "err", err)
	} else if len(dropped) > 0 {
		d.log.Info("pruned launcher files", "digests", len(dropped))
	}
	if removed == nil {
		removed = []string{}
	}
	reply(w, http.StatusOK, removed, err)
}

// fetch streams progress as NDJSON, then the release or the error.
func (d *Daemon) fetch(w http.ResponseWriter, r *http.Request) {
	var req localapi.FetchRequest
	if err := decodeBody(r, &req); err != nil {
		usage(w, fmt.Errorf("fetch: want {ref, timeoutSeconds}: %v", err))
		return
	}
	ref, err := artifact.ParseRef(req.Ref)
	if err != nil {
		usage(w, err)
		return
	}
	timeout := DefaultFetchTimeout
	if req.Timeout > 0 {
		timeout = time.Duration(req.Timeout * float64(time.Second))
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	send := func(ev localapi.FetchEvent) {
		_ = enc.Encode(ev)
		if flusher != nil {
			flusher.Flush()
		}
	}
	rel, err := d.node.Fetch(ctx, ref, func(p swarm.Progress) {
		send(localapi.FetchEvent{Progress: &localapi.FetchProgress{Have: p.Have, Total: p.Total, Peers: p.Peers, Rate: p.DownloadRate}})
	})
	if err != nil {
		send(localapi.FetchEvent{Error: apiError(err)})
		return
	}
	send(localapi.FetchEvent{Release: &rel})
}

// Status is what GET /v1/status answers: the swarm's view of the node and
// what its launcher can do to confine tasks.
type Status struct {
	swarm.Status
	Isolation launcher.IsolationStatus `json:"isolation"`
}

func (d *Daemon) status(w http.ResponseWriter, r *http.Request) {
	v, err := d.node.Status()
	for _, t := range d.launcher.RevokedTasks() {
		v.RevokedTasks = append(v.RevokedTasks, swarm.RevokedTask{ID: t.ID, Artifact: t.Spec.Artifact, Reason: t.Revoked})
	}
	reply(w, http.StatusOK, Status{Status: v, Isolation: d.launcher.Isolation()}, err)
}

func (d *Daemon) torrent(w http.ResponseWriter, r *http.Request, ref artifact.Ref) {
	rel, _, err := d.st.Release(ref)
	if err != nil {
		writeError(w, err)
		return
	}
	mi, err := d.node.Engine().MetaInfo(rel)
	if err != nil {
		writeError(w, err)
		return
	}
	v, err := TorrentOf(mi, rel)
	reply(w, http.StatusOK, v, err)
}

// TorrentOf is a release's standard .torrent and magnet link.
func TorrentOf(mi *metainfo.MetaInfo, rel artifact.Release) (localapi.TorrentAnswer, error) {
	var buf bytes.Buffer
	if err := mi.Write(&buf); err != nil {
		return localapi.TorrentAnswer{}, fmt.Errorf("torrent %s: %w", rel.Ref(), err)
	}
	info, err := mi.UnmarshalInfo()
	if err != nil {
		return localapi.TorrentAnswer{}, fmt.Errorf("torrent %s: %w", rel.Ref(), err)
	}
	ih := mi.HashInfoBytes()
	m := mi.Magnet(&ih, &info)
	m.DisplayName = rel.Ref().String()
	return localapi.TorrentAnswer{Torrent: buf.Bytes(), Magnet: m.String()}, nil
}

func (d *Daemon) startTask(w http.ResponseWriter, r *http.Request) {
	var spec launcher.TaskSpec
	if err := decodeBody(r, &spec); err != nil {
		usage(w, fmt.Errorf("task spec: %w", err))
		return
	}
	t, err := d.launcher.Start(r.Context(), spec)
	reply(w, http.StatusCreated, t, err)
}

func (d *Daemon) stopTask(w http.ResponseWriter, r *http.Request) {
	var req launcher.StopRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			usage(w, fmt.Errorf("stop request: %w", err))
			return
		}
	}
	sig, timeout, err := req.Parse()
	if err != nil {
		usage(w, err)
		return
	}
	t, err := d.launcher.Stop(r.Context(), r.PathValue("id"), sig, timeout)
	reply(w, http.StatusOK, t, err)
}

// logs streams a task's output; with follow=1 until the task ends or the client goes.
func (d *Daemon) logs(w http.ResponseWriter, r *http.Request) {
	follow := r.URL.Query().Get("follow") == "1" || r.URL.Query().Get("follow") == "true"
	q := r.URL.Query()
	streams := launcher.Streams{JSON: q.Get("json") == "1"}
	switch q.Get("stream") {
	case "", "all":
	case "stdout":
		streams.Stdout = true
	case "stderr":
		streams.Stderr = true
	default:
		usage(w, fmt.Errorf("stream %q: want stdout, stderr or all", q.Get("stream")))
		return
	}
	rc, err := d.launcher.LogStream(r.Context(), r.PathValue("id"), follow, streams)
	if err != nil {
		writeError(w, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// LoadTrust reads a trust policy file for a verification; a missing file says
// where to write one.
func LoadTrust(path string) (*signing.Policy, error) {
	pol, err := signing.LoadPolicy(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, usageErrorf("no trust policy at %s: write one (see README, \"Trust policy\") or pass --trust", path)
	}
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	return pol, nil
}
