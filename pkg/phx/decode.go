// Package phx implements the Phoenix Channels V2 JSON wire format:
// frames are JSON arrays [join_ref, ref, topic, event, payload].
//
// The package does no I/O. Decode is a hand-written scanner because every
// inbound message goes through it; the encoders append to a caller-owned
// buffer so that a connection can build outbound frames without allocating.
package phx

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Frame is one decoded V2 message.
type Frame struct {
	// JoinRef and Ref are "" when the frame carries null. phoenix.js treats
	// an empty join_ref like a missing one, so the two are not told apart.
	JoinRef string
	Ref     string
	Topic   string
	Event   string
	// Payload is the raw JSON value, without surrounding whitespace. It
	// aliases the input to Decode; copy it before reusing that buffer.
	Payload []byte
}

// Reasons carried by DecodeError. They are short, stable strings so the
// server can put them in an error reply or a metric label as they are.
const (
	ReasonMalformed = "malformed JSON"
	ReasonNotFrame  = "frame must be a JSON array of 5 elements"
	ReasonJoinRef   = "join_ref must be a string or null"
	ReasonRef       = "ref must be a string or null"
	ReasonTopic     = "topic must be a non-empty string"
	ReasonEvent     = "event must be a non-empty string"
	ReasonUTF8      = "invalid UTF-8"
	ReasonDepth     = "payload nested too deeply"
	ReasonTrailing  = "trailing data after frame"
)

// MaxDepth bounds array/object nesting inside the payload and any extra
// trailing elements. Chat payloads are shallow; the bound keeps a nesting
// bomb from costing more than a linear scan and lets the scanner track
// nesting in a fixed bitset instead of a growing stack.
const MaxDepth = 512

// DecodeError describes why a frame was rejected.
type DecodeError struct {
	Reason string // one of the Reason constants
	Offset int    // byte offset where the problem was detected
}

func (e *DecodeError) Error() string {
	return "phx: " + e.Reason + " at offset " + strconv.Itoa(e.Offset)
}

// Decode parses one V2 text frame.
//
// Extra elements after the payload are validated and ignored, as Phoenix
// does. Input that is not valid UTF-8 is rejected (ReasonUTF8) rather than
// repaired: RFC 6455 already forbids it in text frames, and rejecting keeps
// Decode(AppendMessage(f)) == f. Escaped lone surrogates (\ud800) decode to
// U+FFFD, as encoding/json does. A semantic error (wrong element type, too
// few elements) is only reported for input that is otherwise valid JSON;
// anything else is ReasonMalformed.
func Decode(data []byte) (Frame, error) {
	if !utf8.Valid(data) {
		return Frame{}, &DecodeError{Reason: ReasonUTF8}
	}
	s := scanner{data: data}
	var spans [4]span
	s.ws()
	if !s.eat('[') {
		return Frame{}, s.semantic(ReasonNotFrame)
	}
	s.ws()
	reasons := [4]string{ReasonJoinRef, ReasonRef, ReasonTopic, ReasonEvent}
	for k := range spans {
		if k > 0 {
			if err := s.separator(); err != nil {
				return Frame{}, err
			}
		}
		sp, err := s.header(reasons[k], k < 2)
		if err != nil {
			return Frame{}, err
		}
		spans[k] = sp
	}
	if err := s.separator(); err != nil {
		return Frame{}, err
	}
	s.ws()
	start := s.i
	if err := s.value(); err != nil {
		return Frame{}, err
	}
	payload := data[start:s.i:s.i]
	for {
		s.ws()
		if s.eat(']') {
			break
		}
		if !s.eat(',') {
			return Frame{}, s.malformed()
		}
		s.ws()
		if err := s.value(); err != nil {
			return Frame{}, err
		}
	}
	s.ws()
	if s.i != len(data) {
		return Frame{}, &DecodeError{Reason: ReasonTrailing, Offset: s.i}
	}
	strs := s.materialize(&spans)
	return Frame{JoinRef: strs[0], Ref: strs[1], Topic: strs[2], Event: strs[3], Payload: payload}, nil
}

