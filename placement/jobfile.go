package placement

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"ballena.dev/artifact"
	"ballena.dev/internal/units"

	"go.yaml.in/yaml/v3"
)

// FieldError is a problem in a job file, located by field path and line.
type FieldError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", loc, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Field, e.Msg)
}

// ParseJob reads a job file (YAML). Unknown fields are errors, and every error
// names the file, the line and the field, e.g.
// `api.yaml:7: resources.memory: "256XB" is not a size`.
func ParseJob(file string, data []byte) (*Job, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return nil, &FieldError{File: file, Msg: strings.Join(te.Errors, "; ")}
		}
		// yaml's messages start with "yaml: line N: ...".
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 0
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = strings.TrimPrefix(msg, m[0])
		}
		return nil, &FieldError{File: file, Line: line, Msg: "not valid YAML: " + msg}
	}
	if len(doc.Content) == 0 {
		return nil, &FieldError{File: file, Msg: "empty job file"}
	}
	p := jobParser{file: file}
	j := &Job{}
	p.job(doc.Content[0], j)
	if p.err != nil {
		return nil, p.err
	}
	return j, nil
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): `)

type jobParser struct {
	file string
	err  *FieldError
}

func (p *jobParser) fail(n *yaml.Node, field, format string, a ...any) {
	if p.err == nil {
		p.err = &FieldError{File: p.file, Line: n.Line, Field: field, Msg: fmt.Sprintf(format, a...)}
	}
}

// fields walks a mapping node, calling set for each known key and failing on
// unknown or repeated ones.
func (p *jobParser) fields(n *yaml.Node, prefix string, known []string, set func(key string, v *yaml.Node, field string)) {
	if n.Kind != yaml.MappingNode {
		p.fail(n, strings.TrimSuffix(prefix, "."), "must be a mapping, not %s", kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content) && p.err == nil; i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := prefix + k.Value
		if seen[k.Value] {
			p.fail(k, field, "appears twice")
			return
		}
		seen[k.Value] = true
		if !contains(known, k.Value) {
			p.fail(k, field, "unknown field (known: %s)", strings.Join(known, ", "))
			return
		}
		set(k.Value, v, field)
	}
}

// MaxCount is the most tasks one job may have: a job's changes commit in one
// badger transaction, which must stay within badger's batch limits.
const MaxCount = 10000

var jobFields = []string{"name", "artifact", "digest", "count", "resources", "priority",
	"constraints", "spread", "distinct_hosts", "args", "env", "restart", "update",
	"seccomp", "network", "user", "limits", "check"}

func (p *jobParser) job(n *yaml.Node, j *Job) {
	resNode, updNode := n, n
	j.Count = 1 // unless the file says otherwise; count: 0 keeps the job with no tasks
	p.fields(n, "", jobFields, func(key string, v *yaml.Node, field string) {
		switch key {
		case "name":
			j.Name = p.str(v, field)
			if p.err == nil && !nameRE.MatchString(j.Name) {
				p.fail(v, field, "%q is not a job name (letters, digits, '-', '_', '.'; up to 63)", j.Name)
			}
		case "artifact":
			j.Artifact = p.str(v, field)
			if _, err := artifact.ParseRef(j.Artifact); p.err == nil && err != nil {
				p.fail(v, field, "%q is not an artifact reference a node accepts: %s", j.Artifact, refReason(err))
			}
		case "digest":
			j.Digest = strings.TrimPrefix(p.str(v, field), "sha256:")
			if p.err == nil && !digestRE.MatchString(j.Digest) {
				p.fail(v, field, "%q is not a sha256 digest (64 hex digits)", j.Digest)
			}
		case "count":
			j.Count = int(p.int(v, field, 0, MaxCount))
		case "resources":
			resNode = v
			p.fields(v, "resources.", []string{"cpu", "memory", "pids"}, func(key string, v *yaml.Node, field string) {
				switch key {
				case "cpu":
					c, err := units.ParseCPU(v.Value)
					if err != nil || v.Kind != yaml.ScalarNode {
						p.fail(v, field, "%q is not a cpu amount (500m is half a CPU, 2 is two)", v.Value)
					}
					j.Resources.CPU = c
				case "memory":
					m, err := units.ParseBytes(v.Value)
					if err != nil || v.Kind != yaml.ScalarNode {
						p.fail(v, field, "%q is not a size (e.g. 256MiB, 1GiB; 512M is 512MiB)", v.Value)
					}
					j.Resources.Memory = m
				case "pids":
					j.Resources.PIDs = p.int(v, field, 1, 1<<22)
				}
			})
		case "priority":
			b := Band(p.str(v, field))
			if p.err == nil && b != BandProd && b != BandBatch {
				p.fail(v, field, "%q is not a priority band (prod or batch)", string(b))
			}
			j.Priority = b
		case "constraints":
			if v.Kind != yaml.SequenceNode {
				p.fail(v, field, "must be a list of {label, equals|not_equals|in|not_in}")
				return
			}
			for i, c := range v.Content {
				j.Constraints = append(j.Constraints, p.constraint(c, fmt.Sprintf("%s[%d]", field, i)))
			}
		case "spread":
			j.Spread = p.str(v, field)
		case "distinct_hosts":
			j.DistinctHosts = p.bool(v, field)
		case "args":
			j.Args = p.strs(v, field)
		case "env":
			if v.Kind != yaml.MappingNode {
				p.fail(v, field, "must be a mapping of NAME: value")
				return
			}
			j.Env = map[string]string{}
			for i := 0; i+1 < len(v.Content); i += 2 {
				k, val := v.Content[i], v.Content[i+1]
				if !envRE.MatchString(k.Value) {
					p.fail(k, field+"."+k.Value, "is not an environment variable name")
					return
				}
				if val.Kind != yaml.ScalarNode {
					p.fail(val, field+"."+k.Value, "must be a string")
					return
				}
				j.Env[k.Value] = val.Value
			}
		case "restart":
			j.Restart = p.oneOf(v, field, "a restart policy (never, on-failure, always)", RestartNever, RestartOnFailure, RestartAlways)
		case "update":
			updNode = v
			p.fields(v, "update.", []string{"max_parallel", "canary", "min_healthy_time", "healthy_deadline", "auto_revert", "auto_promote"}, func(key string, v *yaml.Node, field string) {
				switch key {
				case "max_parallel":
					j.Update.MaxParallel = int(p.int(v, field, 1, 10000))
				case "canary":
					j.Update.Canary = int(p.int(v, field, 0, MaxCount))
				case "min_healthy_time":
					j.Update.MinHealthyTime = p.duration(v, field, 0)
				case "healthy_deadline":
					j.Update.HealthyDeadline = p.duration(v, field, time.Second)
				case "auto_revert":
					j.Update.AutoRevert = p.bool(v, field)
				case "auto_promote":
					j.Update.AutoPromote = p.bool(v, field)
				}
			})
		case "check":
			j.Check = p.check(v, field)
		case "seccomp":
			j.Isolation.Seccomp = p.oneOf(v, field, "a seccomp setting (default, or unconfined to run without the filter)", SeccompDefault, SeccompUnconfined)
			if j.Isolation.Seccomp == SeccompDefault {
				j.Isolation.Seccomp = ""
			}
		case "network":
			j.Isolation.Network = p.oneOf(v, field, "a network (host, or none for loopback only)", NetworkHost, NetworkNone)
			if j.Isolation.Network == NetworkHost {
				j.Isolation.Network = ""
			}
		case "user":
			j.Isolation.User = p.str(v, field)
			if p.err == nil && !userRE.MatchString(j.Isolation.User) {
				p.fail(v, field, "%q is not a user (uid, uid:gid, or for images a name or name:group)", j.Isolation.User)
			}
		case "limits":
			p.fields(v, "limits.", []string{"nofile", "core"}, func(key string, v *yaml.Node, field string) {
				switch key {
				case "nofile":
					j.Isolation.NoFile = p.int(v, field, 16, 1<<20)
				case "core":
					var c int64
					var err error
					if v.Value != "0" { // no core dumps: the default, and what the README shows
						c, err = units.ParseBytes(v.Value)
					}
					if err != nil || v.Kind != yaml.ScalarNode || c < 0 {
						p.fail(v, field, "%q is not a size (e.g. 0, 64MiB)", v.Value)
					}
					j.Isolation.CoreBytes = c
				}
			})
		}
	})
	if p.err != nil {
		return
	}
	for _, req := range []struct {
		name string
		ok   bool
	}{{"name", j.Name != ""}, {"artifact", j.Artifact != ""}, {"resources", j.Resources.CPU > 0 || j.Resources.Memory > 0}} {
		if !req.ok {
			p.fail(n, req.name, "is required")
			return
		}
	}
	if j.Resources.CPU == 0 {
		p.fail(resNode, "resources.cpu", "is required")
	}
	if j.Resources.Memory == 0 {
		p.fail(resNode, "resources.memory", "is required")
	}
	j.setDefaults()
	if j.Update.HealthyDeadline <= j.Update.MinHealthyTime {
		p.fail(updNode, "update.healthy_deadline", "%s must be longer than min_healthy_time (%s)", j.Update.HealthyDeadline, j.Update.MinHealthyTime)
	}
}

func (p *jobParser) check(n *yaml.Node, field string) *Check {
	c := &Check{}
	kinds := 0
	p.fields(n, field+".", []string{"http", "tcp", "exec", "port", "port_env", "interval", "timeout", "failures"}, func(key string, v *yaml.Node, f string) {
		switch key {
		case "http":
			kinds++
			c.HTTP = p.str(v, f)
			if p.err == nil && !strings.HasPrefix(c.HTTP, "/") {
				p.fail(v, f, "%q is not a path (e.g. /healthz)", c.HTTP)
			}
		case "tcp":
			kinds++
			c.TCP = p.bool(v, f)
			if p.err == nil && !c.TCP {
				p.fail(v, f, "tcp: false checks nothing; leave it out")
			}
		case "exec":
			kinds++
			c.Exec = p.strs(v, f)
			if p.err == nil && len(c.Exec) == 0 {
				p.fail(v, f, "needs a command")
			}
		case "port":
			c.Port = int(p.int(v, f, 1, 65535))
		case "port_env":
			c.PortEnv = p.str(v, f)
			if p.err == nil && !envRE.MatchString(c.PortEnv) {
				p.fail(v, f, "%q is not an environment variable name", c.PortEnv)
			}
		case "interval":
			c.Interval = p.duration(v, f, 100*time.Millisecond)
		case "timeout":
			c.Timeout = p.duration(v, f, 10*time.Millisecond)
		case "failures":
			c.Failures = int(p.int(v, f, 1, 100))
		}
	})
	if p.err != nil {
		return nil
	}
	if kinds != 1 {
		p.fail(n, field, "needs exactly one of http, tcp, exec")
		return nil
	}
	if err := c.validate(); err != nil {
		p.fail(n, field, "%s", err)
	}
	return c
}

// duration reads a Go duration ("10s", "1m30s") of at least lo.
func (p *jobParser) duration(n *yaml.Node, field string, lo time.Duration) time.Duration {
	if n.Kind != yaml.ScalarNode {
		p.fail(n, field, "%s is not a duration (e.g. 10s, 1m30s)", kindName(n))
		return 0
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		p.fail(n, field, "%q is not a duration (e.g. 10s, 1m30s)", n.Value)
		return 0
	}
	if d < lo {
		p.fail(n, field, "%s is too short (at least %s)", n.Value, lo)
	}
	return d
}

// validate checks what ParseJob and the API both require of a check.
func (c *Check) validate() error {
	kinds := 0
	for _, set := range []bool{c.HTTP != "", c.TCP, len(c.Exec) > 0} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds != 1:
		return errors.New("needs exactly one of http, tcp, exec")
	case (c.HTTP != "" || c.TCP) && (c.Port == 0) == (c.PortEnv == ""):
		return errors.New("an http or tcp check needs one of port, port_env")
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("port %d is out of range", c.Port)
	case c.PortEnv != "" && !envRE.MatchString(c.PortEnv):
		return fmt.Errorf("port_env %q is not an environment variable name", c.PortEnv)
	case c.Interval < 0 || c.Timeout < 0 || c.Failures < 0:
		return errors.New("interval, timeout and failures must not be negative")
	}
	return nil
}

func (c *Check) setDefaults() {
	if c.Interval == 0 {
		c.Interval = DefaultCheckInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultCheckTimeout
	}
	if c.Timeout > c.Interval {
		c.Timeout = c.Interval
	}
	if c.Failures == 0 {
		c.Failures = DefaultCheckFailures
	}
}

func (p *jobParser) constraint(n *yaml.Node, field string) Constraint {
	var c Constraint
	p.fields(n, field+".", []string{"label", OpEquals, OpNotEquals, OpIn, OpNotIn}, func(key string, v *yaml.Node, f string) {
		switch key {
		case "label":
			c.Label = p.str(v, f)
		case OpEquals, OpNotEquals:
			if c.Op != "" {
				p.fail(v, f, "only one of equals, not_equals, in, not_in per constraint")
			}
			c.Op, c.Values = key, []string{p.str(v, f)}
		case OpIn, OpNotIn:
			if c.Op != "" {
				p.fail(v, f, "only one of equals, not_equals, in, not_in per constraint")
			}
			c.Op, c.Values = key, p.strs(v, f)
			if p.err == nil && len(c.Values) == 0 {
				p.fail(v, f, "needs at least one value")
			}
		}
	})
	if p.err == nil && c.Label == "" {
		p.fail(n, field+".label", "is required")
	}
	if p.err == nil && c.Op == "" {
		p.fail(n, field, "needs one of equals, not_equals, in, not_in")
	}
	return c
}

func (p *jobParser) str(n *yaml.Node, field string) string {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.fail(n, field, "must be a string, not %s", kindName(n))
		return ""
	}
	return n.Value
}

// oneOf reads a string that must be one of allowed; what names the kind of
// value, with its choices, for the error.
func (p *jobParser) oneOf(n *yaml.Node, field, what string, allowed ...string) string {
	s := p.str(n, field)
	if p.err == nil && !slices.Contains(allowed, s) {
		p.fail(n, field, "%q is not %s", s, what)
	}
	return s
}

func (p *jobParser) strs(n *yaml.Node, field string) []string {
	if n.Kind != yaml.SequenceNode {
		p.fail(n, field, "must be a list of strings, not %s", kindName(n))
		return nil
	}
	out := []string{}
	for i, e := range n.Content {
		out = append(out, p.str(e, fmt.Sprintf("%s[%d]", field, i)))
	}
	return out
}

func (p *jobParser) int(n *yaml.Node, field string, lo, hi int64) int64 {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		p.fail(n, field, "%q is not a whole number", n.Value)
		return 0
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || v < lo || v > hi {
		p.fail(n, field, "%s is out of range (%d..%d)", n.Value, lo, hi)
	}
	return v
}

func (p *jobParser) bool(n *yaml.Node, field string) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		p.fail(n, field, "%q is not true or false", n.Value)
		return false
	}
	b, _ := strconv.ParseBool(n.Value)
	return b
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "empty"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an alias"
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// Isolation settings a job file may name.
const (
	SeccompDefault    = "default"
	SeccompUnconfined = "unconfined"
	NetworkHost       = "host"
	NetworkNone       = "none"
)

var (
	userRE   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$`)
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	digestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	envRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

