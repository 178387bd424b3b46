package signing

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Policy is a local trust policy: which keys are trusted for which artifact
// names and when, which key IDs are revoked, and how many distinct trusted
// keys must sign a release.
type Policy struct {
	Threshold int
	Keys      []TrustedKey
	Revoked   []string // key IDs, lowercase hex
}

// TrustedKey is one key of a policy.
type TrustedKey struct {
	ID        string // KeyID(Public)
	Public    ed25519.PublicKey
	Names     []string  // path.Match globs over the artifact name; "*" matches every name
	NotBefore time.Time // zero: no lower bound
	NotAfter  time.Time // zero: no upper bound
}

// PolicyForKeys trusts each of pubs for every name, with threshold 1. It is
// the policy of `ballena verify --pub`.
func PolicyForKeys(pubs ...ed25519.PublicKey) *Policy {
	p := &Policy{Threshold: 1}
	for _, pub := range pubs {
		p.Keys = append(p.Keys, TrustedKey{ID: KeyID(pub), Public: pub, Names: []string{"*"}})
	}
	return p
}

// LoadPolicy reads and parses a trust policy file; key paths in it are
// relative to the file's directory.
func LoadPolicy(file string) (*Policy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("load trust policy: %w", err)
	}
	p, err := ParsePolicy(data, filepath.Dir(file))
	if err != nil {
		return nil, withPrefix("trust policy "+file, err)
	}
	return p, nil
}

