package topic

import (
	"errors"
	"strings"
	"testing"
)

func TestLess(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"9", "10", true},
		{"10", "9", false},
		{"0", "1", true},
		{"123456789012345678901234567890", "99", false},
		{"99", "123456789012345678901234567890", true},
		{"99999999999999999999999999999999999999", "100000000000000000000000000000000000000", true},
		{"abc", "abd", true},
		{"abd", "abc", false},
		{"abc", "abc", false},
		{"10", "10", false},
		// Leading zeros make an id non-numeric: byte order applies.
		{"007", "7", true},
		{"7", "007", false},
		{"010", "9", true},
		// Mixed numeric/uuid compare by bytes.
		{"42", "3f2b9c1e-0000-4000-8000-000000000000", false},
		{"3f2b9c1e-0000-4000-8000-000000000000", "42", true},
		{"9", "10a", false},
		{"-1", "1", true}, // "-1" is not a non-negative integer
	}
	for _, tt := range tests {
		if got := Less(tt.a, tt.b); got != tt.want {
			t.Errorf("Less(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestChatName(t *testing.T) {
	tests := []struct{ a, b, want string }{
		{"9", "10", "chat:9:10"},
		{"10", "9", "chat:9:10"},
		{"bob", "alice", "chat:alice:bob"},
		{"7", "007", "chat:007:7"},
	}
	for _, tt := range tests {
		if got := ChatName(tt.a, tt.b); got != tt.want {
			t.Errorf("ChatName(%q, %q) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want Topic
	}{
		{"user:42", Topic{Kind: Lobby, User: "42"}},
		{"user:alice@example.com", Topic{Kind: Lobby, User: "alice@example.com"}},
		{"chat:9:10", Topic{Kind: Chat, A: "9", B: "10"}},
		{"chat:alice:bob", Topic{Kind: Chat, A: "alice", B: "bob"}},
		{"chat:007:7", Topic{Kind: Chat, A: "007", B: "7"}},
	}
	for _, tt := range good {
		got, err := Parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if got.String() != tt.in {
			t.Errorf("Parse(%q).String() = %q", tt.in, got.String())
		}
	}
	bad := []struct {
		in   string
		want error
	}{
		{"", ErrUnmatched},
		{"room:lobby", ErrUnmatched},
		{"phoenix", ErrUnmatched},
		{"user:", ErrUnmatched},
		{"user:a:b", ErrUnmatched},
		{"user:a\nb", ErrUnmatched},
		{"user:" + strings.Repeat("x", MaxIDLen+1), ErrUnmatched},
		{"user:\xff", ErrUnmatched},
		{"USER:42", ErrUnmatched},
		{"chat:", ErrUnmatched},
		{"chat:9", ErrUnmatched},
		{"chat:9:", ErrUnmatched},
		{"chat::10", ErrUnmatched},
		{"chat:1:2:3", ErrUnmatched},
		{"chat:9:9", ErrSelfChat},
		{"chat:10:9", ErrNotCanonical},
		{"chat:bob:alice", ErrNotCanonical},
	}
	for _, tt := range bad {
		if _, err := Parse(tt.in); !errors.Is(err, tt.want) {
			t.Errorf("Parse(%q) error = %v, want %v", tt.in, err, tt.want)
		}
	}
	_, err := Parse("chat:10:9")
	var nc *NotCanonicalError
	if !errors.As(err, &nc) || nc.Canonical != "chat:9:10" || !strings.Contains(err.Error(), "chat:9:10") {
		t.Errorf("Parse(chat:10:9) = %v, want the canonical name chat:9:10", err)
	}
}

func TestMaxLenID(t *testing.T) {
	id := strings.Repeat("x", MaxIDLen)
	if _, err := Parse("user:" + id); err != nil {
		t.Errorf("id of MaxIDLen rejected: %v", err)
	}
}

func TestAllowsOther(t *testing.T) {
	lobby, _ := Parse("user:42")
	chat, _ := Parse("chat:9:10")
	tests := []struct {
		t     Topic
		user  string
		allow bool
		other string
	}{
		{lobby, "42", true, ""},
		{lobby, "43", false, ""},
		{lobby, "", false, ""},
		{chat, "9", true, "10"},
		{chat, "10", true, "9"},
		{chat, "11", false, ""},
		{chat, "", false, ""},
		{Topic{}, "", false, ""},
		{Topic{Kind: Chat}, "", false, ""},
	}
	for _, tt := range tests {
		if got := tt.t.Allows(tt.user); got != tt.allow {
			t.Errorf("%v.Allows(%q) = %v, want %v", tt.t, tt.user, got, tt.allow)
		}
		if got := tt.t.Other(tt.user); got != tt.other {
			t.Errorf("%v.Other(%q) = %q, want %q", tt.t, tt.user, got, tt.other)
		}
	}
	if Lobby.String() != "lobby" || Chat.String() != "chat" || Kind(0).String() != "invalid" {
		t.Error("Kind.String")
	}
}

func FuzzChat(f *testing.F) {
	f.Add("9", "10")
	f.Add("alice", "bob")
	f.Fuzz(func(t *testing.T, a, b string) {
		name := ChatName(a, b)
		if ChatName(b, a) != name {
			t.Fatalf("ChatName not symmetric for %q, %q", a, b)
		}
		if Less(a, b) && Less(b, a) {
			t.Fatalf("Less(%q, %q) both ways", a, b)
		}
		got, err := Parse(name)
		if ValidID(a) != nil || ValidID(b) != nil {
			if err == nil && !strings.Contains(a+b, ":") {
				t.Fatalf("Parse(%q) accepted invalid ids", name)
			}
			return
		}
		if a == b {
			if !errors.Is(err, ErrSelfChat) {
				t.Fatalf("Parse(%q) = %v, want ErrSelfChat", name, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Parse(ChatName(%q, %q)) = %v", a, b, err)
		}
		if got.Kind != Chat || !got.Allows(a) || !got.Allows(b) || got.Other(a) != b || got.String() != name {
			t.Fatalf("Parse(%q) = %+v", name, got)
		}
	})
}
