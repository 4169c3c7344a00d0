package auth

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The tokens host apps send take the fast path: golang-jwt's and
// jsonwebtoken's header, ruby-jwt's, PyJWT's, with the claims the guides
// show (numbers, names with non-ASCII, a leeway).
func TestFastPathTakesCommonTokens(t *testing.T) {
	exp := now.Add(time.Hour).Unix()
	for _, tok := range []string{
		sign(t, jwt.SigningMethodHS256, secret, valid()),
		handmade(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"42","name":"Zoë","exp":`+itoa(exp)+`}`),
		handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+itoa(exp)+`,"iat":1799999000}`),
		handmade(`{"typ":"JWT","alg":"HS256"}`, `{ "exp": `+itoa(exp)+`.5 , "sub": "user-7", "nbf": 1799990000, "admin": true, "role": null }`),
	} {
		fc, ok := verifier().fast(tok)
		if !ok {
			t.Errorf("fast path refused %s", tok)
			continue
		}
		lc, err := verifier().verifyLibrary(tok)
		if err != nil || lc != fc {
			t.Errorf("%s: fast %+v, library %+v, %v", tok, fc, lc, err)
		}
	}
}

// What the fast path does not take, the library decides: nested claims,
// escapes, other headers, bad signatures, expired or early tokens.
func TestFastPathDefers(t *testing.T) {
	exp := itoa(now.Add(time.Hour).Unix())
	good := handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`}`)
	for name, tok := range map[string]string{
		"nested":          handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,"roles":["a"]}`),
		"escape":          handmade(`{"alg":"HS256"}`, `{"sub":"4\u0032","exp":`+exp+`}`),
		"folded key":      handmade(`{"alg":"HS256"}`, `{"SUB":"42","exp":`+exp+`}`),
		"other header":    handmade(`{"alg":"HS256","kid":"1"}`, `{"sub":"42","exp":`+exp+`}`),
		"alg none":        b64(`{"alg":"none"}`) + "." + b64(`{"sub":"42","exp":`+exp+`}`) + ".",
		"bad signature":   good[:len(good)-10] + "AAAAAAAAAA",
		"expired":         handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":1799999999}`),
		"not yet":         handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,"nbf":1800000100}`),
		"no exp":          handmade(`{"alg":"HS256"}`, `{"sub":"42"}`),
		"numeric sub":     handmade(`{"alg":"HS256"}`, `{"sub":42,"exp":`+exp+`}`),
		"grant":           handmade(`{"alg":"HS256"}`, `{"sub":"42","peer":"7","exp":`+exp+`}`),
		"trailing":        handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`} x`),
		"bad number":      handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":01}`),
		"invalid utf8":    handmade(`{"alg":"HS256"}`, `{"sub":"4`+"\xff"+`","exp":`+exp+`}`),
		"four segments":   good + ".x",
		"padded":          good + "=",
		"huge claims":     handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,"pad":"`+strings.Repeat("x", 600)+`"}`),
		"empty object":    handmade(`{"alg":"HS256"}`, `{}`),
		"not an object":   handmade(`{"alg":"HS256"}`, `["sub"]`),
		"unquoted key":    handmade(`{"alg":"HS256"}`, `{sub:"42","exp":`+exp+`}`),
		"missing colon":   handmade(`{"alg":"HS256"}`, `{"sub" "42","exp":`+exp+`}`),
		"dangling comma":  handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,}`),
		"bare word value": handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,"x":nul}`),
	} {
		if c, ok := verifier().fast(tok); ok {
			t.Errorf("%s: fast path accepted %+v", name, c)
		}
	}
	// The library still accepts the legal ones among them.
	for _, tok := range []string{
		handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,"roles":["a"]}`),
		handmade(`{"alg":"HS256"}`, `{"sub":"4\u0032","exp":`+exp+`}`),
		handmade(`{"alg":"HS256","kid":"1"}`, `{"sub":"42","exp":`+exp+`}`),
		handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,"pad":"`+strings.Repeat("x", 600)+`"}`),
	} {
		if _, err := verifier().Verify(tok); err != nil {
			t.Errorf("Verify refused a legal token the fast path deferred: %v", err)
		}
	}
}

// FuzzFastPathAgrees holds the fast path to the library: whatever it
// accepts, golang-jwt accepts with the same claims. The fuzzer varies the
// header and the claims JSON; the token is signed with the right key, so
// the interesting inputs reach the claims.
func FuzzFastPathAgrees(f *testing.F) {
	exp := itoa(now.Add(time.Hour).Unix())
	f.Add(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"42","name":"alice","exp":`+exp+`}`, false)
	f.Add(`{"alg":"HS256"}`, `{"sub":"42","exp":`+exp+`,"nbf":1799999999.9}`, false)
	f.Add(`{"alg":"HS256"}`, `{"Sub":"42","sub":"43","exp":`+exp+`}`, false)
	f.Add(`{"alg":"HS256"}`, `{"sub":"42","exp":1e10,"exp":`+exp+`}`, true)
	v := verifier(WithLeeway(2 * time.Second))
	f.Fuzz(func(t *testing.T, header, payload string, raw bool) {
		tok := handmade(header, payload)
		if raw {
			// The payload as the token's middle segment itself, so the
			// fuzzer also reaches odd base64.
			tok = b64(header) + "." + payload + "." + base64.RawURLEncoding.EncodeToString([]byte("sig"))
		}
		fc, ok := v.fast(tok)
		if !ok {
			return
		}
		lc, err := v.verifyLibrary(tok)
		if err != nil {
			t.Fatalf("fast path accepted %q (%+v); library: %v", tok, fc, err)
		}
		if lc != fc {
			t.Fatalf("%q: fast %+v, library %+v", tok, fc, lc)
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
