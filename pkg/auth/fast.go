package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"hash"
	"strings"
	"sync"

	"github.com/elchat/elchat/internal/flatjson"
)

// The fast path accepts the tokens host apps actually send (a canonical
// HS256 header, a flat claims object of strings and numbers) without
// golang-jwt's generic machinery: no header map, no reflection, one pooled
// HMAC. Every connect verifies a token, and in connect profiles the
// library's decoding, its allocations and the stack growth they caused
// were a tenth of a node's CPU per connect.
//
// It only ever accepts: any token it does not recognise, and every token
// that fails a check, goes to the library path, which decides and words
// the error. So it must accept nothing the library would refuse, and
// produce the same claims; FuzzFastPathAgrees holds it to that.

// canonicalHeaders are the headers JWT libraries emit for HS256, base64url
// encoded: golang-jwt, jsonwebtoken (Node) and PyJWT write the first,
// ruby-jwt the last.
var canonicalHeaders = [...]string{
	b64url(`{"alg":"HS256","typ":"JWT"}`),
	b64url(`{"typ":"JWT","alg":"HS256"}`),
	b64url(`{"alg":"HS256"}`),
}

func b64url(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// macPool holds keyed HMAC-SHA256 states for one Verifier's secret; Reset
// brings one back to the keyed start without rehashing the key.
type macPool struct{ p sync.Pool }

// macState is a pooled HMAC with the buffer that holds a token's signing
// input while it is hashed and decoded: a buffer on the stack would escape
// through the hash.Hash interface, and so would converting the string.
type macState struct {
	h   hash.Hash
	in  []byte // cap fastSigned
	sum [sha256.Size]byte
	// claims holds the decoded payload, which the claims' raw values
	// point into until fast returns.
	claims [fastPayload]byte
}

func newMacPool(secret []byte) *macPool {
	return &macPool{p: sync.Pool{New: func() any {
		return &macState{h: hmac.New(sha256.New, secret), in: make([]byte, 0, fastSigned)}
	}}}
}

// fastPayload bounds the decoded claims and fastSigned the signing input
// (header, dot, payload), both held in the pooled macState; bigger tokens
// take the library path.
const (
	fastPayload = 512
	fastSigned  = 1024
	sigLen      = 43 // an HMAC-SHA256 in unpadded base64url
)

// fast returns the claims of token and true when the fast path accepts
// it; false sends it to the library path.
func (v *Verifier) fast(token string) (Claims, bool) {
	header, rest, ok := strings.Cut(token, ".")
	if !ok {
		return Claims{}, false
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || strings.IndexByte(sig, '.') >= 0 || !isCanonicalHeader(header) {
		return Claims{}, false
	}

	// The signing input is copied into the pooled state's buffer and the
	// signature onto the stack before they are hashed or decoded:
	// converting the strings to byte slices would put three copies per
	// connect on the heap.
	signed := token[:len(header)+1+len(payload)]
	if len(signed) > fastSigned {
		return Claims{}, false
	}

	// The signature: RawURLEncoding as the library decodes it (lenient
	// about the unused bits of the last character, as it is).
	var sigIn [sigLen]byte
	var sigBuf [sha256.Size]byte
	if len(sig) != sigLen {
		return Claims{}, false
	}
	copy(sigIn[:], sig)
	if n, err := base64.RawURLEncoding.Decode(sigBuf[:], sigIn[:]); err != nil || n != sha256.Size {
		return Claims{}, false
	}
	ms := v.macs.p.Get().(*macState)
	defer v.macs.p.Put(ms)
	ms.in = append(ms.in[:0], signed...)
	ms.h.Reset()
	ms.h.Write(ms.in) //nolint:errcheck // hashes never fail
	if !hmac.Equal(sigBuf[:], ms.h.Sum(ms.sum[:0])) {
		return Claims{}, false
	}

	if base64.RawURLEncoding.DecodedLen(len(payload)) > len(ms.claims) {
		return Claims{}, false
	}
	// The payload's bytes are in the signing input: decode them from there.
	n, err := base64.RawURLEncoding.Decode(ms.claims[:], ms.in[len(header)+1:])
	if err != nil {
		return Claims{}, false
	}
	var tc tokenClaims
	if !flatClaims(ms.claims[:n], &tc) {
		return Claims{}, false
	}

	// The library's validator: exp required, now before exp+leeway; nbf,
	// when present, not after now+leeway. iat is not checked.
	now := v.now()
	exp, present, err := dateOf(tc.Exp)
	if err != nil || !present || !now.Before(exp.Add(v.leeway)) {
		return Claims{}, false
	}
	nbf, present, err := dateOf(tc.Nbf)
	if err != nil || (present && now.Before(nbf.Add(-v.leeway))) {
		return Claims{}, false
	}
	c, err := tc.claims()
	if err != nil {
		return Claims{}, false // the library path words the refusal
	}
	return c, true
}

func isCanonicalHeader(h string) bool {
	for _, c := range canonicalHeaders {
		if h == c {
			return true
		}
	}
	return false
}

// flatClaims reads a JSON object whose values are all strings without
// escapes, numbers, true, false or null into tc, the last of a repeated
// key winning as with encoding/json. It returns false for anything else
// (nested values, escapes, invalid UTF-8, a key that matches a claim only
// case-insensitively as encoding/json would match it, malformed JSON), and
// the library path decides. The RawMessages point into data.
func flatClaims(data []byte, tc *tokenClaims) bool {
	return flatjson.Members(data, flatjson.Scalar, tc.set)
}

// set stores a claim's raw value; false for a key encoding/json would
// fold onto a claim although it is spelled differently.
func (tc *tokenClaims) set(key, raw []byte) bool {
	for _, c := range [...]struct {
		name string
		dst  *json.RawMessage
	}{{"sub", &tc.Sub}, {"name", &tc.Name}, {"peer", &tc.Peer}, {"exp", &tc.Exp}, {"nbf", &tc.Nbf}, {"iat", &tc.Iat}} {
		switch {
		case string(key) == c.name: // no allocation: compared in place
			*c.dst = raw
			return true
		case bytes.EqualFold(key, []byte(c.name)):
			return false
		}
	}
	return true
}
