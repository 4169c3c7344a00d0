// Package auth verifies the tokens a host application issues to its users:
// HS256 JWTs signed with a secret shared with ElChat.
//
// Token claims:
//
//	sub   required string, the user id; must satisfy topic.ValidID because
//	      it becomes part of topic names (user:ID, chat:A:B). A JSON number
//	      is rejected: some JWT libraries emit numeric ids, but 42 and "42"
//	      would otherwise be two spellings of one user, so host apps must
//	      send a string.
//	exp   required, in the future.
//	name  optional string, the display name; defaults to sub and is
//	      truncated to MaxNameLen bytes.
package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/elchat/elchat/pkg/topic"
)

const (
	// MaxTokenLen bounds the token before any decoding, so an oversized
	// token costs nothing but a length check.
	MaxTokenLen = 8 << 10
	// MaxNameLen bounds the display name, which is copied into every
	// presence entry.
	MaxNameLen = 100
)

// Errors returned by Verify wrap exactly one of these, so that the reason
// survives logging and errors.Is.
var (
	ErrMalformed = errors.New("malformed token")
	ErrAlgorithm = errors.New("signing algorithm not allowed")
	ErrSignature = errors.New("invalid signature")
	ErrExpired   = errors.New("token expired")
	ErrClaims    = errors.New("invalid claims")
)

// Reason returns a short label for the sentinel err wraps, for logs and
// metrics: "malformed", "algorithm", "signature", "expired", "claims", ""
// for nil and "unknown" for anything else.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrAlgorithm):
		return "algorithm"
	case errors.Is(err, ErrSignature):
		return "signature"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrClaims):
		return "claims"
	}
	return "unknown"
}

// Claims is what a verified token says about its bearer.
type Claims struct {
	UserID    string
	Name      string
	ExpiresAt time.Time
}

// Verifier checks tokens against one secret. It is safe for concurrent use.
type Verifier struct {
	// All fields are set by NewVerifier and immutable afterwards, so one
	// Verifier serves every handshake concurrently.
	secret  []byte
	leeway  time.Duration
	now     func() time.Time
	parser  *jwt.Parser
	keyFunc jwt.Keyfunc
	macs    *macPool // the fast path's keyed HMACs (fast.go)
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithLeeway tolerates clock skew of d when checking exp.
func WithLeeway(d time.Duration) Option { return func(v *Verifier) { v.leeway = d } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// NewVerifier returns a Verifier for secret. It panics if secret is empty:
// every token signed with an empty key would verify, so starting a server
// that way is a configuration error that must not go unnoticed.
func NewVerifier(secret []byte, opts ...Option) *Verifier {
	if len(secret) == 0 {
		panic("auth: empty secret")
	}
	v := &Verifier{secret: append([]byte(nil), secret...), now: time.Now}
	v.macs = newMacPool(v.secret)
	for _, o := range opts {
		o(v)
	}
	// Built once: a parser only reads its options, and building one per
	// handshake showed up in connect profiles.
	v.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{hs256}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(v.leeway),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
	)
	v.keyFunc = func(*jwt.Token) (any, error) { return v.secret, nil }
	return v
}

var hs256 = jwt.SigningMethodHS256.Alg()

// Verify checks token and returns its claims. The error wraps one of the
// package's sentinels; Reason names it.
func (v *Verifier) Verify(token string) (Claims, error) {
	if len(token) > MaxTokenLen {
		return Claims{}, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenLen)
	}
	if c, ok := v.fast(token); ok {
		return c, nil
	}
	return v.verifyLibrary(token)
}

// verifyLibrary is Verify through golang-jwt: every token the fast path
// does not accept, and every refusal's wording.
func (v *Verifier) verifyLibrary(token string) (Claims, error) {
	var tc tokenClaims
	tok, err := v.parser.ParseWithClaims(token, &tc, v.keyFunc)
	if err != nil {
		return Claims{}, classify(tok, err)
	}
	return tc.claims()
}

// tokenClaims decodes a socket token's claims into fields rather than a
// jwt.MapClaims: no map and no boxed value per handshake. The fields stay
// raw JSON so that a claim of the wrong type is refused as invalid claims
// (ErrClaims, with a reason) rather than as an undecodable token.
type tokenClaims struct {
	Sub  json.RawMessage `json:"sub"`
	Name json.RawMessage `json:"name"`
	Peer json.RawMessage `json:"peer"`
	Exp  json.RawMessage `json:"exp"`
	Nbf  json.RawMessage `json:"nbf"`
	Iat  json.RawMessage `json:"iat"`
}

