package daemon

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// The node's status says how it confines tasks, and says it plainly when it
// runs without user namespaces.
func TestStatusShowsIsolation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the launcher maps user namespaces into the subordinate range")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := testConfig(t)
	cfg.SubIDs = "2000000000:131072"
	n := startNode(t, cfg)
	var st Status
	if err := n.cl.Do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if !st.Isolation.UserNS || !st.Isolation.Seccomp || !st.Isolation.IDMappedMounts || st.Isolation.IDRange != "2000000000-2000131071" || st.ID != n.d.ID() {
		t.Errorf("status: %+v", st.Isolation)
	}

	cfg = testConfig(t)
	cfg.NoUserNS = true
	n = startNode(t, cfg)
	if err := n.cl.Do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Isolation.UserNS || !strings.Contains(st.Isolation.UserNSError, "turned off") {
		t.Errorf("status without user namespaces: %+v", st.Isolation)
	}
}

func TestSubIDsAreChecked(t *testing.T) {
	for _, bad := range []string{"100000", "0:65536", "100000:10", "4294900000:131072", "a:b"} {
		cfg := testConfig(t)
		cfg.SubIDs = bad
		if _, err := New(context.Background(), cfg); Code(err) != CodeUsage || !strings.Contains(err.Error(), "START:COUNT") {
			t.Errorf("--subids %s: %v (code %q), want a usage error saying START:COUNT", bad, err, Code(err))
		}
	}
}
