package swarm

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/anacrolix/torrent/metainfo"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestSuperSeedSendsAboutOneCopy has a capped seed feed three leechers that
// relay to each other: the seed should send each piece about once.
func TestSuperSeedSendsAboutOneCopy(t *testing.T) {
	seed := newTestEngine(t, EngineConfig{UploadLimit: 4 << 20})
	rel := publish(t, seed.store, 8<<20)
	if err := seed.Seed(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	var ls []*testEngine
	for range 3 {
		ls = append(ls, newTestEngine(t, EngineConfig{StallTimeout: time.Minute}))
	}
	all := []*testEngine{seed}
	all = append(all, ls...)
	for _, l := range ls {
		var ids []peer.ID
		for _, o := range all {
			if o != l {
				introduce(l.h, addrInfo(o.h))
				ids = append(ids, o.h.ID())
			}
		}
		l.AddPeers(rel.InfoHash, ids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errs <- l.Download(ctx, rel, nil) }()
	}
	for range ls {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range ls {
		checkBlob(t, l.store, rel.Digest)
	}
	sent := seed.Transfers()[0].BytesUploaded
	t.Logf("seed sent %.2f copies", float64(sent)/float64(rel.Size))
	if sent > rel.Size*3/2 {
		t.Errorf("seed sent %d bytes, %.2f copies; super-seeding should keep it near one", sent, float64(sent)/float64(rel.Size))
	}
}

// TestSuperSeedRewrite drives ssConn by hand: the seed's have-all becomes a
// bitfield of a few pieces, bodiless messages pass at once, and a delivered
// piece makes the seed show another.
func TestSuperSeedRewrite(t *testing.T) {
	ss := newSuperSeeder()
	defer ss.close()
	var ih metainfo.Hash
	ih[0] = 7
	info := &metainfo.Info{PieceLength: 32, Length: 32 * 10}
	info.Pieces = make([]byte, 20*10)
	ss.add(ih, info)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := ss.wrap(a)
	got := make(chan []byte, 100)
	go func() {
		for {
			buf := make([]byte, 4096)
			n, err := b.Read(buf)
			if err != nil {
				close(got)
				return
			}
			got <- buf[:n]
		}
	}()
	read := func() []byte {
		t.Helper()
		select {
		case m := <-got:
			return m
		case <-time.After(5 * time.Second):
			t.Fatal("nothing written")
			return nil
		}
	}
	hs := make([]byte, 68)
	hs[0] = 19
	copy(hs[1:], "BitTorrent protocol")
	copy(hs[28:], ih[:])
	c.Write(hs[:28]) // anacrolix writes an incoming handshake in two parts
	c.Write(hs[28:])
	if m := read(); len(m) != 68 {
		t.Fatalf("handshake came out as %d bytes", len(m))
	}
	c.Write([]byte{0, 0, 0, 1, msgHaveAll})
	bf := read()
	if bf[4] != msgBitfield {
		t.Fatalf("have-all came out as message %d", bf[4])
	}
	shown := 0
	for _, by := range bf[5:] {
		for bit := range 8 {
			if by&(0x80>>bit) != 0 {
				shown++
			}
		}
	}
	if shown != superSeedWindow {
		t.Fatalf("bitfield shows %d pieces, want %d", shown, superSeedWindow)
	}
	c.Write([]byte{0, 0, 0, 1, 1}) // unchoke: no body, must not wait
	if m := read(); len(m) != 5 || m[4] != 1 {
		t.Fatalf("unchoke came out as %v", m)
	}
	// Send piece 0 whole: the seed shows one more piece.
	msg := binary.BigEndian.AppendUint32(nil, 9+32)
	msg = append(msg, msgPiece, 0, 0, 0, 0, 0, 0, 0, 0)
	msg = append(msg, make([]byte, 32)...)
	c.Write(msg[:20])
	c.Write(msg[20:])
	var out []byte
	for len(out) < len(msg)+9 {
		out = append(out, read()...)
	}
	have := out[len(msg):]
	if have[4] != msgHave || binary.BigEndian.Uint32(have[5:]) != superSeedWindow {
		t.Fatalf("after a delivered piece, got %v; want have(%d)", have, superSeedWindow)
	}
	// The peer cancelled its request of shown piece 1 and the seed rejects it:
	// a Suggest for the piece follows, so that the peer plans its requests again.
	reject := binary.BigEndian.AppendUint32(nil, 13)
	reject = append(reject, msgReject, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 32)
	c.Write(reject[:7])
	c.Write(reject[7:])
	out = nil
	for len(out) < len(reject)+9 {
		out = append(out, read()...)
	}
	suggest := out[len(reject):]
	if suggest[4] != msgSuggest || binary.BigEndian.Uint32(suggest[5:]) != 1 {
		t.Fatalf("after a reject of a shown piece, got %v; want suggest(1)", suggest)
	}
	// A reject of a piece never shown passes alone.
	reject[8] = 9
	c.Write(reject)
	c.Write([]byte{0, 0, 0, 1, 1})
	out = nil
	for len(out) < len(reject)+5 {
		out = append(out, read()...)
	}
	if len(out) != len(reject)+5 || out[len(reject)+4] != 1 {
		t.Fatalf("a reject of an unshown piece came out as %v", out)
	}
}

// TestSuperSeedSplitWrites writes one seed stream (handshake, have-all, an
// unchoke, keep-alives, whole and rejected pieces) through ssConn in one
// Write and again cut into pieces of every size from 1 byte: the peer must
// see the same bytes each time, with every piece payload intact, whether
// the rewriter passes runs of the caller's buffer or builds bytes of its own.
func TestSuperSeedSplitWrites(t *testing.T) {
	var ih metainfo.Hash
	ih[0] = 9
	const pieceLen, pieces = 40, 12
	info := &metainfo.Info{PieceLength: pieceLen, Length: pieceLen * pieces}
	info.Pieces = make([]byte, 20*pieces)
	var stream []byte
	hs := make([]byte, 68)
	hs[0] = 19
	copy(hs[1:], "BitTorrent protocol")
	copy(hs[28:], ih[:])
	stream = append(stream, hs...)
	stream = append(stream, 0, 0, 0, 1, msgHaveAll)
	stream = append(stream, 0, 0, 0, 1, 1) // unchoke
	stream = append(stream, 0, 0, 0, 0)    // keep-alive
	for i := range 6 {                     // the shown pieces and one more, each payload distinct
		stream = binary.BigEndian.AppendUint32(stream, 9+pieceLen)
		stream = append(stream, msgPiece)
		stream = binary.BigEndian.AppendUint32(stream, uint32(i))
		stream = binary.BigEndian.AppendUint32(stream, 0)
		for k := range pieceLen {
			stream = append(stream, byte(i*pieceLen+k))
		}
		stream = append(stream, 0, 0, 0, 0)
	}
	stream = binary.BigEndian.AppendUint32(stream, 13)
	stream = append(stream, msgReject, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, pieceLen)

	run := func(cut int) []byte {
		ss := newSuperSeeder()
		defer ss.close()
		ss.add(ih, info)
		a, b := net.Pipe()
		defer b.Close()
		c := ss.wrap(a)
		got := make(chan []byte, 1)
		go func() {
			var all []byte
			buf := make([]byte, 4096)
			for {
				n, err := b.Read(buf)
				all = append(all, buf[:n]...)
				if err != nil {
					got <- all
					return
				}
			}
		}()
		for i := 0; i < len(stream); i += cut {
			if _, err := c.Write(stream[i:min(i+cut, len(stream))]); err != nil {
				t.Fatalf("cut %d: write: %v", cut, err)
			}
		}
		c.Close()
		select {
		case all := <-got:
			return all
		case <-time.After(10 * time.Second):
			t.Fatalf("cut %d: output did not end", cut)
			return nil
		}
	}
	want := run(len(stream))
	// The peer sees the handshake, a bitfield in place of have-all, and
	// every piece message byte for byte.
	if !bytes.Equal(want[:68], hs) || want[72] != msgBitfield {
		t.Fatalf("whole write: bad start %v", want[:80])
	}
	for i := range 6 {
		payload := make([]byte, pieceLen)
		for k := range payload {
			payload[k] = byte(i*pieceLen + k)
		}
		if !bytes.Contains(want, payload) {
			t.Fatalf("whole write: piece %d's payload is not in the output", i)
		}
	}
	for cut := 1; cut < 80; cut++ {
		if got := run(cut); !bytes.Equal(got, want) {
			t.Fatalf("writes of %d bytes: output differs from one whole write:\n got %v\nwant %v", cut, got, want)
		}
	}
}