// ParsePolicy parses a YAML trust policy. Unknown fields, bad keys, bad times
// and impossible thresholds are errors that name the line. Relative key paths
// are resolved against baseDir.
//
//	threshold: 1
//	keys:
//	  - path: release.pub          # or pem: | (inline PKIX PEM)
//	    id: 3fa1c0...              # optional, must match
//	    names: ["api", "web-*"]
//	    not_before: 2026-01-01T00:00:00Z
//	    not_after: 2027-01-01T00:00:00Z
//	revoked: ["9ab2..."]
func ParsePolicy(data []byte, baseDir string) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, refusef(ErrMalformed, "empty policy: want at least a keys: list")
		}
		return nil, refusef(ErrMalformed, "%s", yamlSyntaxError(data, err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, policyErr(&extra, "more than one YAML document; a policy is one document")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	p := &Policy{Threshold: 1}
	var keysNode *yaml.Node
	err := eachField(root, "policy", []string{"threshold", "keys", "revoked"}, func(name string, k, v *yaml.Node) error {
		switch name {
		case "threshold":
			n, err := intValue(v, "threshold")
			if err != nil {
				return err
			}
			if n < 1 {
				return policyErr(v, "threshold must be at least 1, got %d", n)
			}
			p.Threshold = n
		case "keys":
			if v.Kind != yaml.SequenceNode {
				return policyErr(v, "keys must be a list of keys")
			}
			keysNode = v
			for _, kn := range v.Content {
				tk, err := parseTrustedKey(kn, baseDir)
				if err != nil {
					return err
				}
				for _, prev := range p.Keys {
					if prev.ID == tk.ID {
						return policyErr(kn, "key %s is listed twice; give it one entry with all its names", shortID(tk.ID))
					}
				}
				p.Keys = append(p.Keys, tk)
			}
		case "revoked":
			ids, err := stringList(v, "revoked")
			if err != nil {
				return err
			}
			for i, id := range ids {
				id = strings.ToLower(id)
				if !sha256Hex.MatchString(id) {
					return policyErr(v.Content[i], "revoked: %q is not a key ID (64 hex digits)", ids[i])
				}
				p.Revoked = append(p.Revoked, id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(p.Keys) == 0 {
		at := root
		if keysNode != nil {
			at = keysNode
		}
		return nil, policyErr(at, "no trusted keys: add a keys: list with at least one key")
	}
	if p.Threshold > len(p.Keys) {
		return nil, policyErr(root, "threshold %d exceeds the %d trusted keys; it could never be met", p.Threshold, len(p.Keys))
	}
	return p, nil
}

func parseTrustedKey(n *yaml.Node, baseDir string) (TrustedKey, error) {
	var (
		tk             TrustedKey
		keyPath, inPEM string
		id             string
		idNode         *yaml.Node
		namesSet       bool
		sourceNode     *yaml.Node
	)
	err := eachField(n, "key", []string{"path", "pem", "id", "names", "not_before", "not_after"}, func(name string, k, v *yaml.Node) error {
		var err error
		switch name {
		case "path", "pem":
			if sourceNode != nil {
				return policyErr(k, "key has both path and pem; give one")
			}
			sourceNode = v
			if name == "path" {
				keyPath, err = stringValue(v, name)
			} else {
				inPEM, err = stringValue(v, name)
			}
		case "id":
			idNode = v
			id, err = stringValue(v, name)
		case "names":
			namesSet = true
			tk.Names, err = stringList(v, name)
			if err == nil && len(tk.Names) == 0 {
				return policyErr(v, "names is empty: list the artifact names (globs) this key may sign")
			}
			for i, g := range tk.Names {
				if g == "" {
					return policyErr(v.Content[i], "names: empty pattern")
				}
				if _, perr := path.Match(g, ""); perr != nil {
					return policyErr(v.Content[i], "names: bad glob %q: %v", g, perr)
				}
			}
		case "not_before":
			tk.NotBefore, err = timeValue(v, name)
		case "not_after":
			tk.NotAfter, err = timeValue(v, name)
		}
		return err
	})
	if err != nil {
		return TrustedKey{}, err
	}
	switch {
	case sourceNode == nil:
		return TrustedKey{}, policyErr(n, "key has neither path nor pem: give the public key file or inline PEM")
	case keyPath != "":
		p := keyPath
		if !filepath.IsAbs(p) {
			p = filepath.Join(baseDir, p)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return TrustedKey{}, policyErr(sourceNode, "key path %q: %v", p, err)
		}
		if tk.Public, err = ParsePublicKey(data); err != nil {
			return TrustedKey{}, policyErr(sourceNode, "key %q: %v", keyPath, err)
		}
	default:
		pub, err := ParsePublicKey([]byte(inPEM))
		if err != nil {
			return TrustedKey{}, policyErr(sourceNode, "key pem: %v", err)
		}
		tk.Public = pub
	}
	tk.ID = KeyID(tk.Public)
	if idNode != nil && !strings.EqualFold(id, tk.ID) {
		return TrustedKey{}, policyErr(idNode, "id %s does not match the key, whose ID is %s", shortID(id), tk.ID)
	}
	if !namesSet {
		return TrustedKey{}, policyErr(n, "key %s has no names: list the artifact names (globs) it may sign, e.g. names: [\"api\"] or [\"*\"]", shortID(tk.ID))
	}
	if !tk.NotBefore.IsZero() && !tk.NotAfter.IsZero() && !tk.NotAfter.After(tk.NotBefore) {
		return TrustedKey{}, policyErr(n, "key %s: not_after %s is not after not_before %s", shortID(tk.ID),
			tk.NotAfter.Format(time.RFC3339), tk.NotBefore.Format(time.RFC3339))
	}
	return tk, nil
}

// eachField calls fn for each key of mapping n, refusing unknown and repeated keys.
func eachField(n *yaml.Node, what string, known []string, fn func(name string, k, v *yaml.Node) error) error {
	if n.Kind != yaml.MappingNode {
		return policyErr(n, "%s must be a mapping of %s", what, strings.Join(known, ", "))
	}
	seen := make(map[string]bool)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := k.Value
		if k.Kind != yaml.ScalarNode || !slices.Contains(known, name) {
			return policyErr(k, "unknown field %q in %s (known: %s)", name, what, strings.Join(known, ", "))
		}
		if seen[name] {
			return policyErr(k, "field %q repeated in %s", name, what)
		}
		seen[name] = true
		if err := fn(name, k, v); err != nil {
			return err
		}
	}
	return nil
}

func stringValue(v *yaml.Node, field string) (string, error) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return "", policyErr(v, "%s must be a string", field)
	}
	if v.Value == "" {
		return "", policyErr(v, "%s is empty", field)
	}
	return v.Value, nil
}

func stringList(v *yaml.Node, field string) ([]string, error) {
	if v.Kind != yaml.SequenceNode {
		return nil, policyErr(v, "%s must be a list of strings", field)
	}
	out := make([]string, 0, len(v.Content))
	for _, e := range v.Content {
		if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
			return nil, policyErr(e, "%s must be a list of strings", field)
		}
		out = append(out, e.Value)
	}
	return out, nil
}

func intValue(v *yaml.Node, field string) (int, error) {
	if v.Kind != yaml.ScalarNode || v.Tag != "!!int" {
		return 0, policyErr(v, "%s must be a whole number, got %q", field, v.Value)
	}
	n, err := strconv.Atoi(v.Value)
	if err != nil {
		return 0, policyErr(v, "%s must be a whole number, got %q", field, v.Value)
	}
	return n, nil
}

func timeValue(v *yaml.Node, field string) (time.Time, error) {
	if v.Kind != yaml.ScalarNode {
		return time.Time{}, policyErr(v, "%s must be an RFC 3339 time like 2027-01-01T00:00:00Z", field)
	}
	t, err := time.Parse(time.RFC3339, v.Value)
	if err != nil {
		return time.Time{}, policyErr(v, "%s %q is not an RFC 3339 time like 2027-01-01T00:00:00Z", field, v.Value)
	}
	return t, nil
}

func policyErr(n *yaml.Node, format string, args ...any) error {
	return refusef(ErrMalformed, "line %d: %s", n.Line, fmt.Sprintf(format, args...))
}

// yamlSyntaxError turns a yaml syntax error into "line N: reason". The yaml
// package reports the line where the enclosing construct began, or none at all
// ("mapping values are not allowed in this context"), so the line is found
// instead as the first one after the longest prefix of data that still parses.
func yamlSyntaxError(data []byte, err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ": "); i >= 0 {
			msg = rest[i+2:]
		}
	}
	if line := yamlErrorLine(data); line > 0 {
		return fmt.Sprintf("line %d: %s", line, msg)
	}
	return "invalid YAML: " + msg
}

// maxSyntaxSearchLines bounds the quadratic search in yamlErrorLine; trust
// policies are a few dozen lines.
const maxSyntaxSearchLines = 500

func yamlErrorLine(data []byte) int {
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) > maxSyntaxSearchLines {
		return 0
	}
	for k := len(lines) - 1; k > 0; k-- {
		if yamlParses(bytes.Join(lines[:k], nil)) {
			return k + 1
		}
	}
	return 1
}

func yamlParses(data []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		switch err := dec.Decode(&n); err {
		case nil:
		case io.EOF:
			return true
		default:
			return false
		}
	}
}