func (j *Job) setDefaults() {
	if j.Priority == "" {
		j.Priority = BandProd
	}
	if j.Restart == "" {
		j.Restart = RestartOnFailure
	}
	if j.Update.MaxParallel == 0 {
		j.Update.MaxParallel = 1
	}
	if j.Update.MinHealthyTime == 0 {
		j.Update.MinHealthyTime = DefaultMinHealthyTime
	}
	if j.Update.HealthyDeadline == 0 {
		j.Update.HealthyDeadline = DefaultHealthyDeadline
	}
	if j.Check != nil {
		j.Check.setDefaults()
	}
}

// Validate checks a job that did not come from ParseJob (e.g. over the API).
func (j *Job) Validate() error {
	j.setDefaults()
	bad := func(field, format string, a ...any) error {
		return fmt.Errorf("job %q: %s: %s", j.Name, field, fmt.Sprintf(format, a...))
	}
	switch {
	case !nameRE.MatchString(j.Name):
		return bad("name", "%q is not a job name", j.Name)
	case refErr(j.Artifact) != nil:
		return bad("artifact", "%q is not an artifact reference a node accepts: %s", j.Artifact, refReason(refErr(j.Artifact)))
	case j.Digest != "" && !digestRE.MatchString(j.Digest):
		return bad("digest", "%q is not a sha256 digest", j.Digest)
	case j.Count < 0 || j.Count > MaxCount:
		return bad("count", "%d is out of range", j.Count)
	case j.Resources.CPU <= 0 || j.Resources.Memory <= 0 || j.Resources.PIDs < 0:
		return bad("resources", "cpu and memory are required and positive")
	case j.Priority != BandProd && j.Priority != BandBatch:
		return bad("priority", "%q is not prod or batch", j.Priority)
	case j.Restart != RestartNever && j.Restart != RestartOnFailure && j.Restart != RestartAlways:
		return bad("restart", "%q is not never, on-failure or always", j.Restart)
	case j.Update.MaxParallel < 1:
		return bad("update.max_parallel", "must be at least 1")
	case j.Update.Canary < 0 || j.Update.Canary > MaxCount:
		return bad("update.canary", "%d is out of range", j.Update.Canary)
	case j.Update.MinHealthyTime < 0 || j.Update.HealthyDeadline < 0:
		return bad("update", "min_healthy_time and healthy_deadline must not be negative")
	case j.Update.HealthyDeadline <= j.Update.MinHealthyTime:
		return bad("update.healthy_deadline", "%s must be longer than min_healthy_time (%s)", j.Update.HealthyDeadline, j.Update.MinHealthyTime)
	case j.Isolation.Seccomp != "" && j.Isolation.Seccomp != SeccompUnconfined:
		return bad("seccomp", "%q is not default or unconfined", j.Isolation.Seccomp)
	case j.Isolation.Network != "" && j.Isolation.Network != NetworkNone:
		return bad("network", "%q is not host or none", j.Isolation.Network)
	case j.Isolation.User != "" && !userRE.MatchString(j.Isolation.User):
		return bad("user", "%q is not uid, uid:gid, name or name:group", j.Isolation.User)
	case j.Isolation.NoFile != 0 && (j.Isolation.NoFile < 16 || j.Isolation.NoFile > 1<<20):
		return bad("limits.nofile", "%d is out of range (16..1048576)", j.Isolation.NoFile)
	case j.Isolation.CoreBytes < 0:
		return bad("limits.core", "must not be negative")
	}
	for i, c := range j.Constraints {
		ok := c.Label != "" && len(c.Values) > 0
		switch c.Op {
		case OpEquals, OpNotEquals:
			ok = ok && len(c.Values) == 1
		case OpIn, OpNotIn:
		default:
			ok = false
		}
		if !ok {
			return bad(fmt.Sprintf("constraints[%d]", i), "needs a label, an op (equals, not_equals, in, not_in) and values")
		}
	}
	for k := range j.Env {
		if !envRE.MatchString(k) {
			return bad("env."+k, "is not an environment variable name")
		}
	}
	if j.Check != nil {
		if err := j.Check.validate(); err != nil {
			return bad("check", "%s", err)
		}
	}
	return nil
}

