package signing

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// maxSignatures bounds the work one envelope can ask of a verifier: each
// signature may be tried against every key in the policy.
const maxSignatures = 64

// PAE returns the DSSE v1 pre-authentication encoding that signatures cover:
// "DSSEv1" SP len(type) SP type SP len(body) SP body, lengths in ASCII decimal.
func PAE(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.Grow(len("DSSEv1") + len(payloadType) + len(payload) + 2*20 + 4)
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(payload)))
	b.WriteByte(' ')
	b.Write(payload)
	return b.Bytes()
}

// SignEnvelope wraps payload in a DSSE envelope signed by each of keys.
func SignEnvelope(payloadType string, payload []byte, keys ...ed25519.PrivateKey) (*Envelope, error) {
	if payloadType == "" {
		return nil, errors.New("sign envelope: empty payload type")
	}
	if len(keys) == 0 {
		return nil, errors.New("sign envelope: no signing key given")
	}
	env := &Envelope{Payload: payload, PayloadType: payloadType}
	for _, k := range keys {
		if err := env.AddSignature(k); err != nil {
			return nil, err
		}
	}
	return env, nil
}

// AddSignature signs the envelope's PAE with priv and appends the signature,
// so that several publishers can co-sign one envelope. Signing twice with the
// same key is an error: the second signature would not count toward a threshold.
func (e *Envelope) AddSignature(priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("sign envelope: ed25519 private key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	if e.PayloadType == "" {
		return errors.New("sign envelope: empty payload type")
	}
	id := KeyID(priv.Public().(ed25519.PublicKey))
	for _, s := range e.Signatures {
		if s.KeyID == id {
			return fmt.Errorf("sign envelope: already signed by key %s", shortID(id))
		}
	}
	if len(e.Signatures) >= maxSignatures {
		return fmt.Errorf("sign envelope: already has %d signatures, the most a verifier accepts", maxSignatures)
	}
	sig := ed25519.Sign(priv, PAE(e.PayloadType, e.Payload))
	e.Signatures = append(e.Signatures, Signature{KeyID: id, Sig: sig})
	return nil
}

// ParseEnvelope decodes and checks a DSSE envelope in JSON. It accepts base64
// in the standard or URL-safe alphabet, padded or not, as the spec requires of
// verifiers, and tolerates unknown fields. It does not verify signatures.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if err := checkJSONKeys(data); err != nil {
		return nil, refusef(ErrMalformed, "parse envelope: %w", err)
	}
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, refusef(ErrMalformed, "parse envelope: %w", err)
	}
	if err := env.validate(); err != nil {
		return nil, refusef(ErrMalformed, "parse envelope: %w", err)
	}
	return &env, nil
}

func (e *Envelope) validate() error {
	if e.PayloadType == "" {
		return errors.New("payloadType is missing or empty")
	}
	if e.Payload == nil {
		return errors.New("payload is missing")
	}
	if len(e.Signatures) == 0 {
		return errors.New("no signatures")
	}
	if len(e.Signatures) > maxSignatures {
		return fmt.Errorf("%d signatures, at most %d accepted", len(e.Signatures), maxSignatures)
	}
	for i, s := range e.Signatures {
		if len(s.Sig) == 0 {
			return fmt.Errorf("signature %d is empty", i+1)
		}
	}
	return nil
}

// Marshal encodes the envelope as DSSE JSON (standard base64 with padding).
func (e *Envelope) Marshal() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, fmt.Errorf("marshal envelope: %w", err)
	}
	return json.Marshal(e)
}

// UnmarshalJSON decodes a DSSE envelope, accepting every base64 variant the
// spec allows. It does not validate; ParseEnvelope does.
func (e *Envelope) UnmarshalJSON(data []byte) error {
	var raw struct {
		Payload     *string     `json:"payload"`
		PayloadType string      `json:"payloadType"`
		Signatures  []Signature `json:"signatures"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	*e = Envelope{PayloadType: raw.PayloadType, Signatures: raw.Signatures}
	if raw.Payload != nil {
		p, err := decodeBase64(*raw.Payload)
		if err != nil {
			return fmt.Errorf("payload is not base64: %w", err)
		}
		e.Payload = p
	}
	return nil
}

// UnmarshalJSON decodes one DSSE signature, accepting every base64 variant.
func (s *Signature) UnmarshalJSON(data []byte) error {
	var raw struct {
		KeyID string `json:"keyid"`
		Sig   string `json:"sig"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	sig, err := decodeBase64(raw.Sig)
	if err != nil {
		return fmt.Errorf("signature is not base64: %w", err)
	}
	*s = Signature{KeyID: raw.KeyID, Sig: sig}
	return nil
}

var base64Encodings = []*base64.Encoding{
	base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding,
}

func decodeBase64(s string) ([]byte, error) {
	var first error
	for _, enc := range base64Encodings {
		b, err := enc.DecodeString(s)
		if err == nil {
			if b == nil {
				b = []byte{}
			}
			return b, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// SignedBy reports whether the envelope carries a signature naming keyID. It
// does not check the signature: a co-signer uses it to refuse signing twice.
func (e *Envelope) SignedBy(keyID string) bool {
	for _, s := range e.Signatures {
		if s.KeyID == keyID {
			return true
		}
	}
	return false
}
