package phx

import "unicode/utf8"

// Reserved event names of the protocol.
const (
	EventJoin      = "phx_join"
	EventLeave     = "phx_leave"
	EventReply     = "phx_reply"
	EventClose     = "phx_close"
	EventError     = "phx_error"
	EventHeartbeat = "heartbeat"
	TopicPhoenix   = "phoenix"
)

// AppendMessage appends the frame [joinRef, ref, topic, event, payload].
// Empty refs are written as null. payload must be valid JSON and is copied
// as is; nil or empty means {}. Pushes and broadcasts must carry an object,
// because phoenix.js assumes one; that is the caller's contract.
func AppendMessage(dst []byte, joinRef, ref, topic, event string, payload []byte) []byte {
	dst = appendHead(dst, joinRef, ref, topic, event)
	dst = appendRaw(dst, payload)
	return append(dst, ']')
}

// AppendReply appends a phx_reply answering ref:
// [joinRef, ref, topic, "phx_reply", {"status": status, "response": response}].
// response must be valid JSON; nil or empty means {}.
func AppendReply(dst []byte, joinRef, ref, topic, status string, response []byte) []byte {
	dst = appendHead(dst, joinRef, ref, topic, EventReply)
	dst = append(dst, `{"status":`...)
	dst = AppendString(dst, status)
	dst = append(dst, `,"response":`...)
	dst = appendRaw(dst, response)
	return append(dst, "}]"...)
}

// AppendErrorReply appends an error phx_reply whose response is
// {"reason": reason}, the shape phoenix.js apps expect for join errors and
// "unmatched topic".
func AppendErrorReply(dst []byte, joinRef, ref, topic, reason string) []byte {
	dst = appendHead(dst, joinRef, ref, topic, EventReply)
	dst = append(dst, `{"status":"error","response":{"reason":`...)
	dst = AppendString(dst, reason)
	return append(dst, "}}]"...)
}

// AppendPush appends a server push tied to a join: ref is null, which is
// how phoenix.js tells it from a reply.
func AppendPush(dst []byte, joinRef, topic, event string, payload []byte) []byte {
	return AppendMessage(dst, joinRef, "", topic, event, payload)
}

// AppendBroadcast appends a frame with null join_ref and ref. Such a frame
// does not depend on the receiving connection, so one encoding can be
// shared by every subscriber of topic.
func AppendBroadcast(dst []byte, topic, event string, payload []byte) []byte {
	return AppendMessage(dst, "", "", topic, event, payload)
}

func appendHead(dst []byte, joinRef, ref, topic, event string) []byte {
	dst = append(dst, '[')
	dst = appendRef(dst, joinRef)
	dst = append(dst, ',')
	dst = appendRef(dst, ref)
	dst = append(dst, ',')
	dst = AppendString(dst, topic)
	dst = append(dst, ',')
	dst = AppendString(dst, event)
	return append(dst, ',')
}

func appendRef(dst []byte, ref string) []byte {
	if ref == "" {
		return append(dst, "null"...)
	}
	return AppendString(dst, ref)
}

func appendRaw(dst, raw []byte) []byte {
	if len(raw) == 0 {
		return append(dst, "{}"...)
	}
	return append(dst, raw...)
}

const hexDigits = "0123456789abcdef"

// safe[c] is true for ASCII bytes that need no escaping inside a string.
var safe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// AppendString appends s as a JSON string. Quotes, backslashes and control
// characters are escaped; invalid UTF-8 bytes become \ufffd, so the output
// is always valid JSON in a valid UTF-8 text frame. HTML characters are not
// escaped: frames are never embedded in HTML.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if safe[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