// specEqual reports whether two jobs would run the same tasks; a change in any of
// these fields makes a new job version and a rolling update.
func specEqual(a, b *Job) bool {
	if a.Artifact != b.Artifact || a.Digest != b.Digest || a.Resources != b.Resources ||
		a.Priority != b.Priority || a.Restart != b.Restart || a.Isolation != b.Isolation || len(a.Args) != len(b.Args) || len(a.Env) != len(b.Env) {
		return false
	}
	for i := range a.Args {
		if a.Args[i] != b.Args[i] {
			return false
		}
	}
	for k, v := range a.Env {
		if bv, ok := b.Env[k]; !ok || bv != v {
			return false
		}
	}
	if (a.Check == nil) != (b.Check == nil) || a.Check != nil && !reflect.DeepEqual(*a.Check, *b.Check) {
		return false
	}
	return true
}

// FormatSize prints bytes the way job files and the CLI read them (internal/units).
func FormatSize(n int64) string { return units.FormatBytes(n) }

func refErr(ref string) error {
	_, err := artifact.ParseRef(ref)
	return err
}

// refReason is ParseRef's complaint without the reference it repeats.
func refReason(err error) string {
	msg := err.Error()
	if _, after, ok := strings.Cut(msg, ": "); ok {
		return after
	}
	return msg
}
