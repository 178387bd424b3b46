package signing

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestStatementRoundTrip(t *testing.T) {
	data := testStatement(t, "api@1.4.0", testDigest)
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["_type"] != StatementType || raw["predicateType"] != PredicateType {
		t.Errorf("statement JSON: %s", data)
	}
	st, err := ParseStatement(data)
	if err != nil {
		t.Fatal(err)
	}
	if st.Subject[0].Name != "api@1.4.0" || st.Subject[0].Digest["sha256"] != testDigest {
		t.Errorf("subject %+v", st.Subject)
	}
	p := st.Predicate
	if p.BuildDefinition.BuildType != BuildType || p.RunDetails.Builder.ID != DefaultBuilderID {
		t.Errorf("predicate defaults: %+v", p)
	}
	if !p.RunDetails.Metadata.FinishedOn.Equal(testTime) {
		t.Errorf("finishedOn %v", p.RunDetails.Metadata.FinishedOn)
	}
	repo, commit := st.Source()
	if repo != "https://git.example/api.git" || commit != strings.Repeat("ab", 20) {
		t.Errorf("Source() = %q, %q", repo, commit)
	}
	var ext map[string]string
	if err := json.Unmarshal(p.BuildDefinition.ExternalParameters, &ext); err != nil || ext["kind"] != "whale" {
		t.Errorf("externalParameters %s: %v", p.BuildDefinition.ExternalParameters, err)
	}
}

func TestParseStatementRefusals(t *testing.T) {
	good := string(testStatement(t, "api@1.4.0", testDigest))
	edit := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("fixture lacks %q", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	subj := `"subject":[{"name":"api@1.4.0","digest":{"sha256":"` + testDigest + `"}}]`
	cases := []struct {
		name, doc, want string
	}{
		{"wrong type", edit(StatementType, "https://in-toto.io/Statement/v0.1"), "_type"},
		{"wrong predicate type", edit(PredicateType, "https://slsa.dev/provenance/v0.2"), "predicateType"},
		{"no subject", edit(subj, `"subject":[]`), "0 subjects"},
		{"two subjects", edit(subj, `"subject":[{"name":"a","digest":{"sha256":"`+testDigest+`"}},{"name":"b","digest":{"sha256":"`+testDigest+`"}}]`), "2 subjects"},
		{"no sha256", edit(`"sha256":"`+testDigest+`"`, `"sha512":"`+testDigest+`"`), "no sha256"},
		{"short digest", edit(testDigest, testDigest[:60]), "64 lowercase hex"},
		{"upper digest", edit(testDigest, strings.ToUpper(testDigest)), "64 lowercase hex"},
		{"no name", edit(`"name":"api@1.4.0"`, `"name":""`), "no name"},
		{"no builder", edit(`"id":"`+DefaultBuilderID+`"`, `"id":""`), "builder.id"},
		{"no build type", edit(`"buildType":"`+BuildType+`"`, `"buildType":""`), "buildType"},
		{"params not object", edit(`"externalParameters":{"name":"api","version":"1.4.0","kind":"whale"}`, `"externalParameters":"x"`), "externalParameters"},
		{"duplicate subject", edit(subj, subj+`,"subject":[{"name":"evil@1.0.0","digest":{"sha256":"`+testDigest+`"}}]`), "duplicate JSON key"},
		{"case twin", edit(subj, subj+`,"Subject":[]`), "differ only in case"},
		{"not json", "{", "unexpected end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseStatement([]byte(c.doc))
			wantErr(t, err, ErrMalformed, "parse statement", c.want)
		})
	}
}

func TestDetectSource(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is needed: apt-get install git")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example",
			"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	if repo, commit := DetectSource(dir); repo != "" || commit != "" {
		t.Errorf("outside a repository: %q, %q", repo, commit)
	}
	git("init", "-q")
	if repo, commit := DetectSource(dir); repo != "" || commit != "" {
		t.Errorf("empty repository: %q, %q", repo, commit)
	}
	git("commit", "-q", "--allow-empty", "-m", "x")
	head := git("rev-parse", "HEAD")
	if repo, commit := DetectSource(dir); repo != "" || commit != head {
		t.Errorf("no remote: %q, %q, want commit %s", repo, commit, head)
	}
	git("remote", "add", "origin", "https://user:s3cret@git.example/api.git")
	if repo, commit := DetectSource(dir); repo != "https://git.example/api.git" || commit != head {
		t.Errorf("with remote: %q, %q", repo, commit)
	}
}

func TestStripCredentials(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:tok@github.com/a/b.git": "https://github.com/a/b.git",
		"https://tok@github.com/a/b.git":      "https://github.com/a/b.git",
		"ssh://git@github.com/a/b.git":        "ssh://git@github.com/a/b.git",
		"git@github.com:a/b.git":              "git@github.com:a/b.git",
		"/srv/git/b.git":                      "/srv/git/b.git",
	} {
		if got := stripCredentials(in); got != want {
			t.Errorf("stripCredentials(%q) = %q, want %q", in, got, want)
		}
	}
}
