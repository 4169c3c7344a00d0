package hub

import "github.com/elchat/elchat/internal/flatjson"

// quickMessageParams reads the new_message payload phoenix.js clients send,
// {"body":"...","client_id":"..."} in either order, without encoding/json:
// its reflection was the largest user-space cost of a message after the
// syscalls. It takes only the plain shape: the two keys spelled exactly,
// each at most once, with strings free of escapes, control characters and
// invalid UTF-8. For anything else it reports false and the caller asks
// encoding/json, so every other payload, and every refusal, behaves as
// before (FuzzQuickMessageParams checks that the two agree).
func quickMessageParams(p []byte) (body, clientID string, ok bool) {
	var haveBody, haveID bool
	ok = flatjson.Members(p, flatjson.String, func(key, raw []byte) bool {
		val := raw[1 : len(raw)-1]
		switch {
		case string(key) == "body" && !haveBody:
			body, haveBody = string(val), true
		case string(key) == "client_id" && !haveID:
			clientID, haveID = string(val), true
		default:
			return false // other keys, or a repeated one: encoding/json decides
		}
		return true
	})
	if !ok || !haveBody {
		return "", "", false // no body: encoding/json words the refusal
	}
	return body, clientID, true
}
