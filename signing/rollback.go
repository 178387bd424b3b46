package signing

import (
	"fmt"
	"strings"
	"sync"

	"golang.org/x/mod/semver"
)

// canonicalVersion returns v with a "v" prefix if it is a full semantic
// version (MAJOR.MINOR.PATCH, optional pre-release and build), else "".
// x/mod/semver also accepts "v1" and "v1.2"; releases must say all three parts.
func canonicalVersion(v string) string {
	if !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	if !semver.IsValid(v) {
		return ""
	}
	core := v
	if i := strings.IndexAny(core, "-+"); i >= 0 {
		core = core[:i]
	}
	if strings.Count(core, ".") != 2 {
		return ""
	}
	return v
}

// ValidateVersion reports whether v is a full semantic version such as
// "1.4.0" or "v2.0.0-rc.1"; the error wraps ErrMalformed.
func ValidateVersion(v string) error {
	if canonicalVersion(v) == "" {
		return refusef(ErrMalformed, "version %q is not a semantic version like 1.4.0", v)
	}
	return nil
}

// CompareVersions compares two semantic versions ("v" prefix optional) and
// returns -1, 0 or +1. Build metadata is ignored; an invalid version sorts
// before every valid one, and two invalid versions compare equal.
func CompareVersions(a, b string) int {
	return semver.Compare(canonicalVersion(a), canonicalVersion(b))
}

// CheckRollback refuses version if it is older than the highest version of
// name recorded in st, unless allowRollback. The same version passes, so a
// release can be verified again.
func CheckRollback(st RollbackState, name, version string, allowRollback bool) error {
	if err := ValidateVersion(version); err != nil {
		return withPrefix("rollback check "+name, err)
	}
	highest, ok, err := st.HighestVersion(name)
	if err != nil {
		return fmt.Errorf("rollback check %s: %w", name, err)
	}
	if !ok || allowRollback || CompareVersions(version, highest) >= 0 {
		return nil
	}
	return refusef(ErrRollback, "refuse %s@%s: older than %s@%s, already verified here; pass --allow-rollback to accept it",
		name, version, name, highest)
}

// RecordVersion records version as the highest of name in st if it is higher
// than what st holds, so that an allowed rollback does not lower the mark.
func RecordVersion(st RollbackState, name, version string) error {
	if err := ValidateVersion(version); err != nil {
		return withPrefix("record version "+name, err)
	}
	highest, ok, err := st.HighestVersion(name)
	if err != nil {
		return fmt.Errorf("record version %s: %w", name, err)
	}
	if ok && CompareVersions(version, highest) <= 0 {
		return nil
	}
	if err := st.RecordVersion(name, version); err != nil {
		return fmt.Errorf("record version %s@%s: %w", name, version, err)
	}
	return nil
}

// MemoryRollbackState is a RollbackState in memory, for tests and one-shot
// verification without a store.
type MemoryRollbackState struct {
	mu       sync.Mutex
	versions map[string]string
}

// HighestVersion implements RollbackState.
func (m *MemoryRollbackState) HighestVersion(name string) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.versions[name]
	return v, ok, nil
}

// RecordVersion implements RollbackState; it stores version unconditionally.
func (m *MemoryRollbackState) RecordVersion(name, version string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.versions == nil {
		m.versions = make(map[string]string)
	}
	m.versions[name] = version
	return nil
}
