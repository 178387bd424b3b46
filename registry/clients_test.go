package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"ballena.dev/internal/ocitest"
	"ballena.dev/internal/poll"
)

func requireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed: apt-get install %s (.ci/run installs it)", name, pkg)
	}
	return p
}

func runTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestSkopeo: skopeo inspects the image by tag and copies it into an OCI
// layout whose manifest, config and layers are the published ones.
func TestSkopeo(t *testing.T) {
	skopeo := requireTool(t, "skopeo", "skopeo")
	e := newEnv(t, envOpts{maps: []string{"registry.example.com/team/="}})
	p, img := testImage(t, e.dir, 300<<10)
	e.publish(p, "api", "1.4.0", e.priv)
	host := strings.TrimPrefix(e.url, "http://")
	digest, _ := img.Digest()

	var insp struct {
		Digest string
		Layers []string
	}
	out := runTool(t, skopeo, "--insecure-policy", "inspect", "--tls-verify=false", "docker://"+host+"/api:1.4.0")
	if err := json.Unmarshal([]byte(out), &insp); err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, out)
	}
	m, _ := img.Manifest()
	if insp.Digest != digest.String() || len(insp.Layers) != 2 || insp.Layers[1] != m.Layers[1].Digest.String() {
		t.Fatalf("skopeo inspect: %+v, want digest %s and layers %v", insp, digest, m.Layers)
	}
	out = runTool(t, skopeo, "--insecure-policy", "list-tags", "--tls-verify=false", "docker://"+host+"/api")
	if !strings.Contains(out, `"1.4.0"`) {
		t.Fatalf("skopeo list-tags: %s", out)
	}

	dst := filepath.Join(e.dir, "copy")
	runTool(t, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+host+"/api:1.4.0", "oci:"+dst+":api")
	lp, err := layout.FromPath(dst)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 {
		t.Fatalf("copied layout has %d manifests", len(im.Manifests))
	}
	got, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	// skopeo converts the Docker config to an OCI one: the run config stays.
	gotCfg, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	gm, _ := got.Manifest()
	if gotCfg.Config.Entrypoint[0] != "/bin/hello" || gotCfg.Architecture != "amd64" || len(gm.Layers) != 2 {
		t.Fatalf("copied image: config %+v, %d layers", gotCfg, len(gm.Layers))
	}
	for i, l := range gm.Layers {
		// skopeo may re-label media types for OCI; the bytes must be the same.
		if l.Digest != m.Layers[i].Digest {
			t.Fatalf("copied layer %d: %s, want %s", i, l.Digest, m.Layers[i].Digest)
		}
		if _, err := os.Stat(filepath.Join(dst, "blobs", "sha256", l.Digest.Hex)); err != nil {
			t.Fatalf("copied layer %d missing: %v", i, err)
		}
	}
	// Into a dir: the manifest and config byte for byte.
	dir := filepath.Join(e.dir, "dircopy")
	runTool(t, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+host+"/api:1.4.0", "dir:"+dir)
	rawManifest, _ := img.RawManifest()
	rawConfig, _ := img.RawConfigFile()
	cfgName, _ := img.ConfigName()
	if b, err := os.ReadFile(filepath.Join(dir, "manifest.json")); err != nil || string(b) != string(rawManifest) {
		t.Fatalf("dir copy manifest: %v\n%s", err, b)
	}
	if b, err := os.ReadFile(filepath.Join(dir, cfgName.Hex)); err != nil || string(b) != string(rawConfig) {
		t.Fatalf("dir copy config: %v", err)
	}

	// A mirror name goes through the map, without ns: Docker-style names are
	// docker.io's, unmapped here, so skopeo must fail on it.
	cmd := exec.Command(skopeo, "--insecure-policy", "inspect", "--tls-verify=false", "docker://"+host+"/team/api:1.4.0")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("skopeo inspect of an unmapped name succeeded:\n%s", out)
	}
}

// containerd is a containerd daemon of the test's own: its own root, state,
// socket and config, without the CRI plugin.
type containerd struct {
	dir, sock string
}

