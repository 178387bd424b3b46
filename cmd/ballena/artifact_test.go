package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"ballena.dev/signing"
)

// fixture is a data dir with api@1.4.0 published by release.key, plus a
// second key and an offline envelope, as a release engineer would leave them.
type fixture struct {
	dir, data, whale, env string
	keyID                 string
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	dir := t.TempDir()
	f := fixture{dir: dir, data: filepath.Join(dir, "data"), whale: copyFile(t, sampleWhale(t), filepath.Join(dir, "api"))}
	for _, k := range []string{"release", "other"} {
		code, out, msg := run(t, f.data, "key", "generate", "--dir", dir, k)
		if code != 0 {
			t.Fatalf("key generate: %s", msg)
		}
		if k == "release" {
			f.keyID = strings.TrimSpace(out[strings.LastIndex(out, "key ID ")+len("key ID "):])
		}
	}
	if code, _, msg := run(t, f.data, "publish", "--key", f.path("release.key"), "--name", "api", "--version", "1.4.0", f.whale); code != 0 {
		t.Fatalf("publish: %s", msg)
	}
	f.env = f.path("api.dsse.json")
	if code, _, msg := run(t, f.data, "sign", "--key", f.path("release.key"), "--name", "api", "--version", "1.4.0", "--out", f.env, f.whale); code != 0 {
		t.Fatalf("sign: %s", msg)
	}
	return f
}

func (f fixture) path(name string) string { return filepath.Join(f.dir, name) }

