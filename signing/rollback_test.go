package signing

import (
	"errors"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"1.4.0", "1.4.0", 0},
		{"v1.4.0", "1.4.0", 0},
		{"1.4.0", "1.10.0", -1},
		{"2.0.0", "1.99.99", 1},
		{"1.4.0-rc.1", "1.4.0", -1},
		{"1.4.0-rc.2", "1.4.0-rc.10", -1},
		{"1.4.0+build.1", "1.4.0+build.2", 0},
		{"banana", "1.0.0", -1},
		{"1.4", "1.4.0", -1}, // shorthand is not a release version
	}
	for _, c := range cases {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestValidateVersion(t *testing.T) {
	for _, v := range []string{"1.4.0", "v1.4.0", "0.0.1-alpha", "1.0.0+sha.abc"} {
		if err := ValidateVersion(v); err != nil {
			t.Errorf("ValidateVersion(%q): %v", v, err)
		}
	}
	for _, v := range []string{"", "v", "1", "1.4", "v1.4", "1.4.0.1", "01.4.0", "latest", "1.4.0-", "vv1.0.0"} {
		wantErr(t, ValidateVersion(v), ErrMalformed, "not a semantic version")
	}
}

func TestCheckRollback(t *testing.T) {
	st := &MemoryRollbackState{}
	// Nothing recorded: anything valid passes.
	wantErr(t, CheckRollback(st, "api", "1.4.0", false), nil)
	if err := RecordVersion(st, "api", "1.4.0"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, CheckRollback(st, "api", "1.4.0", false), nil) // re-verify
	wantErr(t, CheckRollback(st, "api", "v1.4.0", false), nil)
	wantErr(t, CheckRollback(st, "api", "1.5.0", false), nil)
	wantErr(t, CheckRollback(st, "web", "0.1.0", false), nil) // per name
	wantErr(t, CheckRollback(st, "api", "1.3.9", false), ErrRollback,
		"refuse api@1.3.9: older than api@1.4.0", "--allow-rollback")
	wantErr(t, CheckRollback(st, "api", "1.4.0-rc.1", false), ErrRollback)
	wantErr(t, CheckRollback(st, "api", "1.3.9", true), nil)
	wantErr(t, CheckRollback(st, "api", "latest", true), ErrMalformed, `"latest"`)

	// An allowed rollback does not lower the mark.
	if err := RecordVersion(st, "api", "1.3.9"); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := st.HighestVersion("api"); v != "1.4.0" {
		t.Errorf("highest = %q after recording an older version", v)
	}
	if err := RecordVersion(st, "api", "1.10.0"); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := st.HighestVersion("api"); v != "1.10.0" {
		t.Errorf("highest = %q, want 1.10.0", v)
	}
	wantErr(t, CheckRollback(st, "api", "1.9.0", false), ErrRollback, "api@1.10.0")
}

type failingState struct{}

func (failingState) HighestVersion(string) (string, bool, error) {
	return "", false, errors.New("db closed")
}
func (failingState) RecordVersion(string, string) error { return errors.New("db closed") }

func TestCheckRollbackStateError(t *testing.T) {
	err := CheckRollback(failingState{}, "api", "1.0.0", false)
	if err == nil || IsVerification(err) {
		t.Fatalf("state failure: %v, want a non-verification error", err)
	}
}
