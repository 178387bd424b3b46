package main

import (
	"os"
	"strings"
	"testing"
)

// `ballena status` says how the node confines tasks, and says plainly when
// it runs without user namespaces; a bad --subids is a usage error.
func TestStatusShowsIsolation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the launcher maps user namespaces into the subordinate range")
	}
	n := startNode(t, "iso", "--subids", "1500000000:131072")
	code, out, _ := n.cli("status")
	if code != 0 || !strings.Contains(out, "isolation: seccomp filter on every task") || !strings.Contains(out, "a user namespace per task, ids 1500000000-1500131071") {
		t.Errorf("status: exit %d:\n%s", code, out)
	}
	plain := startNode(t, "nouserns", "--no-userns")
	code, out, _ = plain.cli("status")
	if code != 0 || !strings.Contains(out, "NO USER NAMESPACES") {
		t.Errorf("status with --no-userns: exit %d:\n%s", code, out)
	}
	code, _, msg := run(t, t.TempDir(), "node", "--subids", "5:10")
	if code != exitUsage || !strings.Contains(msg, "--subids") {
		t.Errorf("node --subids 5:10: exit %d %q, want a usage error naming --subids", code, msg)
	}
}
