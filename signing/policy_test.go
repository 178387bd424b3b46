package signing

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadPolicy(t *testing.T) {
	p, err := LoadPolicy(filepath.Join("testdata", "policy", "trust.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	alice, _ := LoadPublicKey(filepath.Join("testdata", "keys", "alice.pub"))
	bob, _ := LoadPublicKey(filepath.Join("testdata", "keys", "bob.pub"))
	if p.Threshold != 1 || len(p.Keys) != 2 || len(p.Revoked) != 1 {
		t.Fatalf("policy %+v", p)
	}
	a, b := p.Keys[0], p.Keys[1]
	if !a.Public.Equal(alice) || a.ID != KeyID(alice) || !b.Public.Equal(bob) {
		t.Error("keys not loaded from path and inline PEM")
	}
	if !a.NotBefore.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) || !a.NotAfter.Equal(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("validity %v .. %v", a.NotBefore, a.NotAfter)
	}
	if !b.NotBefore.IsZero() || strings.Join(b.Names, ",") != "api,web-*" {
		t.Errorf("bob %+v", b)
	}
}

func TestParsePolicyRefusals(t *testing.T) {
	k := newTestKey(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "k.pub"), []byte(k.pem), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "k.key"), []byte("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inline := "    pem: |\n      " + strings.ReplaceAll(strings.TrimSpace(k.pem), "\n", "\n      ") + "\n"
	cases := []struct {
		name, doc string
		line      int // 0: no line expected
		want      string
	}{
		{"empty", "", 0, "empty policy"},
		{"only comment", "# nothing\n", 0, "empty policy"},
		{"not a mapping", "- a\n", 1, "policy must be a mapping"},
		{"unknown top field", "threshold: 1\ntreshold: 2\n", 2, `unknown field "treshold"`},
		{"repeated field", "threshold: 1\nthreshold: 1\n", 2, `field "threshold" repeated`},
		{"syntax", "keys:\n  - path: k.pub\n   names: [api]\n", 3, "line 3"},
		{"tab", "keys:\n\t- path: k.pub\n", 2, "line 2"},
		{"unclosed flow", "keys:\n  - path: k.pub\n    names: [api\nrevoked: []\n", 3, "line 3"},
		{"unclosed quote", "keys:\n  - path: k.pub\n    names: \"api\nrevoked: []\n", 3, "line 3"},
		{"nested mapping", "threshold: 1\nkeys: a: b\n", 2, "mapping values are not allowed"},
		{"two documents", "keys: []\n---\nkeys: []\n", 2, "more than one YAML document"},
		{"no keys", "threshold: 1\n", 1, "no trusted keys"},
		{"empty keys", "threshold: 1\nkeys: []\n", 2, "no trusted keys"},
		{"keys not list", "keys: k.pub\n", 1, "keys must be a list"},
		{"threshold zero", "threshold: 0\nkeys:\n  - path: k.pub\n    names: [api]\n", 1, "at least 1"},
		{"threshold text", "threshold: two\nkeys:\n  - path: k.pub\n    names: [api]\n", 1, "whole number"},
		{"threshold too high", "threshold: 2\nkeys:\n  - path: k.pub\n    names: [api]\n", 1, "threshold 2 exceeds the 1 trusted keys"},
		{"unknown key field", "keys:\n  - path: k.pub\n    nmes: [api]\n", 3, `unknown field "nmes" in key`},
		{"no names", "keys:\n  - path: k.pub\n", 2, "has no names"},
		{"empty names", "keys:\n  - path: k.pub\n    names: []\n", 3, "names is empty"},
		{"names not list", "keys:\n  - path: k.pub\n    names: api\n", 3, "list of strings"},
		{"bad glob", "keys:\n  - path: k.pub\n    names: [api, \"web-[\"]\n", 3, "bad glob"},
		{"both sources", "keys:\n  - path: k.pub\n" + inline + "    names: [api]\n", 3, "both path and pem"},
		{"no source", "keys:\n  - names: [api]\n", 2, "neither path nor pem"},
		{"missing file", "keys:\n  - path: nope.pub\n    names: [api]\n", 2, "no such file"},
		{"private key file", "keys:\n  - path: k.key\n    names: [api]\n", 2, "give the .pub file"},
		{"bad inline pem", "keys:\n  - pem: hello\n    names: [api]\n", 2, "no PEM block"},
		{"id mismatch", "keys:\n  - path: k.pub\n    id: " + strings.Repeat("0", 64) + "\n    names: [api]\n", 3, "does not match the key, whose ID is " + k.id},
		{"bad time", "keys:\n  - path: k.pub\n    names: [api]\n    not_after: 2027-01-01\n", 4, "not an RFC 3339 time"},
		{"window reversed", "keys:\n  - path: k.pub\n    names: [api]\n    not_before: 2027-01-01T00:00:00Z\n    not_after: 2026-01-01T00:00:00Z\n", 2, "not after not_before"},
		{"duplicate key", "keys:\n  - path: k.pub\n    names: [api]\n" + "  - path: k.pub\n    names: [web]\n", 4, "listed twice"},
		{"revoked not id", "keys:\n  - path: k.pub\n    names: [api]\nrevoked: [abc]\n", 4, "not a key ID"},
		{"revoked not list", "keys:\n  - path: k.pub\n    names: [api]\nrevoked: abc\n", 4, "list of strings"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(c.doc), dir)
			frags := []string{c.want}
			if c.line > 0 {
				frags = append(frags, fmt.Sprintf("line %d:", c.line))
			}
			wantErr(t, err, ErrMalformed, frags...)

			// Through a file, the message names the file too.
			file := filepath.Join(dir, "trust.yaml")
			if err := os.WriteFile(file, []byte(c.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = LoadPolicy(file)
			wantErr(t, err, ErrMalformed, append(frags, "trust policy "+file+": ")...)
		})
	}
}

func TestPolicyForKeys(t *testing.T) {
	a, b := newTestKey(t), newTestKey(t)
	p := PolicyForKeys(a.pub, b.pub)
	if p.Threshold != 1 || len(p.Keys) != 2 || p.Keys[1].ID != b.id {
		t.Fatalf("policy %+v", p)
	}
	for _, name := range []string{"api", "web/frontend", "x.y"} {
		if !p.Keys[0].mayName(name) {
			t.Errorf("PolicyForKeys key may not sign %q", name)
		}
	}
}