// span locates the contents of a header string (between the quotes).
type span struct {
	start, end int
	escaped    bool
}

type scanner struct {
	data []byte
	i    int
}

func (s *scanner) malformed() *DecodeError {
	return &DecodeError{Reason: ReasonMalformed, Offset: s.i}
}

// semantic reports reason only if the whole input is valid JSON, so that a
// client sending broken JSON is told so instead of being sent chasing a
// type error that happens to come first. It only runs on the error path.
func (s *scanner) semantic(reason string) *DecodeError {
	if !json.Valid(s.data) {
		return &DecodeError{Reason: ReasonMalformed, Offset: s.i}
	}
	return &DecodeError{Reason: reason, Offset: s.i}
}

func (s *scanner) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.data) && s.data[s.i] == c {
		s.i++
		return true
	}
	return false
}

// separator consumes the comma between two of the five required elements.
func (s *scanner) separator() error {
	s.ws()
	if s.eat(',') {
		s.ws()
		return nil
	}
	if s.i < len(s.data) && s.data[s.i] == ']' {
		return s.semantic(ReasonNotFrame)
	}
	return s.malformed()
}

// header scans one of the four leading string elements.
func (s *scanner) header(reason string, nullable bool) (span, error) {
	if s.i >= len(s.data) {
		return span{}, s.malformed()
	}
	switch s.data[s.i] {
	case '"':
		sp, err := s.str()
		if err != nil {
			return span{}, err
		}
		if !nullable && sp.start == sp.end {
			return span{}, s.semantic(reason)
		}
		return sp, nil
	case 'n':
		if !s.literal("null") {
			return span{}, s.malformed()
		}
		if !nullable {
			return span{}, s.semantic(reason)
		}
		return span{}, nil
	case ']':
		return span{}, s.semantic(ReasonNotFrame)
	default:
		return span{}, s.semantic(reason)
	}
}

