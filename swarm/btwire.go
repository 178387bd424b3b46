package swarm

import (
	"encoding/binary"
)

// The BitTorrent peer wire (BEP 3, with BEP 6's fast extension ids), as much
// of it as super-seeding needs to read and rewrite a stream in passing.
const (
	btHandshakeLen = 68
	msgHave        = 4
	msgBitfield    = 5
	msgRequest     = 6
	msgPiece       = 7
	msgSuggest     = 13
	msgHaveAll     = 14
	msgReject      = 16
)

// wireParser walks BitTorrent framing incrementally.
type wireParser struct {
	started bool
	hs      []byte // handshake bytes so far
	hdr     []byte // partial message head: 4 length bytes and the id
	left    int    // payload bytes left in the current message
	id      byte
	payload []byte // payload kept for the messages we read
	piece   int    // index of the current piece message (write side)
}

// parse walks the peer's stream and returns the pieces it announced, -1 for
// have-all, and the pieces it requested.
func (p *wireParser) parse(b []byte) (haves, asks []int) {
	i := 0
	for i < len(b) {
		if len(p.hs) < btHandshakeLen {
			n := min(btHandshakeLen-len(p.hs), len(b)-i)
			p.hs = append(p.hs, b[i:i+n]...)
			i += n
			continue
		}
		if p.left > 0 {
			n := min(p.left, len(b)-i)
			if keep := payloadKept(p.id) - len(p.payload); keep > 0 {
				p.payload = append(p.payload, b[i:i+min(n, keep)]...)
			}
			p.left -= n
			i += n
			if p.left == 0 {
				haves, asks = p.announced(haves, asks)
			}
			continue
		}
		if len(p.hdr) < 5 {
			n := min(5-len(p.hdr), len(b)-i)
			p.hdr = append(p.hdr, b[i:i+n]...)
			i += n
			if len(p.hdr) == 4 && binary.BigEndian.Uint32(p.hdr) == 0 {
				p.hdr = p.hdr[:0]
			}
			if len(p.hdr) < 5 {
				continue
			}
		}
		p.id = p.hdr[4]
		p.left = int(binary.BigEndian.Uint32(p.hdr)) - 1
		p.hdr = p.hdr[:0]
		p.payload = p.payload[:0]
		if p.left == 0 {
			haves, asks = p.announced(haves, asks)
		}
	}
	return haves, asks
}

// maxBitfield is the longest bitfield the parser reads: 262144 pieces, a
// 64 GiB blob of 256 KiB pieces. A longer one is read that far; the rest of it
// is skipped, so a peer cannot make the parser hold more.
const maxBitfield = 1 << 15

// payloadKept is how much of a message's payload the parser keeps: enough for
// the messages it reads, nothing of the others.
func payloadKept(id byte) int {
	switch id {
	case msgHave:
		return 4
	case msgRequest:
		return 12
	case msgBitfield:
		return maxBitfield
	default:
		return 0
	}
}

func (p *wireParser) announced(haves, asks []int) ([]int, []int) {
	switch p.id {
	case msgRequest:
		if len(p.payload) >= 4 {
			asks = append(asks, int(binary.BigEndian.Uint32(p.payload)))
		}
	case msgHave:
		if len(p.payload) == 4 {
			haves = append(haves, int(binary.BigEndian.Uint32(p.payload)))
		}
	case msgBitfield:
		for k, by := range p.payload {
			for bit := range 8 {
				if by&(0x80>>bit) != 0 {
					haves = append(haves, k*8+bit)
				}
			}
		}
	case msgHaveAll:
		haves = append(haves, -1)
	}
	p.id = 0
	return haves, asks
}

// headNeed is how many head bytes the write side needs before it can act.
func headNeed(hdr []byte) int {
	switch {
	case len(hdr) < 4:
		return 4
	case len(hdr) >= 5 && (hdr[4] == msgPiece || hdr[4] == msgReject):
		return 9
	default:
		return 5
	}
}

func appendBitfield(out []byte, set []bool) []byte {
	n := (len(set) + 7) / 8
	out = binary.BigEndian.AppendUint32(out, uint32(1+n))
	out = append(out, msgBitfield)
	start := len(out)
	out = append(out, make([]byte, n)...)
	for i, ok := range set {
		if ok {
			out[start+i/8] |= 0x80 >> (i % 8)
		}
	}
	return out
}
