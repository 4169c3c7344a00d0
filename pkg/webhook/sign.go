package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Headers of every POST.
const (
	HeaderEventID   = "ElChat-Event-Id"
	HeaderSignature = "ElChat-Signature"
	HeaderAttempt   = "ElChat-Attempt"
)

// DefaultTolerance is how old a signature timestamp a receiver should
// accept. Every attempt is signed afresh, so a retry is never older than
// this when it leaves; anything older is a replay.
const DefaultTolerance = 5 * time.Minute

// Sign returns the ElChat-Signature value for body sent at unix second ts:
// "t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">", the scheme receivers
// already know from Stripe-style webhooks.
func Sign(secret []byte, ts int64, body []byte) string {
	t := strconv.FormatInt(ts, 10)
	return "t=" + t + ",v1=" + mac(secret, t, body)
}

func mac(secret []byte, t string, body []byte) string {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(t))
	h.Write([]byte{'.'})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// Errors of Verify.
var (
	ErrBadSignature = errors.New("webhook: signature does not match")
	ErrOldSignature = errors.New("webhook: signature timestamp outside the tolerance")
	ErrNoSignature  = errors.New("webhook: malformed or missing ElChat-Signature")
)

// Verify checks an ElChat-Signature header against the raw body, the way a
// Go receiver should: the timestamp within tolerance of now, and any v1
// value equal (in constant time) to the HMAC. Several v1 values may appear
// while a secret is being rotated.
func Verify(secret []byte, header string, body []byte, tolerance time.Duration, now time.Time) error {
	var (
		t   string
		v1s []string
	)
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		switch {
		case !ok:
		case k == "t":
			t = v
		case k == "v1":
			v1s = append(v1s, v)
		}
	}
	ts, err := strconv.ParseInt(t, 10, 64)
	if err != nil || len(v1s) == 0 {
		return ErrNoSignature
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return ErrOldSignature
	}
	want := []byte(mac(secret, t, body))
	for _, v := range v1s {
		if hmac.Equal([]byte(v), want) {
			return nil
		}
	}
	return ErrBadSignature
}
