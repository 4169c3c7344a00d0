package transport

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// MaxHeaderSize is the largest header of an unmasked server frame.
const MaxHeaderSize = 10

// headerSize is the size of an unmasked header for a payload of n bytes.
func headerSize(n int) int {
	switch {
	case n <= 125:
		return 2
	case n <= 0xffff:
		return 4
	}
	return 10
}

// putHeader writes an unmasked final-frame header for an n-byte payload
// into b, which must be exactly headerSize(n) long.
func putHeader(b []byte, op ws.OpCode, n int) {
	b[0] = 0x80 | byte(op)
	switch len(b) {
	case 2:
		b[1] = byte(n)
	case 4:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
}

// AppendFrameHeader appends the header of an unmasked server frame with
// the given opcode, FIN bit and payload length to dst.
func AppendFrameHeader(dst []byte, op ws.OpCode, fin bool, length int) []byte {
	h := headerSize(length)
	dst = append(dst, make([]byte, h)...)
	b := dst[len(dst)-h:]
	putHeader(b, op, length)
	if !fin {
		b[0] &^= 0x80
	}
	return dst
}

// AppendFrame appends a complete unmasked final frame to dst.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = AppendFrameHeader(dst, op, true, len(payload))
	return append(dst, payload...)
}

// TextFrame encodes payload as one server text frame. The result can be
// passed to Send on any number of connections.
func TextFrame(payload []byte) []byte {
	return AppendFrame(make([]byte, 0, headerSize(len(payload))+len(payload)), ws.OpText, payload)
}

// BinaryFrame encodes payload as one server binary frame.
func BinaryFrame(payload []byte) []byte {
	return AppendFrame(make([]byte, 0, headerSize(len(payload))+len(payload)), ws.OpBinary, payload)
}

// CloseFrame encodes a close frame. The reason is cut to the 123 bytes a
// control frame can carry; code 0 gives a close frame without a body.
func CloseFrame(code int, reason string) []byte {
	if code == 0 {
		return []byte{0x80 | byte(ws.OpClose), 0}
	}
	if len(reason) > 123 {
		// A close reason must be valid UTF-8: cut on a rune boundary.
		n := 123
		for n > 0 && !utf8.RuneStart(reason[n]) {
			n--
		}
		reason = reason[:n]
	}
	b := make([]byte, 4+len(reason))
	b[0] = 0x80 | byte(ws.OpClose)
	b[1] = byte(2 + len(reason))
	binary.BigEndian.PutUint16(b[2:], uint16(code))
	copy(b[4:], reason)
	return b
}

// Begin starts a frame in dst's storage: it returns dst[:0] followed by
// MaxHeaderSize reserved bytes. Append the payload to the result (e.g.
// with json appenders) and pass it to Finish, so the payload is encoded
// in place and never copied.
func Begin(dst []byte) []byte {
	return append(dst[:0], make([]byte, MaxHeaderSize)...)
}

// Finish turns buf, built by Begin plus a payload, into a text frame: the
// header is written right-aligned in the reserved space and the returned
// slice starts at it.
func Finish(buf []byte) []byte { return finish(buf, ws.OpText) }

// FinishBinary is Finish for a binary frame.
func FinishBinary(buf []byte) []byte { return finish(buf, ws.OpBinary) }

func finish(buf []byte, op ws.OpCode) []byte {
	n := len(buf) - MaxHeaderSize
	h := headerSize(n)
	start := MaxHeaderSize - h
	putHeader(buf[start:MaxHeaderSize], op, n)
	return buf[start:]
}