func (f fixture) write(t *testing.T, name, content string) string {
	t.Helper()
	p := f.path(name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// state is what must not change when input is refused: the store's listing and blobs.
func (f fixture) state(t *testing.T) string {
	t.Helper()
	_, out, _ := run(t, f.data, "ls", "--json")
	blobs, _ := os.ReadDir(filepath.Join(f.data, "blobs", "sha256"))
	tmp, _ := os.ReadDir(filepath.Join(f.data, "tmp"))
	return fmt.Sprintf("%s|%d blobs|%d tmp", out, len(blobs), len(tmp))
}

func TestHappyPath(t *testing.T) {
	f := newFixture(t)
	f.write(t, "trust.yaml", "keys:\n  - path: release.pub\n    names: [\"api\"]\n")
	code, out, msg := run(t, f.data, "verify", "--trust", f.path("trust.yaml"), "api@1.4.0")
	if code != 0 {
		t.Fatalf("verify: %s", msg)
	}
	mustContain(t, out, "verified api@1.4.0", f.keyID)
	code, out, msg = run(t, f.data, "verify", "--pub", f.path("release.pub"), "--envelope", f.env, f.whale)
	if code != 0 {
		t.Fatalf("offline verify: %s", msg)
	}
	code, out, _ = run(t, f.data, "inspect", "--json", "api@1.4.0")
	var p provenance
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
		t.Fatalf("inspect --json: %d %s", code, out)
	}
	if p.Kind != "whale" || p.Size == 0 || len(p.SignerKeyIDs) != 1 || p.SignerKeyIDs[0] != f.keyID ||
		p.BuilderID == "" || p.StartedOn.IsZero() || p.FinishedOn.IsZero() {
		t.Fatalf("inspect lacks provenance: %+v", p)
	}
	st, _ := os.Stat(f.path("release.key"))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("release.key mode %v, want 0600", st.Mode().Perm())
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	f.write(t, "trust.yaml", "keys:\n  - path: release.pub\n    names: [\"api\"]\n")
	otherFile := copyFile(t, f.whale, f.path("web"))
	if wf, err := os.OpenFile(otherFile, os.O_APPEND|os.O_WRONLY, 0); err == nil {
		wf.Write([]byte{0}) // other bytes, still a static ELF
		wf.Close()
	}
	if code, _, msg := run(t, f.data, "sign", "--key", f.path("release.key"), "--name", "web", "--version", "1.0.0", "--out", f.path("web.dsse.json"), otherFile); code != 0 {
		t.Fatal(msg)
	}
	b, _ := os.ReadFile(f.whale)
	b[len(b)/2] ^= 1
	flipped := f.path("api-flipped")
	os.WriteFile(flipped, b, 0o755)

	var env signing.Envelope
	raw, _ := os.ReadFile(f.env)
	json.Unmarshal(raw, &env)
	env.Payload[len(env.Payload)/3] ^= 1
	tampered, _ := json.Marshal(env)
	f.write(t, "tampered.dsse.json", string(tampered))

	json.Unmarshal(raw, &env)
	priv, _ := signing.LoadPrivateKey(f.path("release.key"))
	wrongType, _ := signing.SignEnvelope("text/plain", env.Payload, priv)
	wt, _ := wrongType.Marshal()
	f.write(t, "wrongtype.dsse.json", string(wt))

	revoked := fmt.Sprintf("keys:\n  - path: release.pub\n    names: [\"api\"]\nrevoked: [%q]\n", f.keyID)
	cases := []struct {
		name   string
		policy string // written to trust.yaml for stored verification, if set
		args   []string
		code   int
		frags  []string
	}{
		{"flipped byte in file", "", []string{"verify", "--pub", f.path("release.pub"), "--envelope", f.env, flipped}, exitVerify, []string{"does not match"}},
		{"flipped byte in envelope payload", "", []string{"verify", "--pub", f.path("release.pub"), "--envelope", f.path("tampered.dsse.json"), f.whale}, exitVerify, []string{"signature"}},
		{"envelope for another artifact", "", []string{"verify", "--pub", f.path("release.pub"), "--envelope", f.path("web.dsse.json"), f.whale}, exitVerify, []string{"web@1.0.0"}},
		{"unknown payloadType", "", []string{"verify", "--pub", f.path("release.pub"), "--envelope", f.path("wrongtype.dsse.json"), f.whale}, exitVerify, []string{"text/plain"}},
		{"wrong key", "", []string{"verify", "--pub", f.path("other.pub"), "--envelope", f.env, f.whale}, exitVerify, []string{"not in"}},
		{"untrusted key", "keys:\n  - path: other.pub\n    names: [\"*\"]\n", nil, exitVerify, []string{"not in"}},
		{"revoked key", revoked, nil, exitVerify, []string{"revoked"}},
		{"expired key", "keys:\n  - path: release.pub\n    names: [\"api\"]\n    not_after: 2020-01-01T00:00:00Z\n", nil, exitVerify, []string{"2020"}},
		{"name outside scope", "keys:\n  - path: release.pub\n    names: [\"web-*\"]\n", nil, exitVerify, []string{"api"}},
		{"malformed policy", "keys:\n  - path: release.pub\n    namez: [\"api\"]\n", nil, exitUsage, []string{"line 3", "namez"}},
		{"no such artifact", "", []string{"inspect", "api@9.9.9"}, exitNotFound, []string{"api@9.9.9"}},
		{"dynamic binary", "", []string{"publish", "--key", f.path("release.key"), "--name", "ls", "--version", "1.0.0", "/bin/ls"}, exitUsage, []string{"dynamically linked", "ld-linux", "libc.so"}},
		{"broken tarball", "", []string{"publish", "--key", f.path("release.key"), "--name", "web", "--version", "1.0.0", "--kind", "oci", f.write(t, "broken.tar", "not a tar")}, exitUsage, []string{"broken.tar"}},
		{"malformed key", "", []string{"publish", "--key", f.write(t, "bad.key", "nope"), "--name", "api", "--version", "1.5.0", f.whale}, exitUsage, []string{"--key"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			if c.policy != "" {
				args = []string{"verify", "--trust", f.write(t, "case.yaml", c.policy), "api@1.4.0"}
			}
			before := f.state(t)
			code, _, msg := run(t, f.data, args...)
			if code != c.code {
				t.Fatalf("exit %d (%s), want %d", code, msg, c.code)
			}
			t.Logf("exit %d: %s", code, msg)
			mustContain(t, msg, c.frags...)
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if after := f.state(t); after != before {
				t.Errorf("refused input changed the store:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestRollbackCLI(t *testing.T) {
	f := newFixture(t)
	trust := f.write(t, "trust.yaml", "keys:\n  - path: release.pub\n    names: [\"api\"]\n")
	older := copyFile(t, f.whale, f.path("api-old"))
	if code, _, msg := run(t, f.data, "publish", "--key", f.path("release.key"), "--name", "api", "--version", "1.3.0", older); code != 0 {
		t.Fatal(msg)
	}
	if code, _, msg := run(t, f.data, "verify", "--trust", trust, "api@1.4.0"); code != 0 {
		t.Fatal(msg)
	}
	code, _, msg := run(t, f.data, "verify", "--trust", trust, "api@1.3.0")
	if code != exitVerify {
		t.Fatalf("rollback: exit %d (%s), want %d", code, msg, exitVerify)
	}
	mustContain(t, msg, "1.4.0", "--allow-rollback")
	if code, _, msg := run(t, f.data, "verify", "--trust", trust, "--allow-rollback", "api@1.3.0"); code != 0 {
		t.Fatalf("explicit rollback refused: %s", msg)
	}
}

func TestGCCLI(t *testing.T) {
	f := newFixture(t)
	if code, _, msg := run(t, f.data, "rm", "api@1.4.0"); code != 0 {
		t.Fatal(msg)
	}
	code, out, msg := run(t, f.data, "gc", "--json")
	var removed []string
	if code != 0 || json.Unmarshal([]byte(out), &removed) != nil || len(removed) != 1 {
		t.Fatalf("gc: %d %s %s", code, out, msg)
	}
}

func TestHelpHasExamples(t *testing.T) {
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := strings.TrimSpace(path + " " + c.Name)
			if c.Action != nil && c.UsageText == "" {
				t.Errorf("ballena %s --help has no example (UsageText)", name)
			}
			walk(name, c.Subcommands)
		}
	}
	walk("", newApp().Commands)
}
