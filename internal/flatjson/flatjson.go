// Package flatjson reads flat JSON objects (members whose values are
// strings without escapes, numbers or literals) without encoding/json, for
// the hot paths that take the common shape by hand and leave everything
// else to encoding/json: the token claims (pkg/auth) and the new_message
// payload (pkg/hub). It only ever accepts; a caller that gets false asks
// encoding/json, which gives the real answer and its wording.
package flatjson

import "unicode/utf8"

// Value scans the JSON value at b[i] and returns the index after it.
type Value func(b []byte, i int) (end int, ok bool)

// Members calls member for each key and raw value of the object that is
// the whole of b, in order, with value scanning each value. It returns
// false for anything but a well-formed flat object, or when member does.
// Keys are plain strings (see String), given without their quotes; raw
// values are given as written, quotes included, and point into b.
func Members(b []byte, value Value, member func(key, raw []byte) bool) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipSpace(b, i+1) == len(b)
	}
	for {
		ke, ok := String(b, i)
		if !ok {
			return false
		}
		key := b[i+1 : ke-1]
		i = skipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		vs := skipSpace(b, i+1)
		ve, ok := value(b, vs)
		if !ok || !member(key, b[vs:ve]) {
			return false
		}
		i = skipSpace(b, ve)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return skipSpace(b, i+1) == len(b)
		default:
			return false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// String is a Value for a plain JSON string: no escapes, no control
// characters, valid UTF-8, so its bytes between the quotes are its value.
func String(b []byte, i int) (end int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, utf8.Valid(b[i+1 : j])
		case c == '\\' || c < 0x20:
			return 0, false
		}
	}
	return 0, false
}

// Scalar is a Value for a plain string, a number or true, false or null.
func Scalar(b []byte, i int) (end int, ok bool) {
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		return String(b, i)
	case c == '-' || (c >= '0' && c <= '9'):
		return number(b, i)
	}
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
			return i + len(lit), true
		}
	}
	return 0, false
}

// number returns the end of the JSON number at i (RFC 8259 grammar).
func number(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}
