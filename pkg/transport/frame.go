package transport

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// maxHeader is the largest header of an unmasked server frame.
const maxHeader = 10

// qent is one outbound frame in a connection's queue. The header is built
// per connection, in the entry itself; the payload is the caller's and may
// be shared by every recipient of a broadcast, so a fanout costs each
// recipient this entry and nothing else. Entries are written in place and
// never change once queued.
type qent struct {
	p    []byte // payload; may be shared, never written
	hdr  [maxHeader]byte
	hlen uint8
}

func (e *qent) size() int { return int(e.hlen) + len(e.p) }

// frameOf makes the queue entry of a final, unmasked server frame.
func frameOf(op ws.OpCode, payload []byte) qent {
	e := qent{p: payload}
	n := len(payload)
	e.hdr[0] = 0x80 | byte(op)
	switch {
	case n <= 125:
		e.hdr[1] = byte(n)
		e.hlen = 2
	case n <= 0xffff:
		e.hdr[1] = 126
		binary.BigEndian.PutUint16(e.hdr[2:], uint16(n))
		e.hlen = 4
	default:
		e.hdr[1] = 127
		binary.BigEndian.PutUint64(e.hdr[2:], uint64(n))
		e.hlen = 10
	}
	return e
}

// closeBody is the payload of a close frame. The reason is cut to the 123
// bytes a control frame can carry; code 0 gives an empty body.
func closeBody(code int, reason string) []byte {
	if code == 0 {
		return nil
	}
	if len(reason) > 123 {
		// A close reason must be valid UTF-8: cut on a rune boundary.
		n := 123
		for n > 0 && !utf8.RuneStart(reason[n]) {
			n--
		}
		reason = reason[:n]
	}
	b := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	copy(b[2:], reason)
	return b
}

// CloseFrame encodes a complete close frame, for the one case where a
// connection must be refused before an engine serves it (frames sent
// before the handshake completed). Served connections close with
// Conn.Close. The reason is cut to the 123 bytes a control frame can
// carry, on a rune boundary; code 0 gives a close frame without a body.
func CloseFrame(code int, reason string) []byte {
	e := frameOf(ws.OpClose, closeBody(code, reason))
	return append(e.hdr[:e.hlen:e.hlen], e.p...)
}
