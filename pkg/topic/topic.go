// Package topic names the channels a client can join and decides who may
// join them.
//
// There are two kinds: a user's lobby "user:ID", joinable by that user
// only, and a two-person chat "chat:A:B", joinable by A and B. A chat has
// exactly one name, with A and B in canonical order, so that both members
// and the server agree on which topic carries the conversation.
package topic

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Kind says what a topic is for.
type Kind int

// The zero Kind is deliberately invalid so that a zero Topic allows no one.
const (
	Lobby Kind = iota + 1
	Chat
)

func (k Kind) String() string {
	switch k {
	case Lobby:
		return "lobby"
	case Chat:
		return "chat"
	}
	return "invalid"
}

// MaxIDLen bounds a user id. Ids end up in topic names, presence keys and
// log lines, so they stay short.
const MaxIDLen = 128

const (
	lobbyPrefix = "user:"
	chatPrefix  = "chat:"
)

var (
	// ErrUnmatched means no topic of that name exists; the server answers
	// it with Phoenix's "unmatched topic".
	ErrUnmatched = errors.New("unmatched topic")
	// ErrNotCanonical means a chat named with its members in the wrong
	// order. The error returned wraps it in a *NotCanonicalError.
	ErrNotCanonical = errors.New("chat topic is not canonical")
	// ErrSelfChat means a chat whose two members are the same user.
	ErrSelfChat = errors.New("cannot chat with yourself")
	// ErrInvalidID means a user id that cannot appear in a topic name.
	ErrInvalidID = errors.New("invalid user id")
)

// NotCanonicalError carries the name the client should have used. Its
// message is meant to be sent back to the client as is.
type NotCanonicalError struct {
	Canonical string
}

func (e *NotCanonicalError) Error() string {
	return ErrNotCanonical.Error() + ", use " + e.Canonical
}

func (e *NotCanonicalError) Is(target error) bool { return target == ErrNotCanonical }

// Topic is a parsed topic name.
type Topic struct {
	Kind Kind
	User string // lobby owner
	A, B string // chat members, Less(A, B)
}

// ValidID reports whether id can be a user id: non-empty, at most MaxIDLen
// bytes of valid UTF-8, with no ':' (the topic separator) and no control
// characters (which would let an id forge log lines or confuse clients).
// pkg/auth applies the same rule to token subjects, so every authenticated
// user has a lobby and can be in a chat.
func ValidID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return ErrInvalidID
	}
	for i := 0; i < len(id); {
		r, size := utf8.DecodeRuneInString(id[i:])
		if r == ':' || unicode.IsControl(r) || (r == utf8.RuneError && size == 1) {
			return ErrInvalidID
		}
		i += size
	}
	return nil
}

// Parse parses and validates a topic name. Every error wraps ErrUnmatched,
// ErrNotCanonical or ErrSelfChat; an id that ValidID rejects makes the
// name unmatched, since no user could own it.
func Parse(s string) (Topic, error) {
	if id, ok := strings.CutPrefix(s, lobbyPrefix); ok {
		if ValidID(id) != nil {
			return Topic{}, ErrUnmatched
		}
		return Topic{Kind: Lobby, User: id}, nil
	}
	rest, ok := strings.CutPrefix(s, chatPrefix)
	if !ok {
		return Topic{}, ErrUnmatched
	}
	a, b, ok := strings.Cut(rest, ":")
	if !ok || ValidID(a) != nil || ValidID(b) != nil {
		return Topic{}, ErrUnmatched
	}
	if a == b {
		return Topic{}, ErrSelfChat
	}
	if !Less(a, b) {
		return Topic{}, &NotCanonicalError{Canonical: ChatName(a, b)}
	}
	return Topic{Kind: Chat, A: a, B: b}, nil
}

// LobbyName returns the name of user's lobby.
func LobbyName(user string) string { return lobbyPrefix + user }

// LobbyUser returns the user of a lobby name, false for other names.
func LobbyUser(name string) (string, bool) { return strings.CutPrefix(name, lobbyPrefix) }

// IsLobby and IsChat tell a topic's kind from its name without parsing it
// whole, for code that only routes by kind.
func IsLobby(name string) bool { return strings.HasPrefix(name, lobbyPrefix) }
func IsChat(name string) bool  { return strings.HasPrefix(name, chatPrefix) }

// ChatName returns the canonical name of the chat between a and b. It does
// not validate the ids; ChatName(a, a) yields a name Parse rejects.
func ChatName(a, b string) string {
	if Less(b, a) {
		a, b = b, a
	}
	return chatPrefix + a + ":" + b
}

// Less orders the two members of a chat: numerically when both are
// canonical non-negative decimal integers (so "9" < "10"), by bytes
// otherwise. Ids with leading zeros ("007") are distinct from their
// numeric value, so they count as non-numeric.
//
// Less is meant for ordering a pair. Mixing the two rules makes it
// non-transitive over a set of mixed ids ("9" < "10" < "1a" < "9"), so do
// not sort slices of arbitrary ids with it.
func Less(a, b string) bool {
	if numeric(a) && numeric(b) && len(a) != len(b) {
		return len(a) < len(b)
	}
	// Equal-length canonical decimals order the same by bytes as by value.
	return a < b
}

func numeric(s string) bool {
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Allows reports whether userID may join t.
func (t Topic) Allows(userID string) bool {
	switch t.Kind {
	case Lobby:
		return userID != "" && userID == t.User
	case Chat:
		return userID != "" && (userID == t.A || userID == t.B)
	}
	return false
}

// Other returns the member of a chat who is not userID, or "" if t is not
// a chat or userID is not in it.
func (t Topic) Other(userID string) string {
	if t.Kind != Chat || userID == "" {
		return ""
	}
	switch userID {
	case t.A:
		return t.B
	case t.B:
		return t.A
	}
	return ""
}

// String returns the topic's name.
func (t Topic) String() string {
	switch t.Kind {
	case Lobby:
		return lobbyPrefix + t.User
	case Chat:
		return chatPrefix + t.A + ":" + t.B
	}
	return ""
}