func (c *tokenClaims) GetExpirationTime() (*jwt.NumericDate, error) { return numericDate(c.Exp) }
func (c *tokenClaims) GetNotBefore() (*jwt.NumericDate, error)      { return numericDate(c.Nbf) }
func (c *tokenClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return numericDate(c.Iat) }
func (c *tokenClaims) GetIssuer() (string, error)                   { return "", nil }
func (c *tokenClaims) GetSubject() (string, error)                  { return "", nil }
func (c *tokenClaims) GetAudience() (jwt.ClaimStrings, error)       { return nil, nil }

// numericDate reads a JWT NumericDate: a JSON number of seconds, as
// jwt.MapClaims does; absent or null is nil.
func numericDate(raw json.RawMessage) (*jwt.NumericDate, error) {
	t, present, err := dateOf(raw)
	if err != nil || !present {
		return nil, err
	}
	return &jwt.NumericDate{Time: t}, nil
}

// dateOf is numericDate as a value, for the paths that run on every
// connect: present is false when raw is absent or null.
func dateOf(raw json.RawMessage) (t time.Time, present bool, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, false, nil
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return time.Time{}, false, jwt.ErrInvalidType
	}
	sec, frac := math.Modf(f) // seconds up to year 9999 overflow a time.Duration of nanoseconds
	// What jwt.NewNumericDate keeps of it.
	return time.Unix(int64(sec), int64(frac*1e9)).Truncate(jwt.TimePrecision), true, nil
}

// str reads an optional JSON string claim: ok is false for another type.
func str(raw json.RawMessage) (s string, present, ok bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", false, true
	}
	if raw[0] != '"' {
		return "", true, false
	}
	if len(raw) >= 2 && bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		// Nothing to unescape or replace: the bytes between the quotes
		// are the string (raw is a JSON value, so no control bytes).
		return string(raw[1 : len(raw)-1]), true, true
	}
	if json.Unmarshal(raw, &s) != nil {
		return "", true, false
	}
	return s, true, true
}

func (c *tokenClaims) claims() (Claims, error) {
	sub, present, ok := str(c.Sub)
	switch {
	case !ok:
		return Claims{}, fmt.Errorf("%w: sub must be a string", ErrClaims)
	case !present:
		return Claims{}, fmt.Errorf("%w: sub is required", ErrClaims)
	}
	if err := topic.ValidID(sub); err != nil {
		return Claims{}, fmt.Errorf("%w: sub must be 1-%d bytes without ':' or control characters", ErrClaims, topic.MaxIDLen)
	}
	if len(c.Peer) > 0 {
		// A leaked grant must not open a socket.
		return Claims{}, fmt.Errorf("%w: a chat grant is not a connection token", ErrClaims)
	}
	name, _, ok := str(c.Name)
	if !ok {
		return Claims{}, fmt.Errorf("%w: name must be a string", ErrClaims)
	}
	if name == "" {
		name = sub
	} else {
		name = truncate(name, MaxNameLen)
	}
	exp, present, err := dateOf(c.Exp)
	if err != nil || !present {
		// Unreachable after the parser's own exp check; kept so that a
		// library change cannot yield a token without an expiry.
		return Claims{}, fmt.Errorf("%w: exp is required", ErrClaims)
	}
	return Claims{UserID: sub, Name: name, ExpiresAt: exp}, nil
}

// classify maps the library's errors onto ours. jwt reports a disallowed
// algorithm as an invalid signature, so the header is consulted to tell
// the two apart.
func classify(tok *jwt.Token, err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	case tok != nil && tok.Header != nil && tok.Header["alg"] != hs256:
		return fmt.Errorf("%w: %v", ErrAlgorithm, tok.Header["alg"])
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: %v", ErrSignature, err)
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w: %v", ErrExpired, err)
	case errors.Is(err, jwt.ErrTokenInvalidClaims), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fmt.Errorf("%w: %v", ErrClaims, err)
	}
	return fmt.Errorf("%w: %v", ErrMalformed, err)
}

// truncate cuts s to at most n bytes without splitting a rune. Decoded JSON
// strings are valid UTF-8, so stepping back over continuation bytes is
// enough.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Mint issues a token for userID, valid for ttl. It exists for tests and
// the elchat command; production tokens come from the host application.
func Mint(secret []byte, userID, name string, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("auth: empty secret")
	}
	if err := topic.ValidID(userID); err != nil {
		return "", fmt.Errorf("auth: user id %q: %w", userID, err)
	}
	if ttl <= 0 {
		return "", errors.New("auth: ttl must be positive")
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"sub": userID,
		"iat": now.Unix(),
		"exp": now.Add(ttl + time.Second - 1).Unix(), // round up: a short ttl must not mint an expired token
	}
	if name != "" {
		claims["name"] = name
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}
