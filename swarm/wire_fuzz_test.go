package swarm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/artifact"
	"ballena.dev/signing"
)

// Fuzz targets for every parser of bytes a peer sends: the BitTorrent wire as
// super-seeding reads it, gossip announcements, lookup requests and answers,
// and tracker announces. `go test` runs each seed corpus; `go test -fuzz
// FuzzX ./swarm/` explores further.

func btMsg(id byte, payload ...byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(payload)))
	return append(append(b, id), payload...)
}

func btHandshake() []byte {
	hs := make([]byte, btHandshakeLen)
	hs[0] = 19
	copy(hs[1:], "BitTorrent protocol")
	return hs
}

func FuzzWireParser(f *testing.F) {
	hs := btHandshake()
	f.Add(hs, 7)
	f.Add(append(hs, btMsg(msgHave, 0, 0, 0, 3)...), 1)
	f.Add(append(hs, btMsg(msgBitfield, 0xff, 0x01)...), 3)
	f.Add(append(hs, btMsg(msgRequest, 0, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0, 0)...), 5)
	f.Add(append(hs, btMsg(msgHaveAll)...), 69)
	f.Add(append(hs, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, msgBitfield, 1, 2, 3), 2)    // keep-alive, then a 4 GiB bitfield
	f.Add(append(hs, btMsg(msgPiece, bytes.Repeat([]byte{9}, 40)...)...), 11)         // a piece is skipped
	f.Add(append(hs, 0, 0, 0, 5, msgHave, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 2), 13) // index 2^32-1
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		var p wireParser
		// Feed in two parts, as reads split a stream anywhere.
		if split < 0 {
			split = -split
		}
		split %= len(b) + 1
		h1, a1 := p.parse(b[:split])
		h2, a2 := p.parse(b[split:])
		if len(p.payload) > maxBitfield {
			t.Fatalf("parser kept %d payload bytes, more than %d", len(p.payload), maxBitfield)
		}
		if n := len(h1) + len(h2); n > 8*len(b)+1 {
			t.Fatalf("%d haves from %d bytes", n, len(b))
		}
		if n := len(a1) + len(a2); n > len(b)/12+1 {
			t.Fatalf("%d requests from %d bytes", n, len(b))
		}
		for _, i := range append(h1, h2...) {
			if i < -1 {
				t.Fatalf("have index %d", i)
			}
		}
		// The same bytes in one part say the same.
		var q wireParser
		h, a := q.parse(b)
		if len(h) != len(h1)+len(h2) || len(a) != len(a1)+len(a2) {
			t.Fatalf("split at %d: %d haves and %d asks, whole: %d and %d", split, len(h1)+len(h2), len(a1)+len(a2), len(h), len(a))
		}
	})
}

func FuzzAnnouncement(f *testing.F) {
	pub, priv := ntKey(f)
	pol := signing.PolicyForKeys(pub)
	verify := func(env *signing.Envelope) (artifact.Release, error) {
		rel, _, err := artifact.VerifyEnvelope(env, pol, time.Now())
		return rel, err
	}
	rel, env := ntSign(f, "api", "1.0.0", 1000, priv)
	good, err := json.Marshal(Announcement{Release: rel.Release, Envelope: env})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"release":{},"envelope":null}`))
	f.Add([]byte(`{"envelope":{"payloadType":"x","payload":"AA==","signatures":[{"keyid":"k","sig":"AA=="}]}}`))
	f.Add(bytes.Replace(good, []byte(`"api"`), []byte(`"evil"`), 1))
	f.Add([]byte(strings.Repeat("[", 10000)))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, _, err := checkAnnouncement(b, verify)
		if err == nil && (got.Digest != rel.Digest || got.Name != "api") {
			t.Fatalf("accepted an announcement of %s that the key never signed", got.Ref())
		}
	})
}

func FuzzLookupRequest(f *testing.F) {
	f.Add([]byte(`{"name":"api","version":"1.0.0"}`))
	f.Add([]byte(`{"list":true}`))
	f.Add([]byte(`{"name":` + strings.Repeat(" ", maxLookupRequest) + `"x"}`))
	f.Add([]byte(`{"name":"\u0000"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := readLookupRequest(bytes.NewReader(b))
		if err == nil && len(req.Name)+len(req.Version) > maxLookupRequest {
			t.Fatalf("read a request longer than %d bytes", maxLookupRequest)
		}
	})
}

func FuzzLookupAnswer(f *testing.F) {
	_, priv := ntKey(f)
	rel, env := ntSign(f, "api", "1.0.0", 1000, priv)
	one, _ := json.Marshal(lookupAnswer{Release: &rel.Release, Envelope: env, Have: true})
	list, _ := json.Marshal(lookupAnswer{List: []knownAnswer{{Release: rel.Release, Envelope: env}}})
	f.Add(one)
	f.Add(list)
	f.Add([]byte(`{"error":"not found"}`))
	f.Add([]byte(`{"list":[` + strings.Repeat(`{},`, 500) + `{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		const limit = 1 << 12
		ans, err := readLookupAnswer(bytes.NewReader(b), limit)
		if err == nil && len(b) > limit {
			// What was read fit in limit bytes, whatever followed.
			again, err2 := readLookupAnswer(bytes.NewReader(b[:limit]), limit)
			if err2 != nil || len(again.List) != len(ans.List) {
				t.Fatalf("answer read past its %d-byte limit", limit)
			}
		}
	})
}

func FuzzTrackerAnnounce(f *testing.F) {
	var ih metainfo.Hash
	ih[0] = 1
	f.Add(string(ih[:]), "6881", "started", "127.0.0.1:40000")
	f.Add(string(ih[:]), "0", "stopped", "[::1]:1")
	f.Add("short", "99999", "", "garbage")
	f.Add(string(ih[:]), "-1", "completed", "127.0.0.1:65535")
	f.Fuzz(func(t *testing.T, rawIH, port, event, remote string) {
		tr := &tracker{
			self:  netip.MustParseAddrPort("127.0.0.1:6881"),
			holds: func(h metainfo.Hash) bool { return h == ih },
			swarm: make(map[metainfo.Hash]map[netip.AddrPort]time.Time),
		}
		resp, err := tr.answer(rawIH, port, event, remote)
		if err != nil {
			return
		}
		if len(resp.Peers)%6 != 0 || len(resp.Peers)/6 > trackerMaxPeers+1 {
			t.Fatalf("%d bytes of compact peers", len(resp.Peers))
		}
	})
}
