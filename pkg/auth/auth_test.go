package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	secret = []byte("0123456789abcdef0123456789abcdef")
	now    = time.Unix(1_800_000_000, 0)
)

func verifier(opts ...Option) *Verifier {
	return NewVerifier(secret, append([]Option{WithClock(func() time.Time { return now })}, opts...)...)
}

func sign(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// handmade builds a token from raw header and payload JSON, signed with
// HMAC-SHA256 over secret whatever the header claims.
func handmade(header, payload string) string {
	unsigned := b64(header) + "." + b64(payload)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(unsigned))
	return unsigned + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func valid() jwt.MapClaims {
	return jwt.MapClaims{"sub": "42", "name": "alice", "exp": now.Add(time.Hour).Unix()}
}

func with(k string, v any) jwt.MapClaims {
	c := valid()
	if v == nil {
		delete(c, k)
	} else {
		c[k] = v
	}
	return c
}

func TestVerifyValid(t *testing.T) {
	c, err := verifier().Verify(sign(t, jwt.SigningMethodHS256, secret, valid()))
	if err != nil {
		t.Fatal(err)
	}
	want := Claims{UserID: "42", Name: "alice", ExpiresAt: now.Add(time.Hour)}
	if c.UserID != want.UserID || c.Name != want.Name || !c.ExpiresAt.Equal(want.ExpiresAt) {
		t.Errorf("got %+v, want %+v", c, want)
	}

	c, err = verifier().Verify(sign(t, jwt.SigningMethodHS256, secret, with("name", nil)))
	if err != nil || c.Name != "42" {
		t.Errorf("missing name: %+v, %v; want name defaulting to sub", c, err)
	}
	long := strings.Repeat("é", 60) // 120 bytes
	c, err = verifier().Verify(sign(t, jwt.SigningMethodHS256, secret, with("name", long)))
	if err != nil || c.Name != strings.Repeat("é", 50) {
		t.Errorf("long name: %q, %v; want truncated to 100 bytes on a rune boundary", c.Name, err)
	}
}

func TestVerifyRejects(t *testing.T) {
	hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, secret, c) }
	good := hs(valid())
	parts := strings.Split(good, ".")
	tests := []struct {
		name   string
		token  string
		reason string
	}{
		{"expired", hs(with("exp", now.Add(-time.Second).Unix())), "expired"},
		{"expires now", hs(with("exp", now.Unix())), "expired"},
		{"missing exp", hs(with("exp", nil)), "claims"},
		{"string exp", hs(with("exp", "tomorrow")), "claims"},
		{"not yet valid", hs(with("nbf", now.Add(time.Hour).Unix())), "claims"},
		{"alg none", b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(`{"sub":"42","exp":9999999999}`) + ".", "algorithm"},
		{"alg none signed", handmade(`{"alg":"none"}`, `{"sub":"42","exp":9999999999}`), "algorithm"},
		{"HS512 same secret", sign(t, jwt.SigningMethodHS512, secret, valid()), "algorithm"},
		{"HS384 same secret", sign(t, jwt.SigningMethodHS384, secret, valid()), "algorithm"},
		{"RS256 header", handmade(`{"alg":"RS256","typ":"JWT"}`, `{"sub":"42","exp":9999999999}`), "algorithm"},
		{"unknown alg", handmade(`{"alg":"XX1"}`, `{"sub":"42","exp":9999999999}`), "algorithm"},
		{"no alg", handmade(`{"typ":"JWT"}`, `{"sub":"42","exp":9999999999}`), "algorithm"},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, []byte("another secret"), valid()), "signature"},
		{"tampered payload", parts[0] + "." + b64(`{"sub":"1","name":"alice","exp":1800003600}`) + "." + parts[2], "signature"},
		{"stripped signature", parts[0] + "." + parts[1] + ".", "signature"},
		{"missing sub", hs(with("sub", nil)), "claims"},
		{"empty sub", hs(with("sub", "")), "claims"},
		{"sub with colon", hs(with("sub", "9:10")), "claims"},
		{"sub with control char", hs(with("sub", "a\nb")), "claims"},
		{"long sub", hs(with("sub", strings.Repeat("x", 129))), "claims"},
		{"numeric sub", hs(with("sub", 42)), "claims"},
		{"numeric name", hs(with("name", 7)), "claims"},
		{"huge token", hs(with("pad", strings.Repeat("x", MaxTokenLen))), "malformed"},
		{"empty", "", "malformed"},
		{"two segments", parts[0] + "." + parts[1], "malformed"},
		{"bad base64", parts[0] + ".!!!." + parts[2], "malformed"},
		{"payload not JSON", handmade(`{"alg":"HS256"}`, `not json`), "malformed"},
		{"payload array", handmade(`{"alg":"HS256"}`, `[1]`), "malformed"},
	}
	for _, tt := range tests {
		_, err := verifier().Verify(tt.token)
		if got := Reason(err); got != tt.reason {
			t.Errorf("%s: Reason = %q (%v), want %q", tt.name, got, err, tt.reason)
		}
	}
}

