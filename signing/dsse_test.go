package signing

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

func TestPAE(t *testing.T) {
	// The test vector from the DSSE protocol specification.
	got := PAE("http://example.com/HelloWorld", []byte("hello world"))
	want := "DSSEv1 29 http://example.com/HelloWorld 11 hello world"
	if string(got) != want {
		t.Errorf("PAE = %q, want %q", got, want)
	}
	if got := PAE("", nil); string(got) != "DSSEv1 0  0 " {
		t.Errorf("empty PAE = %q", got)
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	a, b := newTestKey(t), newTestKey(t)
	payload := testStatement(t, "api@1.4.0", testDigest)
	env := signTest(t, payload, a, b)
	if err := env.AddSignature(a.priv); err == nil {
		t.Error("signing twice with the same key succeeded")
	}
	data, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["payload"] != base64.StdEncoding.EncodeToString(payload) || raw["payloadType"] != PayloadType {
		t.Errorf("envelope JSON %s", data)
	}
	sigs := raw["signatures"].([]any)
	if len(sigs) != 2 || sigs[0].(map[string]any)["keyid"] != a.id {
		t.Errorf("signatures %v", sigs)
	}
	got, err := ParseEnvelope(data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Payload, payload) || got.PayloadType != PayloadType || len(got.Signatures) != 2 {
		t.Fatalf("parsed %+v", got)
	}
	for i, k := range []testKey{a, b} {
		if !ed25519.Verify(k.pub, PAE(PayloadType, payload), got.Signatures[i].Sig) {
			t.Errorf("signature %d does not verify over PAE", i)
		}
	}
}

func TestParseEnvelopeBase64Variants(t *testing.T) {
	payload := []byte("\xfb\xff?>") // differs between the standard and URL-safe alphabets
	sig := bytes.Repeat([]byte{0xfb}, 64)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		doc := `{"payload":"` + enc.EncodeToString(payload) + `","payloadType":"x","signatures":[{"sig":"` + enc.EncodeToString(sig) + `"}],"extra":1}`
		env, err := ParseEnvelope([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		if !bytes.Equal(env.Payload, payload) || !bytes.Equal(env.Signatures[0].Sig, sig) {
			t.Errorf("%s: decoded %x / %x", doc, env.Payload, env.Signatures[0].Sig)
		}
	}
}

func TestParseEnvelopeRefusals(t *testing.T) {
	sig := base64.StdEncoding.EncodeToString(make([]byte, 64))
	many := strings.TrimSuffix(strings.Repeat(`{"sig":"`+sig+`"},`, maxSignatures+1), ",")
	cases := []struct {
		name, doc, want string
	}{
		{"not json", `nope`, "invalid character"},
		{"array", `[]`, "cannot unmarshal"},
		{"trailing", `{"payload":"","payloadType":"x","signatures":[{"sig":"` + sig + `"}]} {}`, "after the JSON value"},
		{"payload not base64", `{"payload":"!!","payloadType":"x","signatures":[{"sig":"` + sig + `"}]}`, "payload is not base64"},
		{"sig not base64", `{"payload":"","payloadType":"x","signatures":[{"sig":"@"}]}`, "signature is not base64"},
		{"no payload", `{"payloadType":"x","signatures":[{"sig":"` + sig + `"}]}`, "payload is missing"},
		{"no type", `{"payload":"","signatures":[{"sig":"` + sig + `"}]}`, "payloadType is missing"},
		{"no signatures", `{"payload":"","payloadType":"x","signatures":[]}`, "no signatures"},
		{"empty sig", `{"payload":"","payloadType":"x","signatures":[{"keyid":"a","sig":""}]}`, "signature 1 is empty"},
		{"duplicate key", `{"payload":"","payload":"eA==","payloadType":"x","signatures":[{"sig":"` + sig + `"}]}`, `duplicate JSON key "payload"`},
		{"case twin", `{"payload":"","Payload":"eA==","payloadType":"x","signatures":[{"sig":"` + sig + `"}]}`, "differ only in case"},
		{"too many signatures", `{"payload":"","payloadType":"x","signatures":[` + many + `]}`, "at most 64"},
		{"deep", `{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, "nested deeper"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseEnvelope([]byte(c.doc))
			wantErr(t, err, ErrMalformed, "parse envelope", c.want)
		})
	}
}
