package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"ballena.dev/internal/metricstest"
	"ballena.dev/signing"
)

type specErrors struct {
	Errors []struct{ Code, Message string } `json:"errors"`
}

// wantError checks a spec JSON error answer.
func wantError(t *testing.T, what string, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d, want %d (%s)", what, resp.StatusCode, status, body)
	}
	var e specErrors
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 || e.Errors[0].Code != code || e.Errors[0].Message == "" {
		t.Fatalf("%s: body %s, want one spec error with code %s", what, body, code)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: Content-Type %q", what, ct)
	}
}

// TestDistributionAPI walks the read side of the distribution API over a
// published image: what it serves is the image go-containerregistry reads
// from the same tarball, byte for byte, with the spec's headers and errors.
func TestDistributionAPI(t *testing.T) {
	e := newEnv(t, envOpts{})
	p, _ := testImage(t, e.dir, 300<<10)
	e.publish(p, "api", "1.4.0", e.priv)
	want, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantManifest, _ := want.RawManifest()
	wantDigest, _ := want.Digest()

	resp, body := e.do("GET", "/v2/")
	if resp.StatusCode != 200 || string(body) != "{}" || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if resp, _ := e.do("HEAD", "/v2/"); resp.StatusCode != 200 {
		t.Fatalf("HEAD /v2/: %d", resp.StatusCode)
	}

	// The manifest by tag, then by digest, GET and HEAD.
	for _, ref := range []string{"1.4.0", wantDigest.String()} {
		resp, body := e.do("GET", "/v2/api/manifests/"+ref)
		if resp.StatusCode != 200 {
			t.Fatalf("manifest %s: %d %s", ref, resp.StatusCode, body)
		}
		if !bytes.Equal(body, wantManifest) {
			t.Fatalf("manifest %s:\n%s\nwant go-containerregistry's\n%s", ref, body, wantManifest)
		}
		h := resp.Header
		if h.Get("Content-Type") != "application/vnd.docker.distribution.manifest.v2+json" ||
			h.Get("Docker-Content-Digest") != wantDigest.String() || h.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("manifest %s headers: %v", ref, h)
		}
		resp, body = e.do("HEAD", "/v2/api/manifests/"+ref)
		if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Docker-Content-Digest") != wantDigest.String() ||
			resp.ContentLength != int64(len(wantManifest)) {
			t.Fatalf("HEAD manifest %s: %d, %d bytes, %v", ref, resp.StatusCode, len(body), resp.Header)
		}
	}

	// Every blob the manifest names, whole and hashed.
	var m v1.Manifest
	if err := json.Unmarshal(wantManifest, &m); err != nil {
		t.Fatal(err)
	}
	blobs := append([]v1.Descriptor{m.Config}, m.Layers...)
	for _, d := range blobs {
		resp, body := e.do("GET", "/v2/api/blobs/"+d.Digest.String())
		if resp.StatusCode != 200 || sha(body) != d.Digest.String() || int64(len(body)) != d.Size {
			t.Fatalf("blob %s: %d, %d bytes, sha %s", d.Digest, resp.StatusCode, len(body), sha(body))
		}
		if resp.Header.Get("Content-Type") != string(d.MediaType) || resp.Header.Get("Docker-Content-Digest") != d.Digest.String() ||
			resp.ContentLength != d.Size {
			t.Fatalf("blob %s headers: %v", d.Digest, resp.Header)
		}
		resp, body = e.do("HEAD", "/v2/api/blobs/"+d.Digest.String())
		if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != d.Size {
			t.Fatalf("HEAD blob %s: %d %d", d.Digest, resp.StatusCode, resp.ContentLength)
		}
	}

	// Range: a middle part of the big layer.
	big := m.Layers[1]
	_, whole := e.do("GET", "/v2/api/blobs/"+big.Digest.String())
	resp, body = e.do("GET", "/v2/api/blobs/"+big.Digest.String(), "Range", "bytes=1000-50999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, whole[1000:51000]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 1000-50999/%d", big.Size) {
		t.Fatalf("range: %d, %d bytes, %v", resp.StatusCode, len(body), resp.Header)
	}
	resp, body = e.do("GET", "/v2/api/blobs/"+big.Digest.String(), "Range", fmt.Sprintf("bytes=%d-", big.Size+10))
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range beyond the end: %d %s", resp.StatusCode, body)
	}

	// tags/list, with the spec's pagination.
	p2, _ := testImage(t, e.dir, 1000)
	e.publish(p2, "api", "1.5.0", e.priv)
	resp, body = e.do("GET", "/v2/api/tags/list")
	if resp.StatusCode != 200 || string(body) != `{"name":"api","tags":["1.4.0","1.5.0"]}` {
		t.Fatalf("tags/list: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/v2/api/tags/list?n=1")
	if string(body) != `{"name":"api","tags":["1.4.0"]}` || !strings.Contains(resp.Header.Get("Link"), "last=1.4.0") {
		t.Fatalf("tags/list?n=1: %s %v", body, resp.Header)
	}
	if _, body = e.do("GET", "/v2/api/tags/list?last=1.4.0"); string(body) != `{"name":"api","tags":["1.5.0"]}` {
		t.Fatalf("tags/list?last=1.4.0: %s", body)
	}

	// Unknown things answer 404 in the spec's format, so containerd falls back.
	unknown := "sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct{ path, code string }{
		{"/v2/nope/manifests/1.4.0", "MANIFEST_UNKNOWN"},
		{"/v2/api/manifests/9.9.9", "MANIFEST_UNKNOWN"},
		{"/v2/api/manifests/" + unknown, "MANIFEST_UNKNOWN"},
		{"/v2/api/blobs/" + unknown, "BLOB_UNKNOWN"},
		{"/v2/nope/tags/list", "NAME_UNKNOWN"},
		{"/v2/team/api/manifests/1.4.0", "NAME_UNKNOWN"}, // not a release name, no mapping
		{"/v2/api/whatever", "UNSUPPORTED"},
	} {
		resp, body := e.do("GET", c.path)
		wantError(t, c.path, resp, body, 404, c.code)
	}
	resp, body = e.do("GET", "/v2/api/blobs/sha256:xyz")
	wantError(t, "bad digest", resp, body, 400, "DIGEST_INVALID")

	// Writes answer 405.
	for _, c := range []struct{ method, path string }{
		{"POST", "/v2/api/blobs/uploads/"},
		{"PUT", "/v2/api/manifests/1.4.0"},
		{"DELETE", "/v2/api/manifests/1.4.0"},
		{"PATCH", "/v2/api/blobs/uploads/x"},
		{"DELETE", "/v2/api/blobs/" + big.Digest.String()},
	} {
		resp, body := e.do(c.method, c.path)
		wantError(t, c.method+" "+c.path, resp, body, 405, "UNSUPPORTED")
		if resp.Header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("%s %s: Allow %q", c.method, c.path, resp.Header.Get("Allow"))
		}
	}
}