func startContainerd(t testing.TB) *containerd {
	t.Helper()
	bin := requireTool(t, "containerd", "containerd")
	requireTool(t, "ctr", "containerd")
	if os.Geteuid() != 0 {
		t.Skip("containerd runs as root: run the tests as root (CI does)")
	}
	dir, err := os.MkdirTemp("", "ballena-containerd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &containerd{dir: dir, sock: filepath.Join(dir, "containerd.sock")}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "debug.sock"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("containerd log:\n%s", b)
		}
	})
	poll.Until(t, 30*time.Second, "containerd's socket", func() bool {
		return exec.Command("ctr", "--address", c.sock, "version").Run() == nil
	})
	return c
}

func (c *containerd) ctr(t testing.TB, args ...string) string {
	t.Helper()
	return runTool(t, "ctr", append([]string{"--address", c.sock}, args...)...)
}

// imageDigest is the digest containerd recorded for an image it pulled.
func (c *containerd) imageDigest(t testing.TB, ref string) string {
	t.Helper()
	for _, line := range strings.Split(c.ctr(t, "images", "ls"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("containerd has no image %s", ref)
	return ""
}

// TestContainerdPulls: a real containerd pulls the image directly
// (--plain-http) and as a mirror of registry.example.com through the
// hosts.toml that `ballena registry config containerd` writes, and unpacks it.
func TestContainerdPulls(t *testing.T) {
	c := startContainerd(t)
	// up stands for an upstream registry: another Ballena registry on loopback.
	up := newEnv(t, envOpts{maps: []string{"docker.io/team/="}})
	upHost := strings.TrimPrefix(up.url, "http://")
	e := newEnv(t, envOpts{maps: []string{"registry.example.com/team/=", upHost + "/team/="}})
	p, img := testImage(t, e.dir, 300<<10)
	e.publish(p, "api", "1.4.0", e.priv)
	host := strings.TrimPrefix(e.url, "http://")
	digest, _ := img.Digest()

	hosts := filepath.Join(e.dir, "certs.d")
	files, err := WriteContainerdConfig(hosts, []string{"registry.example.com"}, e.url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(files[0])
	if !strings.Contains(string(b), `capabilities = ["pull", "resolve"]`) || !strings.Contains(string(b), `server = "https://registry.example.com"`) {
		t.Fatalf("hosts.toml:\n%s", b)
	}
	mirrored := "registry.example.com/team/api:1.4.0"
	c.ctr(t, "images", "pull", "--hosts-dir", hosts, "--snapshotter", "native", mirrored)
	if got := c.imageDigest(t, mirrored); got != digest.String() {
		t.Fatalf("containerd pulled %s as %s, want %s", mirrored, got, digest)
	}
	// It came through the mirror path: containerd named the upstream in ns.
	m, _ := img.Manifest()
	for _, want := range []string{"path=/v2/team/api/manifests/1.4.0 ns=registry.example.com code=200",
		"path=/v2/team/api/blobs/" + m.Layers[1].Digest.String() + " ns=registry.example.com code=200"} {
		if !e.logs.contains(want) {
			t.Fatalf("containerd's mirror requests: no %q", want)
		}
	}
	direct := host + "/api:1.4.0"
	c.ctr(t, "images", "pull", "--plain-http", "--snapshotter", "native", direct)
	if got := c.imageDigest(t, direct); got != digest.String() {
		t.Fatalf("containerd pulled %s as %s, want %s", direct, got, digest)
	}
	// Unpacked: the image's file is in a snapshot.
	c.ctr(t, "images", "check")

	// What containerd holds is byte for byte what was published.
	out := c.ctr(t, "content", "get", m.Layers[1].Digest.String())
	if sha([]byte(out)) != m.Layers[1].Digest.String() {
		t.Fatal("containerd's copy of the layer differs")
	}

	// Without --registry: _default/hosts.toml, for every registry.
	pd, imgD := testImage(t, e.dir, 1000)
	e.publish(pd, "api", "1.4.1", e.priv)
	defHosts := filepath.Join(e.dir, "default.d")
	if files, err := WriteContainerdConfig(defHosts, nil, e.url); err != nil || !strings.HasSuffix(files[0], "/_default/hosts.toml") {
		t.Fatalf("default hosts: %v %v", files, err)
	}
	defRef := "registry.example.com/team/api:1.4.1"
	c.ctr(t, "images", "pull", "--hosts-dir", defHosts, "--snapshotter", "native", defRef)
	digestD, _ := imgD.Digest()
	if got := c.imageDigest(t, defRef); got != digestD.String() {
		t.Fatalf("containerd pulled %s as %s, want %s", defRef, got, digestD)
	}

	// A release the mirror refuses (signed by a key it does not trust) answers
	// 404, and containerd falls back to the upstream registry, here another
	// Ballena registry on loopback that trusts that key.
	pu, upImg := testImage(t, up.dir, 2000)
	up.publish(pu, "web", "3.0.0", up.priv)
	e.publish(pu, "web", "3.0.0", up.priv) // held by the mirror too, but untrusted there
	files, err = WriteContainerdConfig(hosts, []string{upHost}, e.url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(files[0])
	// The upstream here is plain HTTP on loopback.
	if err := os.WriteFile(files[0], []byte(strings.Replace(string(b), "https://", "http://", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	fallback := upHost + "/team/web:3.0.0"
	c.ctr(t, "images", "pull", "--hosts-dir", hosts, "--snapshotter", "native", fallback)
	upDigest, _ := upImg.Digest()
	if got := c.imageDigest(t, fallback); got != upDigest.String() {
		t.Fatalf("containerd pulled %s as %s, want %s", fallback, got, upDigest)
	}
	if !e.logs.contains("path=/v2/team/web/manifests/3.0.0 ns="+upHost+" code=404") || !e.logs.contains("ref=web@3.0.0 why=refused") {
		t.Fatal("the mirror did not refuse the untrusted release with 404 and a logged reason")
	}
	if !up.logs.contains("path=/v2/team/web/manifests/3.0.0 ns=\"\" code=200") {
		t.Fatal("containerd did not fall back to the upstream")
	}
}

// TestDockerSaveLayout: a docker-save tarball as skopeo (and docker save)
// write it, with uncompressed layers, is served with the uncompressed layer
// media type, and containerd pulls and unpacks it.
func TestDockerSaveLayout(t *testing.T) {
	skopeo := requireTool(t, "skopeo", "skopeo")
	c := startContainerd(t)
	e := newEnv(t, envOpts{})
	p, _ := testImage(t, e.dir, 100<<10)
	archive := filepath.Join(e.dir, "docker-archive.tar")
	runTool(t, skopeo, "--insecure-policy", "copy", "docker-archive:"+p, "docker-archive:"+archive+":ballena.local/saved:1")
	e.publish(archive, "saved", "1.0.0", e.priv)
	host := strings.TrimPrefix(e.url, "http://")

	resp, body := e.do("GET", "/v2/saved/manifests/1.0.0")
	if resp.StatusCode != 200 {
		t.Fatalf("manifest: %d %s", resp.StatusCode, body)
	}
	var m struct {
		Layers []struct {
			MediaType, Digest string
			Size              int64
		}
	}
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) != 2 {
		t.Fatalf("manifest %s: %v", body, err)
	}
	for _, l := range m.Layers {
		if l.MediaType != "application/vnd.docker.image.rootfs.diff.tar" {
			t.Fatalf("layer %s: media type %s, want the uncompressed one", l.Digest, l.MediaType)
		}
		if resp, b := e.do("GET", "/v2/saved/blobs/"+l.Digest); resp.StatusCode != 200 || sha(b) != l.Digest || int64(len(b)) != l.Size {
			t.Fatalf("layer %s: %d", l.Digest, resp.StatusCode)
		}
	}
	ref := host + "/saved:1.0.0"
	c.ctr(t, "images", "pull", "--plain-http", "--snapshotter", "native", ref)
	if got := c.imageDigest(t, ref); got != sha(body) {
		t.Fatalf("containerd pulled %s as %s, want %s", ref, got, sha(body))
	}
	runTool(t, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(e.dir, "oci")+":saved")
}

// writeMultiLayout writes an OCI layout whose index.json lists an amd64 and
// an arm64 image, as `skopeo copy --all` or a multi-platform build leave it.
func writeMultiLayout(t *testing.T, dir string) (string, map[string]v1.Image) {
	t.Helper()
	out := filepath.Join(dir, "multi")
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	imgs := map[string]v1.Image{}
	for _, arch := range []string{"amd64", "arm64"} {
		img := ocitest.Image(t, arch, v1.Config{Entrypoint: []string{"/bin/hello"}},
			ocitest.Layer(t, ocitest.Entry{Name: "arch", Body: arch + "\n", Mode: 0o644}))
		if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})); err != nil {
			t.Fatal(err)
		}
		imgs[arch] = img
	}
	return out, imgs
}

// TestPublishedReference: an image published from an OCI layout keeps the
// manifest or index it had: a multi-platform layout is served as that index
// (its digest the one upstream), every platform's manifest and blobs by
// digest, and skopeo and containerd pull it by tag and by digest, through the
// mirror path too.
func TestPublishedReference(t *testing.T) {
	e := newEnv(t, envOpts{maps: []string{"registry.example.com/team/="}})
	dir, imgs := writeMultiLayout(t, e.dir)
	e.publish(dir, "multi", "1.0.0", e.priv)
	indexJSON, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	resp, body := e.do("GET", "/v2/multi/manifests/1.0.0",
		"Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
	if resp.StatusCode != 200 || string(body) != string(indexJSON) ||
		resp.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" || resp.Header.Get("Docker-Content-Digest") != sha(indexJSON) {
		t.Fatalf("tag: %d %v\n%s\nwant the layout's index\n%s", resp.StatusCode, resp.Header, body, indexJSON)
	}
	indexDigest := sha(indexJSON)
	if resp, _ := e.do("GET", "/v2/multi/manifests/"+indexDigest); resp.StatusCode != 200 {
		t.Fatalf("index by digest: %d", resp.StatusCode)
	}
	for arch, img := range imgs {
		d, _ := img.Digest()
		raw, _ := img.RawManifest()
		resp, body := e.do("GET", "/v2/multi/manifests/"+d.String())
		if resp.StatusCode != 200 || string(body) != string(raw) {
			t.Fatalf("%s manifest by digest: %d", arch, resp.StatusCode)
		}
		m, _ := img.Manifest()
		for _, desc := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			resp, b := e.do("GET", "/v2/multi/blobs/"+desc.Digest.String())
			if resp.StatusCode != 200 || sha(b) != desc.Digest.String() || resp.Header.Get("Content-Type") != string(desc.MediaType) {
				t.Fatalf("%s blob %s: %d %v", arch, desc.Digest, resp.StatusCode, resp.Header)
			}
		}
	}

	skopeo := requireTool(t, "skopeo", "skopeo")
	host := strings.TrimPrefix(e.url, "http://")
	out := runTool(t, skopeo, "--insecure-policy", "inspect", "--raw", "--tls-verify=false", "docker://"+host+"/multi:1.0.0")
	if sha([]byte(out)) != indexDigest {
		t.Fatalf("skopeo inspect --raw: %s", out)
	}
	runTool(t, skopeo, "--insecure-policy", "copy", "--all", "--src-tls-verify=false", "docker://"+host+"/multi:1.0.0", "oci:"+filepath.Join(e.dir, "copy")+":multi")

	c := startContainerd(t)
	ref := host + "/multi:1.0.0"
	c.ctr(t, "images", "pull", "--plain-http", "--snapshotter", "native", ref)
	if got := c.imageDigest(t, ref); got != indexDigest {
		t.Fatalf("containerd pulled %s as %s, want the index %s", ref, got, indexDigest)
	}
	hosts := filepath.Join(e.dir, "certs.d")
	if _, err := WriteContainerdConfig(hosts, []string{"registry.example.com"}, e.url); err != nil {
		t.Fatal(err)
	}
	byDigest := "registry.example.com/team/multi@" + indexDigest
	c.ctr(t, "images", "pull", "--hosts-dir", hosts, "--all-platforms", "--snapshotter", "native", byDigest)
	if got := c.imageDigest(t, byDigest); got != indexDigest {
		t.Fatalf("containerd pulled %s as %s", byDigest, got)
	}
}