func (s *scanner) literal(lit string) bool {
	if len(s.data)-s.i >= len(lit) && string(s.data[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// str scans a string starting at its opening quote.
func (s *scanner) str() (span, error) {
	s.i++
	sp := span{start: s.i}
	for s.i < len(s.data) {
		c := s.data[s.i]
		switch {
		case c == '"':
			sp.end = s.i
			s.i++
			return sp, nil
		case c == '\\':
			sp.escaped = true
			s.i++
			if s.i >= len(s.data) {
				return span{}, s.malformed()
			}
			switch s.data[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if len(s.data)-s.i < 5 || hex4(s.data[s.i+1:s.i+5]) < 0 {
					return span{}, s.malformed()
				}
				s.i += 5
			default:
				return span{}, s.malformed()
			}
		case c < 0x20:
			return span{}, s.malformed()
		default:
			s.i++
		}
	}
	return span{}, s.malformed()
}

func (s *scanner) number() error {
	s.eat('-')
	if s.eat('0') {
		// a leading zero may not be followed by more digits
	} else if !s.digits() {
		return s.malformed()
	}
	if s.eat('.') && !s.digits() {
		return s.malformed()
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if !s.digits() {
			return s.malformed()
		}
	}
	return nil
}

func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.data) && s.data[s.i] >= '0' && s.data[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// value validates one JSON value. It is iterative so that nesting depth
// costs no Go stack, and it stops at MaxDepth.
func (s *scanner) value() error {
	var objects [MaxDepth / 64]uint64 // bit set: that level is an object
	depth := 0
	for {
		// A value is expected at s.i (after optional whitespace).
		s.ws()
		if s.i >= len(s.data) {
			return s.malformed()
		}
		switch c := s.data[s.i]; {
		case c == '{' || c == '[':
			if depth == MaxDepth {
				return &DecodeError{Reason: ReasonDepth, Offset: s.i}
			}
			s.i++
			s.ws()
			if s.eat(c + 2) { // '{'+2 == '}', '['+2 == ']'
				break
			}
			if c == '{' {
				objects[depth/64] |= 1 << (depth % 64)
				if err := s.key(); err != nil {
					return err
				}
			} else {
				objects[depth/64] &^= 1 << (depth % 64)
			}
			depth++
			continue
		case c == '"':
			if _, err := s.str(); err != nil {
				return err
			}
		case c == 't':
			if !s.literal("true") {
				return s.malformed()
			}
		case c == 'f':
			if !s.literal("false") {
				return s.malformed()
			}
		case c == 'n':
			if !s.literal("null") {
				return s.malformed()
			}
		case c == '-' || (c >= '0' && c <= '9'):
			if err := s.number(); err != nil {
				return err
			}
		default:
			return s.malformed()
		}
		// A value just ended: close containers until one continues.
		for {
			if depth == 0 {
				return nil
			}
			s.ws()
			inObject := objects[(depth-1)/64]&(1<<((depth-1)%64)) != 0
			if s.eat(',') {
				if inObject {
					if err := s.key(); err != nil {
						return err
					}
				}
				break
			}
			closer := byte(']')
			if inObject {
				closer = '}'
			}
			if !s.eat(closer) {
				return s.malformed()
			}
			depth--
		}
	}
}

// key scans an object key and its colon.
func (s *scanner) key() error {
	s.ws()
	if s.i >= len(s.data) || s.data[s.i] != '"' {
		return s.malformed()
	}
	if _, err := s.str(); err != nil {
		return err
	}
	s.ws()
	if !s.eat(':') {
		return s.malformed()
	}
	return nil
}

// materialize turns the header spans into strings. The common events and
// the heartbeat topic are interned; everything else shares one allocation
// so that a typical push costs a single allocation to decode.
func (s *scanner) materialize(spans *[4]span) [4]string {
	var out [4]string
	var need [4]bool
	total := 0
	for k := range spans {
		sp := spans[k]
		if sp.start == sp.end {
			continue
		}
		if !sp.escaped {
			raw := s.data[sp.start:sp.end]
			if k == 2 && string(raw) == "phoenix" {
				out[k] = "phoenix"
				continue
			}
			if k == 3 {
				if ev := internEvent(raw); ev != "" {
					out[k] = ev
					continue
				}
			}
		}
		need[k] = true
		total += sp.end - sp.start // unescaping never lengthens
	}
	if total == 0 {
		return out
	}
	var b strings.Builder
	b.Grow(total)
	var bounds [4][2]int
	for k := range spans {
		if !need[k] {
			continue
		}
		sp := spans[k]
		bounds[k][0] = b.Len()
		if sp.escaped {
			unescape(&b, s.data[sp.start:sp.end])
		} else {
			b.Write(s.data[sp.start:sp.end])
		}
		bounds[k][1] = b.Len()
	}
	all := b.String()
	for k := range spans {
		if need[k] {
			out[k] = all[bounds[k][0]:bounds[k][1]]
		}
	}
	return out
}

func internEvent(raw []byte) string {
	switch string(raw) {
	case "phx_join":
		return "phx_join"
	case "phx_leave":
		return "phx_leave"
	case "heartbeat":
		return "heartbeat"
	}
	return ""
}

// unescape writes the decoded form of the already validated string body.
func unescape(b *strings.Builder, raw []byte) {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			j := i + 1
			for j < len(raw) && raw[j] != '\\' {
				j++
			}
			b.Write(raw[i:j])
			i = j
			continue
		}
		e := raw[i+1]
		i += 2
		switch e {
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r := rune(hex4(raw[i : i+4]))
			i += 4
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					r2 = rune(hex4(raw[i+2 : i+6]))
				}
				if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			b.WriteRune(r)
		default: // '"', '\\', '/'
			b.WriteByte(e)
		}
	}
}

// hex4 returns the value of four hex digits, or -1.
func hex4(b []byte) int {
	v := 0
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		v = v<<4 | int(c)
	}
	return v
}
