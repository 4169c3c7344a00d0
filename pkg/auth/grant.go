package auth

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/elchat/elchat/pkg/topic"
)

// A chat grant lets one user open a chat with another under the "granted"
// chat policy. It is an HS256 JWT signed with the same secret as socket
// tokens, with claims sub (the joining user), peer (the other user) and
// exp; the host app renders it next to its "message this user" button and
// the client passes it in the chat join payload as {"grant": "<jwt>"}.

// VerifyGrant checks a chat grant and returns its user (sub) and peer. The
// error wraps one of the package's sentinels; its text is the reason a
// client is shown ("expired", "invalid signature", ...).
func (v *Verifier) VerifyGrant(token string) (user, peer string, err error) {
	if len(token) > MaxTokenLen {
		return "", "", fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenLen)
	}
	mc := jwt.MapClaims{}
	tok, err := v.parser.ParseWithClaims(token, mc, v.keyFunc)
	if err != nil {
		return "", "", grantError(classify(tok, err))
	}
	sub, _ := mc["sub"].(string)
	p, _ := mc["peer"].(string)
	if topic.ValidID(sub) != nil || topic.ValidID(p) != nil || sub == p {
		return "", "", grantError(fmt.Errorf("%w: sub and peer must be two user ids", ErrClaims))
	}
	return sub, p, nil
}

// grantError keeps the reason short: "expired", "has an invalid signature".
func grantError(err error) error {
	reason := map[string]string{
		"malformed": "is malformed", "algorithm": "has a signing algorithm not allowed",
		"signature": "has an invalid signature", "expired": "expired", "claims": "has invalid claims",
	}[Reason(err)]
	if reason == "" {
		reason = "is invalid"
	}
	return &reasonError{reason: reason, err: err}
}

type reasonError struct {
	reason string
	err    error
}

func (e *reasonError) Error() string { return e.reason }
func (e *reasonError) Unwrap() error { return e.err }

// MintGrant issues a grant for user to open the chat with peer, valid for
// ttl. Host apps do the same in two lines (see README); this serves tests
// and the elchat grant command.
func MintGrant(secret []byte, user, peer string, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("auth: empty secret")
	}
	for _, id := range []string{user, peer} {
		if err := topic.ValidID(id); err != nil {
			return "", fmt.Errorf("auth: user id %q: %w", id, err)
		}
	}
	if user == peer {
		return "", errors.New("auth: a grant needs two different users")
	}
	if ttl <= 0 {
		return "", errors.New("auth: ttl must be positive")
	}
	now := time.Now()
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":  user,
		"peer": peer,
		"iat":  now.Unix(),
		"exp":  now.Add(ttl + time.Second - 1).Unix(),
	}).SignedString(secret)
}