func TestLeeway(t *testing.T) {
	tok := sign(t, jwt.SigningMethodHS256, secret, with("exp", now.Add(-30*time.Second).Unix()))
	if _, err := verifier(WithLeeway(time.Minute)).Verify(tok); err != nil {
		t.Errorf("leeway of 1m rejected a token 30s past exp: %v", err)
	}
}

func TestMint(t *testing.T) {
	tok, err := Mint(secret, "42", "alice", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewVerifier(secret).Verify(tok)
	if err != nil || c.UserID != "42" || c.Name != "alice" {
		t.Errorf("Verify(Mint()) = %+v, %v", c, err)
	}
	if tok, err := Mint(secret, "42", "", time.Millisecond); err != nil {
		t.Error(err)
	} else if _, err := NewVerifier(secret).Verify(tok); err != nil {
		t.Errorf("a 1ms token is expired on arrival: %v", err)
	}
	for _, bad := range []struct {
		secret []byte
		user   string
		ttl    time.Duration
	}{{nil, "42", time.Minute}, {secret, "a:b", time.Minute}, {secret, "", time.Minute}, {secret, "42", 0}} {
		if _, err := Mint(bad.secret, bad.user, "", bad.ttl); err == nil {
			t.Errorf("Mint(%q, %q, %v) succeeded", bad.secret, bad.user, bad.ttl)
		}
	}
}

func TestReason(t *testing.T) {
	if Reason(nil) != "" || Reason(errors.New("x")) != "unknown" {
		t.Error("Reason of nil or foreign error")
	}
}

func TestEmptySecretPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewVerifier(nil) did not panic")
		}
	}()
	NewVerifier(nil)
}

func FuzzVerify(f *testing.F) {
	f.Add(handmade(`{"alg":"HS256"}`, `{"sub":"42","exp":9999999999}`))
	f.Add(handmade(`{"alg":"HS256"}`, `{"sub":{"a":1},"exp":1e400,"name":[]}`))
	v := verifier()
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token)
		if err != nil {
			if Reason(err) == "unknown" {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if c.UserID == "" || c.Name == "" || len(c.Name) > MaxNameLen || !c.ExpiresAt.After(now) {
			t.Fatalf("accepted %q with claims %+v", token, c)
		}
	})
}

// BenchmarkVerifyGrant is what the granted policy costs one chat join; a
// message costs nothing, since the grant is checked at the join only.
func BenchmarkVerifyGrant(b *testing.B) {
	secret := []byte("bench-grant-secret-0123456789abcdef")
	g, err := MintGrant(secret, "1", "2", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	v := NewVerifier(secret)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := v.VerifyGrant(g); err != nil {
			b.Fatal(err)
		}
	}
}

// A grant and a socket token are not interchangeable.
func TestGrantIsNotAToken(t *testing.T) {
	secret := []byte("grant-secret-0123456789abcdef")
	v := NewVerifier(secret)
	g, err := MintGrant(secret, "1", "2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if u, p, err := v.VerifyGrant(g); err != nil || u != "1" || p != "2" {
		t.Fatalf("VerifyGrant = %q, %q, %v", u, p, err)
	}
	if _, err := v.Verify(g); !errors.Is(err, ErrClaims) {
		t.Errorf("a grant as socket token: %v, want ErrClaims", err)
	}
	tok, err := Mint(secret, "1", "one", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.VerifyGrant(tok); !errors.Is(err, ErrClaims) || err.Error() != "has invalid claims" {
		t.Errorf("a socket token as grant: %v", err)
	}
	if _, _, err := NewVerifier([]byte("another-secret-0123456789abcdef")).VerifyGrant(g); !errors.Is(err, ErrSignature) {
		t.Errorf("forged grant: %v", err)
	}
	if _, err := MintGrant(secret, "1", "1", time.Hour); err == nil {
		t.Error("a grant for a self chat was minted")
	}
}

// BenchmarkVerify is the per-handshake cost of checking a socket token:
// "fast" as Verify takes it, "library" through golang-jwt alone, the fast
// path's baseline in the same run.
func BenchmarkVerify(b *testing.B) {
	tok, err := Mint(secret, "42", "Alice", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	v := NewVerifier(secret)
	for _, c := range []struct {
		name   string
		verify func(string) (Claims, error)
	}{{"fast", v.Verify}, {"library", v.verifyLibrary}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Expiries up to the year 9999 are read exactly; a fraction is cut to the
// library's precision (seconds), as jwt.MapClaims does.
func TestFarExpiry(t *testing.T) {
	for _, exp := range []any{int64(9999999999), int64(253402300799), 1800003600.5} {
		tok := sign(t, jwt.SigningMethodHS256, secret, with("exp", exp))
		c, err := verifier().Verify(tok)
		if err != nil {
			t.Fatalf("exp %v: %v", exp, err)
		}
		var want time.Time
		switch e := exp.(type) {
		case int64:
			want = time.Unix(e, 0)
		case float64:
			want = time.Unix(1800003600, 0)
		}
		if !c.ExpiresAt.Equal(want) {
			t.Fatalf("exp %v read as %v, want %v", exp, c.ExpiresAt, want)
		}
	}
}
