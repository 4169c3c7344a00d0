package hub

import "unicode/utf8"

// quickMessageParams reads the new_message payload phoenix.js clients send,
// {"body":"...","client_id":"..."} in either order, without encoding/json:
// its reflection was the largest user-space cost of a message after the
// syscalls. It takes only the plain shape: the two keys spelled exactly,
// each at most once, with strings free of escapes, control characters and
// invalid UTF-8. For anything else it reports false and the caller asks
// encoding/json, so every other payload, and every refusal, behaves as
// before (FuzzQuickMessageParams checks that the two agree).
func quickMessageParams(p []byte) (body, clientID string, ok bool) {
	i := skipSpace(p, 0)
	if i >= len(p) || p[i] != '{' {
		return "", "", false
	}
	i = skipSpace(p, i+1)
	var haveBody, haveID bool
	if i < len(p) && p[i] == '}' {
		return "", "", false // no body: encoding/json words the refusal
	}
	for {
		key, j, ok := plainString(p, i)
		if !ok {
			return "", "", false
		}
		j = skipSpace(p, j)
		if j >= len(p) || p[j] != ':' {
			return "", "", false
		}
		val, k, ok := plainString(p, skipSpace(p, j+1))
		if !ok {
			return "", "", false
		}
		switch {
		case string(key) == "body" && !haveBody:
			body, haveBody = string(val), true
		case string(key) == "client_id" && !haveID:
			clientID, haveID = string(val), true
		default:
			return "", "", false
		}
		i = skipSpace(p, k)
		if i >= len(p) {
			return "", "", false
		}
		if p[i] == '}' {
			break
		}
		if p[i] != ',' {
			return "", "", false
		}
		i = skipSpace(p, i+1)
	}
	if skipSpace(p, i+1) != len(p) || !haveBody {
		return "", "", false
	}
	return body, clientID, true
}

// plainString reads a JSON string starting at p[i] that needs no
// unescaping; it returns its contents and the index after the closing
// quote.
func plainString(p []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(p) || p[i] != '"' {
		return nil, 0, false
	}
	start := i + 1
	for j := start; j < len(p); j++ {
		switch c := p[j]; {
		case c == '"':
			if !utf8.Valid(p[start:j]) {
				return nil, 0, false
			}
			return p[start:j], j + 1, true
		case c == '\\' || c < 0x20:
			return nil, 0, false
		}
	}
	return nil, 0, false
}

func skipSpace(p []byte, i int) int {
	for i < len(p) {
		switch p[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}