// TestOnlyVerifiedIsServed: a release is served only while it verifies, and a
// blob only while it matches its digest, whatever happens to the policy or
// the file after publishing. Every refusal is a 404 for the client and a
// reason in the log.
func TestOnlyVerifiedIsServed(t *testing.T) {
	e := newEnv(t, envOpts{})
	p, img := testImage(t, e.dir, 200<<10)
	rel := e.publish(p, "api", "1.4.0", e.priv)
	digest, _ := img.Digest()
	m, _ := img.Manifest()
	layer := m.Layers[1].Digest.String()
	served := func() bool {
		t.Helper()
		resp, _ := e.do("GET", "/v2/api/manifests/1.4.0")
		bresp, _ := e.do("GET", "/v2/api/blobs/"+layer)
		dresp, _ := e.do("GET", "/v2/api/manifests/"+digest.String())
		tresp, _ := e.do("GET", "/v2/api/tags/list")
		if resp.StatusCode != bresp.StatusCode || resp.StatusCode != dresp.StatusCode || resp.StatusCode != tresp.StatusCode {
			t.Fatalf("manifest %d, blob %d, manifest by digest %d, tags %d: all or nothing", resp.StatusCode, bresp.StatusCode, dresp.StatusCode, tresp.StatusCode)
		}
		return resp.StatusCode == 200
	}
	if !served() {
		t.Fatal("a verified release is not served")
	}

	// Another publisher's key: untrusted.
	_, other, _ := signing.GenerateKey()
	p2, _ := testImage(t, e.dir, 100)
	e.publish(p2, "web", "1.0.0", other)
	if resp, _ := e.do("GET", "/v2/web/manifests/1.0.0"); resp.StatusCode != 404 {
		t.Fatalf("a release signed by an untrusted key: %d", resp.StatusCode)
	}
	if !e.logs.contains("web@1.0.0") || !e.logs.contains("not in trust policy") {
		t.Fatalf("no reason logged for the untrusted release:\n%s", e.logs.b.String())
	}

	// The key revoked, then trusted again.
	pol := signing.PolicyForKeys(e.pub)
	pol.Revoked = []string{signing.KeyID(e.pub)}
	e.policy.Store(pol)
	if served() {
		t.Fatal("served under a revoked key")
	}
	if !e.logs.contains("revoked") {
		t.Fatal("no reason logged for the revoked key")
	}
	e.policy.Store(signing.PolicyForKeys(e.pub))
	if !served() {
		t.Fatal("not served once the key is trusted again")
	}

	// Scope: the key may sign only other names.
	e.policy.Store(&signing.Policy{Threshold: 1, Keys: []signing.TrustedKey{{ID: signing.KeyID(e.pub), Public: e.pub, Names: []string{"web*"}}}})
	if served() {
		t.Fatal("served outside the key's scope")
	}
	e.policy.Store(signing.PolicyForKeys(e.pub))

	// Rolled back: the node has verified a newer version of api.
	if err := e.st.RecordVersion("api", "2.0.0"); err != nil {
		t.Fatal(err)
	}
	if served() {
		t.Fatal("served an older version than one the node verified (rollback)")
	}
	if !e.logs.contains("rollback") && !e.logs.contains("older") {
		t.Fatalf("no rollback reason logged:\n%s", e.logs.b.String())
	}
	p3, _ := testImage(t, e.dir, 700<<10) // more than one copy buffer: sent in parts
	rel3 := e.publish(p3, "api", "2.0.0", e.priv)
	if resp, _ := e.do("GET", "/v2/api/manifests/2.0.0"); resp.StatusCode != 200 {
		t.Fatalf("the newest version: %d", resp.StatusCode)
	}

	// A file tampered with in place, its mtime put back: the index in memory
	// still points at it, and the blob fails its digest as it is sent. The
	// client never gets the whole blob, and a Range is refused outright.
	p3m, _ := tarball.ImageFromPath(p3, nil)
	m3, _ := p3m.Manifest()
	layer3 := m3.Layers[1].Digest.String()
	_, good := e.do("GET", "/v2/api/blobs/"+layer3)
	blobPath := e.st.BlobPath(rel3.Digest)
	st, _ := os.Stat(blobPath)
	data, _ := os.ReadFile(blobPath)
	i := bytes.Index(data, good[len(good)/2:len(good)/2+32])
	if i < 0 {
		t.Fatal("layer bytes not found in the stored tarball")
	}
	if err := os.Chmod(blobPath, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(blobPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{data[i] ^ 0xff}, int64(i))
	f.Close()
	os.Chtimes(blobPath, st.ModTime(), st.ModTime())
	req, _ := http.NewRequest("GET", e.url+"/v2/api/blobs/"+layer3, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if rerr == nil || int64(len(got)) >= m3.Layers[1].Size {
		t.Fatalf("a tampered blob was sent whole (%d of %d bytes, read error %v)", len(got), m3.Layers[1].Size, rerr)
	}
	if !e.logs.contains("blob failed its digest while sent") {
		t.Fatal("the cut transfer is not logged")
	}
	if resp, _ := e.do("GET", "/v2/api/blobs/"+layer3, "Range", "bytes=0-99"); resp.StatusCode != 404 {
		t.Fatalf("range of a tampered blob: %d", resp.StatusCode)
	}
	// Touched as a tamperer would leave it: the whole file is checked again
	// and nothing of the release is served.
	os.Chtimes(blobPath, time.Now(), time.Now())
	if resp, _ := e.do("GET", "/v2/api/manifests/2.0.0"); resp.StatusCode != 404 {
		t.Fatalf("manifest of a tampered release: %d", resp.StatusCode)
	}
	if !e.logs.contains("tampered with or corrupt") {
		t.Fatal("the tampered release is not logged")
	}
	_ = rel
}

// TestMirrorNames: containerd's ?ns= and Docker's docker.io names map to
// releases through --registry-map; anything unmapped answers 404.
func TestMirrorNames(t *testing.T) {
	e := newEnv(t, envOpts{maps: []string{"registry.example.com/team/=", "registry.example.com/team/special/=sp-", "docker.io/library/=hub-"}})
	p, _ := testImage(t, e.dir, 100)
	e.publish(p, "api", "1.4.0", e.priv)
	e.publish(p, "sp-api", "1.0.0", e.priv)
	e.publish(p, "hub-api", "1.0.0", e.priv)
	for _, c := range []struct {
		path string
		code int
	}{
		{"/v2/team/api/manifests/1.4.0?ns=registry.example.com", 200},
		{"/v2/team/special/api/manifests/1.0.0?ns=registry.example.com", 200}, // the longest prefix wins
		{"/v2/library/api/manifests/1.0.0", 200},                              // Docker: docker.io, no ns
		{"/v2/library/api/manifests/1.0.0?ns=docker.io", 200},
		{"/v2/team/api/manifests/1.4.0?ns=other.example.com", 404},
		{"/v2/other/api/manifests/1.4.0?ns=registry.example.com", 404},
		{"/v2/team/api/manifests/1.4.0", 404}, // docker.io/team/api: unmapped
		{"/v2/team/a/b/manifests/1.4.0?ns=registry.example.com", 404},
		{"/v2/api/manifests/1.4.0", 200}, // direct
	} {
		if resp, body := e.do("GET", c.path); resp.StatusCode != c.code {
			t.Errorf("%s: %d, want %d (%s)", c.path, resp.StatusCode, c.code, body)
		}
	}
	_, body := e.do("GET", "/v2/team/api/tags/list?ns=registry.example.com")
	if string(body) != `{"name":"team/api","tags":["1.4.0"]}` {
		t.Fatalf("mirror tags/list: %s", body)
	}
	for _, bad := range []string{"registry.example.com/team/", "=api", "registry.example.com/=API"} {
		if _, err := ParseMapping(bad); err == nil {
			t.Errorf("ParseMapping(%q) accepted", bad)
		}
	}
	if m, err := ParseMapping("https://registry.example.com=x-"); err != nil || m.Upstream != "registry.example.com/" || m.NamePrefix != "x-" {
		t.Fatalf("ParseMapping: %+v %v", m, err)
	}
}

// TestRequestsMetric counts requests by status code, in a family promtool accepts.
func TestRequestsMetric(t *testing.T) {
	e := newEnv(t, envOpts{})
	p, _ := testImage(t, e.dir, 100)
	e.publish(p, "api", "1.4.0", e.priv)
	e.do("GET", "/v2/api/manifests/1.4.0")
	e.do("GET", "/v2/api/manifests/1.4.0")
	e.do("GET", "/v2/api/manifests/2.0.0")
	e.do("PUT", "/v2/api/manifests/2.0.0")
	got := metricstest.Gather(t, e.reg)
	for k, want := range map[string]float64{
		"ballena_registry_requests_total{code=200}": 2,
		"ballena_registry_requests_total{code=404}": 1,
		"ballena_registry_requests_total{code=405}": 1,
		"ballena_registry_fetches_total":            0,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], want, got)
		}
	}
	metricstest.Promtool(t, "registry", metricstest.Text(t, e.reg))
}
