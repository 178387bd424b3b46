package signing_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log"
	"path/filepath"
	"time"

	"ballena.dev/signing"
)

// A publisher signs provenance for api@1.4.0; a node verifies it against its
// trust policy and its rollback state.
func Example() {
	priv, err := signing.LoadPrivateKey(filepath.Join("testdata", "keys", "bob.key"))
	if err != nil {
		log.Fatal(err)
	}
	sum := sha256.Sum256([]byte("the whale binary"))
	digest := hex.EncodeToString(sum[:])

	start := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	p := signing.Provenance{
		BuildDefinition: signing.BuildDefinition{ExternalParameters: json.RawMessage(`{"name":"api","version":"1.4.0"}`)},
		RunDetails:      signing.RunDetails{Metadata: signing.BuildMetadata{StartedOn: start, FinishedOn: start.Add(time.Second)}},
	}
	if rd, ok := signing.SourceDescriptor("https://git.example/api.git", "0123456789abcdef0123456789abcdef01234567"); ok {
		p.BuildDefinition.ResolvedDependencies = append(p.BuildDefinition.ResolvedDependencies, rd)
	}
	payload, err := signing.NewStatement("api@1.4.0", digest, p).Marshal()
	if err != nil {
		log.Fatal(err)
	}
	env, err := signing.SignEnvelope(signing.PayloadType, payload, priv)
	if err != nil {
		log.Fatal(err)
	}

	pol, err := signing.LoadPolicy(filepath.Join("testdata", "policy", "trust.yaml"))
	if err != nil {
		log.Fatal(err)
	}
	v, err := pol.VerifySubject(env, "api", "1.4.0", digest, start)
	if err != nil {
		log.Fatal(err)
	}
	var seen signing.MemoryRollbackState
	if err := signing.CheckRollback(&seen, "api", "1.4.0", false); err != nil {
		log.Fatal(err)
	}
	if err := signing.RecordVersion(&seen, "api", "1.4.0"); err != nil {
		log.Fatal(err)
	}
	repo, commit := v.Statement.Source()
	fmt.Println("verified", v.Statement.Subject[0].Name, "signers:", len(v.KeyIDs))
	fmt.Println("source", repo, commit[:12])
	fmt.Println(signing.CheckRollback(&seen, "api", "1.3.0", false))
	// Output:
	// verified api@1.4.0 signers: 1
	// source https://git.example/api.git 0123456789ab
	// refuse api@1.3.0: older than api@1.4.0, already verified here; pass --allow-rollback to accept it
}
