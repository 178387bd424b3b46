package placement

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"ballena.dev/artifact"
)

func TestParseJobFile(t *testing.T) {
	data, err := os.ReadFile("testdata/api.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j, err := ParseJob("api.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	want := &Job{
		Name: "api", Artifact: "api@1.4.0", Digest: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
		Count: 4, Resources: Resources{CPU: 500, Memory: 256 << 20, PIDs: 128}, Priority: BandProd,
		Constraints: []Constraint{{Label: "zone", Op: OpIn, Values: []string{"eu-1", "eu-2"}}, {Label: "disk", Op: OpNotEquals, Values: []string{"hdd"}}},
		Spread:      "rack", DistinctHosts: true, Args: []string{"--listen", ":8080"}, Env: map[string]string{"LOG_LEVEL": "info"},
		Restart: RestartOnFailure,
		Update:  Update{MaxParallel: 2, Canary: 1, MinHealthyTime: 15 * time.Second, HealthyDeadline: 2 * time.Minute, AutoRevert: true},
		Check:   &Check{HTTP: "/healthz", PortEnv: "PORT", Interval: 5 * time.Second, Timeout: DefaultCheckTimeout, Failures: DefaultCheckFailures},
	}
	if !reflect.DeepEqual(j, want) {
		t.Errorf("got  %+v\nwant %+v", j, want)
	}
	if err := j.Validate(); err != nil {
		t.Errorf("parsed job does not validate: %v", err)
	}
}

func TestParseJobDefaults(t *testing.T) {
	j, err := ParseJob("w.yaml", []byte("name: w\nartifact: w@1.0.0\nresources: {cpu: 2000m, memory: 1GiB}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if j0, err := ParseJob("w.yaml", []byte("name: w\nartifact: w@1.0.0\ncount: 0\nresources: {cpu: 1, memory: 1Mi}\n")); err != nil || j0.Count != 0 {
		t.Errorf("count: 0 parsed as %+v, %v", j0, err)
	}
	if j.Count != 1 || j.Priority != BandProd || j.Restart != RestartOnFailure || j.Update.MaxParallel != 1 || j.Resources.CPU != 2000 {
		t.Errorf("defaults: %+v", j)
	}
	j, err = ParseJob("w.yaml", []byte("name: w\nartifact: w@1.0.0\nresources: {cpu: 1.5, memory: 512M}\n"))
	if err != nil || j.Resources.CPU != 1500 || j.Resources.Memory != 512<<20 {
		t.Errorf("cores and IEC sizes: %+v, %v", j, err)
	}
}

func TestParseJobErrors(t *testing.T) {
	base := "name: api\nartifact: api@1.4.0\nresources:\n  cpu: 500m\n  memory: 256MiB\n"
	cases := []struct {
		name, yaml, want string
	}{
		{"bad size", base[:strings.Index(base, "  memory")] + "  memory: 256XB\n", `api.yaml:5: resources.memory: "256XB" is not a size`},
		{"bad cpu", "name: api\nartifact: api@1.4.0\nresources:\n  cpu: lots\n  memory: 1GiB\n", `api.yaml:4: resources.cpu: "lots" is not a cpu amount`},
		{"unknown field", base + "replicas: 3\n", "api.yaml:6: replicas: unknown field"},
		{"unknown nested field", base + "update:\n  max_paralel: 2\n", "api.yaml:7: update.max_paralel: unknown field"},
		{"bad band", base + "priority: urgent\n", `api.yaml:6: priority: "urgent" is not a priority band`},
		{"bad count", base + "count: three\n", `api.yaml:6: count: "three" is not a whole number`},
		{"negative count", base + "count: -1\n", "api.yaml:6: count: -1 is out of range"},
		{"bad artifact", "name: api\nartifact: api\n", `api.yaml:2: artifact: "api" is not an artifact reference`},
		{"missing artifact", "name: api\nresources: {cpu: 1, memory: 1Mi}\n", "api.yaml:1: artifact: is required"},
		{"missing memory", "name: api\nartifact: a@1.0.0\nresources: {cpu: 100m}\n", "api.yaml:3: resources.memory: is required"},
		{"constraint without op", base + "constraints:\n  - label: zone\n", "api.yaml:7: constraints[0]: needs one of equals"},
		{"constraint two ops", base + "constraints:\n  - label: zone\n    equals: a\n    in: [b]\n", "api.yaml:9: constraints[0].in: only one of"},
		{"bad restart", base + "restart: sometimes\n", `api.yaml:6: restart: "sometimes" is not a restart policy`},
		{"args not a list", base + "args: --port 80\n", "api.yaml:6: args: must be a list of strings"},
		{"bad env name", base + "env:\n  1BAD: x\n", "api.yaml:7: env.1BAD: is not an environment variable name"},
		{"duplicate key", base + "name: other\n", "api.yaml:6: name: appears twice"},
		{"bad digest", base + "digest: abc\n", `api.yaml:6: digest: "abc" is not a sha256 digest`},
		{"not yaml", "name: [api\n", "api.yaml:"},
		{"not a mapping", "- api\n", "api.yaml:1: must be a mapping"},
		{"empty", "", "api.yaml: empty job file"},
		{"check without kind", base + "check: {port: 80}\n", "api.yaml:6: check: needs exactly one of http, tcp, exec"},
		{"check two kinds", base + "check: {tcp: true, exec: [true], port: 80}\n", "api.yaml:6: check: needs exactly one of http, tcp, exec"},
		{"http check without port", base + "check: {http: /healthz}\n", "api.yaml:6: check: an http or tcp check needs one of port, port_env"},
		{"http check not a path", base + "check: {http: healthz, port: 80}\n", `api.yaml:6: check.http: "healthz" is not a path`},
		{"bad interval", base + "check: {tcp: true, port: 80, interval: often}\n", `api.yaml:6: check.interval: "often" is not a duration`},
		{"bad min_healthy_time", base + "update: {min_healthy_time: 10}\n", `api.yaml:6: update.min_healthy_time: "10" is not a duration`},
		{"deadline before healthy", base + "update: {min_healthy_time: 1m, healthy_deadline: 30s}\n", "update.healthy_deadline: 30s must be longer than min_healthy_time (1m0s)"},
	}
	for _, tc := range cases {
		_, err := ParseJob("api.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", tc.name, err, tc.want)
		}
	}
}

func TestJobUnitsAndRefsFollowTheNode(t *testing.T) {
	// Sizes are IEC like the CLI's (8G = 8GiB) and a bare cpu number is CPUs.
	j, err := ParseJob("w.yaml", []byte("name: w\nartifact: w@1.0.0\nresources: {cpu: 2, memory: 8G}\n"))
	if err != nil || j.Resources.Memory != 8<<30 || j.Resources.CPU != 2000 {
		t.Fatalf("8G and cpu 2: %+v, %v", j, err)
	}
	// A reference no node accepts is refused at submit, naming the field.
	for _, ref := range []string{"team/api@1.0.0", "API@1.0.0", "api@latest"} {
		_, err := ParseJob("w.yaml", []byte("name: w\nartifact: "+ref+"\nresources: {cpu: 1, memory: 1Mi}\n"))
		if err == nil || !strings.Contains(err.Error(), "w.yaml:2: artifact:") {
			t.Errorf("artifact %s: %v, want a refusal on line 2", ref, err)
		}
		if _, perr := artifact.ParseRef(ref); perr == nil {
			t.Errorf("artifact.ParseRef(%s) accepts what the job file refuses", ref)
		}
		api := &Job{Name: "w", Artifact: ref, Resources: Resources{CPU: 100, Memory: 1 << 20}}
		if err := api.Validate(); err == nil || !strings.Contains(err.Error(), "artifact") {
			t.Errorf("Validate with artifact %s: %v", ref, err)
		}
	}
}

func TestParseJobIsolation(t *testing.T) {
	base := "name: w\nartifact: w@1.0.0\nresources: {cpu: 1, memory: 1GiB}\n"
	j, err := ParseJob("w.yaml", []byte(base+"seccomp: unconfined\nnetwork: none\nuser: \"app:staff\"\nlimits: {nofile: 65536, core: 64MiB}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Isolation{Seccomp: SeccompUnconfined, Network: NetworkNone, User: "app:staff", NoFile: 65536, CoreBytes: 64 << 20}
	if j.Isolation != want {
		t.Errorf("isolation %+v, want %+v", j.Isolation, want)
	}
	if err := j.Validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
	// The defaults spelled out are the zero value: the same spec as saying nothing.
	d, err := ParseJob("w.yaml", []byte(base+"seccomp: default\nnetwork: host\nlimits: {core: 0}\n"))
	if err != nil || d.Isolation != (Isolation{}) {
		t.Errorf("explicit defaults: %+v, %v", d.Isolation, err)
	}
	plain, _ := ParseJob("w.yaml", []byte(base))
	if !specEqual(d, plain) || specEqual(j, plain) {
		t.Errorf("specEqual: defaults spelled out must equal none; isolation changes must differ")
	}
	for _, tc := range []struct{ yaml, want string }{
		{"seccomp: off\n", `w.yaml:4: seccomp: "off" is not a seccomp setting`},
		{"network: bridge\n", `w.yaml:4: network: "bridge" is not a network`},
		{"user: \"a b\"\n", `w.yaml:4: user: "a b" is not a user`},
		{"limits: {nofile: 3}\n", `w.yaml:4: limits.nofile: 3 is out of range`},
		{"limits: {stack: 1}\n", `w.yaml:4: limits.stack: unknown field`},
	} {
		_, err := ParseJob("w.yaml", []byte(base+tc.yaml))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %s...", tc.yaml, err, tc.want)
		}
	}
}
