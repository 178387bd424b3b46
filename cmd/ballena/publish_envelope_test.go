package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// twoSigners makes two key pairs in two directories, as on two machines, and
// a threshold-2 trust policy over both public keys.
func twoSigners(t *testing.T, dir string) (key1, key2, trust string) {
	t.Helper()
	m1, m2 := filepath.Join(dir, "machine1"), filepath.Join(dir, "machine2")
	for _, d := range []string{m1, m2} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	key1, pub1, _, err := signing.WriteKeyPair(m1, "release")
	if err != nil {
		t.Fatal(err)
	}
	key2, pub2, _, err := signing.WriteKeyPair(m2, "second")
	if err != nil {
		t.Fatal(err)
	}
	trust = filepath.Join(dir, "trust2.yaml")
	policy := fmt.Sprintf("threshold: 2\nkeys:\n  - path: %s\n    names: [\"*\"]\n  - path: %s\n    names: [\"*\"]\n", pub1, pub2)
	if err := os.WriteFile(trust, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	return key1, key2, trust
}

// Two keys held apart co-sign one envelope; a threshold-2 policy accepts the
// pair and refuses either signature alone; a machine without any key
// publishes the release exactly as signed.
func TestCoSignAndPublishEnvelope(t *testing.T) {
	dir := t.TempDir()
	key1, key2, trust := twoSigners(t, dir)
	api := copyFile(t, sampleWhale(t), filepath.Join(dir, "api"))
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, append(must(os.ReadFile(api)), 0), 0o755); err != nil {
		t.Fatal(err)
	}
	env := api + ".dsse.json"
	store := filepath.Join(dir, "store")

	// Machine 1 signs.
	if code, out, msg := run(t, dir, "sign", "--key", key1, "--name", "api", "--version", "1.4.0", api); code != 0 {
		t.Fatalf("sign: %d %s %s", code, out, msg)
	}
	oneSig := copyFile(t, env, filepath.Join(dir, "one.dsse.json"))
	code, _, msg := run(t, dir, "verify", "--trust", trust, "--envelope", env, api)
	if code != exitVerify || !strings.Contains(msg, "1 of 2 required") {
		t.Fatalf("one signature under threshold 2: exit %d %q, want %d naming the threshold", code, msg, exitVerify)
	}

	// Machine 2 co-signs; refusals first, each leaving the envelope alone.
	for _, tc := range []struct {
		what string
		args []string
		code int
		msg  string
	}{
		{"another file", []string{"--key", key2, "--envelope", env, other}, exitVerify, "does not match"},
		{"another name", []string{"--key", key2, "--envelope", env, "--name", "web", api}, exitVerify, "not --name web"},
		{"the same key twice", []string{"--key", key1, "--envelope", env, api}, exitUsage, "already signed by key"},
		{"a new statement", []string{"--key", key2, "--envelope", env, "--builder-id", "x", api}, exitUsage, "--builder-id"},
		{"no key", []string{"--envelope", env, api}, exitUsage, "--key"},
	} {
		code, _, msg := run(t, dir, append([]string{"sign"}, tc.args...)...)
		if code != tc.code || !strings.Contains(msg, tc.msg) || strings.Contains(msg, "\n") {
			t.Errorf("sign --envelope with %s: exit %d %q, want %d with %q", tc.what, code, msg, tc.code, tc.msg)
		}
		if !bytes.Equal(must(os.ReadFile(env)), must(os.ReadFile(oneSig))) {
			t.Fatalf("sign --envelope with %s changed the envelope", tc.what)
		}
	}
	code, out, msg := run(t, dir, "sign", "--key", key2, "--envelope", env, api)
	if code != 0 {
		t.Fatalf("co-sign: %d %s", code, msg)
	}
	mustContain(t, out, "api@1.4.0", "2 signatures")
	two, err := signing.ParseEnvelope(must(os.ReadFile(env)))
	if err != nil {
		t.Fatal(err)
	}
	one, _ := signing.ParseEnvelope(must(os.ReadFile(oneSig)))
	if !bytes.Equal(two.Payload, one.Payload) || len(two.Signatures) != 2 || !bytes.Equal(two.Signatures[0].Sig, one.Signatures[0].Sig) {
		t.Fatalf("co-signing changed the statement or the first signature")
	}
	code, out, msg = run(t, dir, "verify", "--json", "--trust", trust, "--envelope", env, api)
	if code != 0 {
		t.Fatalf("verify of the co-signed envelope: %d %s", code, msg)
	}
	var vr struct {
		KeyIDs []string `json:"keyIds"`
	}
	if err := json.Unmarshal([]byte(out), &vr); err != nil || len(vr.KeyIDs) != 2 {
		t.Fatalf("verify --json: %v: %s", err, out)
	}
	// The second signature alone is refused too.
	alone := *two
	alone.Signatures = two.Signatures[1:]
	b, _ := alone.Marshal()
	secondOnly := filepath.Join(dir, "second.dsse.json")
	os.WriteFile(secondOnly, b, 0o644)
	if code, _, _ := run(t, dir, "verify", "--trust", trust, "--envelope", secondOnly, api); code != exitVerify {
		t.Errorf("second signature alone: exit %d, want %d", code, exitVerify)
	}

	// The CI machine publishes without any key: refusals store nothing.
	for _, tc := range []struct {
		what string
		args []string
		code int
		msg  string
	}{
		{"one signature under the policy", []string{"--envelope", oneSig, "--trust", trust, api}, exitVerify, "1 of 2 required"},
		{"another file", []string{"--envelope", env, other}, exitVerify, "does not match"},
		{"another version", []string{"--envelope", env, "--version", "1.4.1", api}, exitVerify, "not --version 1.4.1"},
		{"a key", []string{"--envelope", env, "--key", key1, api}, exitUsage, "sign --envelope"},
		{"push flags without --bootstrap", []string{"--envelope", env, "--wait-replicas", "2", api}, exitUsage, "--bootstrap"},
	} {
		code, _, msg := run(t, store, append([]string{"publish"}, tc.args...)...)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("publish --envelope with %s: exit %d %q, want %d with %q", tc.what, code, msg, tc.code, tc.msg)
		}
	}
	if code, out, _ := run(t, store, "ls", "--json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("refused publishes stored something: %s", out)
	}
	if code, out, msg := run(t, store, "publish", "--envelope", env, "--trust", trust, api); code != 0 || !strings.Contains(out, "published api@1.4.0") {
		t.Fatalf("publish --envelope: %d %s %s", code, out, msg)
	}
	st, err := artifact.Open(store)
	if err != nil {
		t.Fatal(err)
	}
	_, storedEnv, err := st.Release(artifact.Ref{Name: "api", Version: "1.4.0"})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := storedEnv.Marshal()
	want, _ := two.Marshal()
	if !bytes.Equal(got, want) {
		t.Fatalf("stored envelope differs from the signed one:\n%s\n%s", got, want)
	}
	if code, out, msg := run(t, store, "verify", "--trust", trust, "api@1.4.0"); code != 0 || !strings.Contains(out, "verified api@1.4.0") {
		t.Fatalf("verify the stored release: %d %s %s", code, out, msg)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// An image signed on one machine is published from its envelope on another;
// push flags are checked before anything starts, and a push whose bootstrap
// peer never answers gives up at --timeout with exit 5.
func TestPublishEnvelopeImageAndPushRefusals(t *testing.T) {
	dir := t.TempDir()
	key1, key2, trust := twoSigners(t, dir)
	web := filepath.Join(dir, "web.tar")
	writeImageTar(t, web)
	env := web + ".dsse.json"
	if code, _, msg := run(t, dir, "sign", "--key", key1, "--name", "web", "--version", "2.0.0", web); code != 0 {
		t.Fatalf("sign: %d %s", code, msg)
	}
	if code, _, msg := run(t, dir, "sign", "--key", key2, "--envelope", env, "--kind", "whale", web); code != exitVerify || !strings.Contains(msg, "not --kind whale") {
		t.Errorf("co-sign naming another kind: %d %q", code, msg)
	}
	if code, _, msg := run(t, dir, "sign", "--key", key2, "--envelope", env, web); code != 0 {
		t.Fatalf("co-sign: %d %s", code, msg)
	}
	store := filepath.Join(dir, "store")
	code, out, msg := run(t, store, "publish", "--json", "--envelope", env, "--trust", trust, web)
	if code != 0 {
		t.Fatalf("publish --envelope of an image: %d %s", code, msg)
	}
	var rel artifact.Release
	if err := json.Unmarshal([]byte(out), &rel); err != nil || rel.Kind != artifact.KindOCI || rel.Digest != sha256Of(t, web) {
		t.Fatalf("publish --json: %v: %s", err, out)
	}
	if code, _, msg := run(t, store, "verify", "--trust", trust, "web@2.0.0"); code != 0 {
		t.Fatalf("verify: %d %s", code, msg)
	}

	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(sk)
	// A port nothing listens on: take one, then free it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", ln.Addr().(*net.TCPAddr).Port, id)
	ln.Close()
	runner := filepath.Join(dir, "runner")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--bootstrap", "/ip4/127.0.0.1/tcp/1", "--envelope", env, web}, exitUsage, "--bootstrap"},
		{[]string{"--bootstrap", dead, "--wait-replicas", "0", "--envelope", env, web}, exitUsage, "--wait-replicas must be at least 1"},
		{[]string{"--bootstrap", dead, "--psk", filepath.Join(dir, "nope.psk"), "--envelope", env, web}, exitUsage, "--psk"},
		{[]string{"--bootstrap", dead, "--upload-limit", "fast", "--envelope", env, web}, exitUsage, "--upload-limit"},
		{[]string{"--bootstrap", dead, "--timeout", "2s", "--envelope", env, web}, exitUnavailable, "no bootstrap peer reachable"},
	} {
		code, _, msg := run(t, runner, append([]string{"publish"}, tc.args...)...)
		if code != tc.code || !strings.Contains(msg, tc.msg) {
			t.Errorf("publish %s: exit %d %q, want %d with %q", strings.Join(tc.args, " "), code, msg, tc.code, tc.msg)
		}
	}
}
