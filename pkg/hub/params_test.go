package hub_test

import (
	"testing"

	"github.com/elchat/elchat/pkg/hub"
)

// TestQuickMessageParams: the payloads phoenix.js and the host-app
// snippets send take the quick path; the rest is left to encoding/json.
func TestQuickMessageParams(t *testing.T) {
	for _, tc := range []struct {
		in             string
		body, clientID string
		quick          bool
	}{
		{`{"body":"hi"}`, "hi", "", true},
		{`{"body":"hi","client_id":"c-1"}`, "hi", "c-1", true},
		{` { "client_id" : "c-1" , "body" : "héllo 👋" } `, "héllo 👋", "c-1", true},
		{`{"body":"say \"hi\""}`, "", "", false},   // escapes
		{`{"body":"a\u00e9"}`, "", "", false},      // escapes
		{`{"Body":"hi"}`, "", "", false},           // encoding/json folds case
		{`{"body":"a","body":"b"}`, "", "", false}, // duplicate: the last wins there
		{`{"body":"hi","extra":1}`, "", "", false}, // other keys
		{`{"body":null}`, "", "", false},           // refused there
		{`{"body":12}`, "", "", false},             // refused there
		{`{}`, "", "", false},                      // refused there
		{`{"client_id":"c"}`, "", "", false},       // refused there
		{"{\"body\":\"\xff\"}", "", "", false},     // invalid UTF-8: encoding/json replaces it
		{"{\"body\":\"a\tb\"}", "", "", false},     // control character: invalid JSON
		{`{"body":"hi"} x`, "", "", false},         // trailing bytes
		{`{"body":"hi",}`, "", "", false},          // trailing comma
		{`["body","hi"]`, "", "", false},           // not an object
	} {
		body, clientID, ok := hub.QuickMessageParams([]byte(tc.in))
		if ok != tc.quick || body != tc.body || clientID != tc.clientID {
			t.Errorf("%q: got %q %q %v, want %q %q %v", tc.in, body, clientID, ok, tc.body, tc.clientID, tc.quick)
		}
	}
}

// FuzzQuickMessageParams: whatever the quick reader accepts, encoding/json
// reads the same way.
func FuzzQuickMessageParams(f *testing.F) {
	for _, s := range []string{
		`{"body":"hi"}`, `{"body":"hi","client_id":"c-1"}`, ` {"client_id":"x" , "body":""}`,
		`{"body":"a\"b"}`, `{"BODY":"x"}`, `{"body":"a","body":"b"}`, "{\"body\":\"\xc3\"}", `{"body":"x"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		body, clientID, ok := hub.QuickMessageParams(p)
		if !ok {
			return
		}
		jb, jc, jok := hub.JSONMessageParams(p)
		if !jok || jb != body || jc != clientID {
			t.Fatalf("%q: quick read %q %q, encoding/json %q %q %v", p, body, clientID, jb, jc, jok)
		}
	})
}

// TestQuickMessageParamsAllocs: the quick path allocates the two strings
// it returns and nothing else.
func TestQuickMessageParamsAllocs(t *testing.T) {
	p := []byte(`{"body":"hello","client_id":"c-1"}`)
	if n := testing.AllocsPerRun(100, func() { hub.QuickMessageParams(p) }); n > 2 {
		t.Fatalf("%v allocations per payload, want at most 2", n)
	}
}
