package longpoll

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// tokenPrefix starts every session token. It tells a session token from
// the host app's JWT when both arrive as ?token= (phoenix.js 1.8 appends
// the session token to the user's params, which may carry a token too).
const tokenPrefix = "lp1."

// ticket is what a session token says: which node owns the session, where
// that node can be reached, the session and its user, and when the user's
// token expires (the session ends then, as a socket closes with 4001).
type ticket struct {
	Node    string `json:"n"`
	Addr    string `json:"a,omitempty"`
	Session string `json:"s"`
	User    string `json:"u"`
	Expires int64  `json:"e"` // unix seconds
}

var (
	errForged  = errors.New("long-poll token: bad signature or format")
	errExpired = errors.New("long-poll token: expired")
)

// signer signs and checks session tokens with a key derived from the node
// secret, so a session token can never pass for a host-app JWT or the
// other way round.
type signer struct{ key []byte }

func newSigner(secret []byte) signer {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("elchat long-poll session token v1"))
	return signer{key: m.Sum(nil)}
}

func (s signer) mac(payload string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

func (s signer) sign(t ticket) string {
	b, _ := json.Marshal(t) // strings and an int: cannot fail
	payload := base64.RawURLEncoding.EncodeToString(b)
	return tokenPrefix + payload + "." + base64.RawURLEncoding.EncodeToString(s.mac(payload))
}

// parse checks tok's signature and expiry at now.
func (s signer) parse(tok string, now time.Time) (ticket, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok || len(tok) > maxTokenLen {
		return ticket{}, errForged
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok {
		return ticket{}, errForged
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(payload)) {
		return ticket{}, errForged
	}
	b, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return ticket{}, errForged
	}
	var t ticket
	if err := json.Unmarshal(b, &t); err != nil || t.Node == "" || t.Session == "" || t.User == "" {
		return ticket{}, errForged
	}
	if now.Unix() >= t.Expires {
		return t, errExpired
	}
	return t, nil
}

// maxTokenLen bounds what parse looks at: a node id, an address, a
// session id and a user id (at most 128 bytes) fit well within it.
const maxTokenLen = 1024
