package longpoll

import (
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/elchat/elchat/pkg/phx"
)

// FuzzSessionToken: parse never panics, accepts nothing it did not sign,
// and gives back what it signed.
func FuzzSessionToken(f *testing.F) {
	s := newSigner(testSecret)
	now := time.Unix(1_800_000_000, 0)
	f.Add(s.sign(ticket{Node: "n", Addr: "10.0.0.1:4000", Session: "s", User: "1", Expires: now.Unix() + 60}))
	f.Add("lp1.e30.AAAA")
	f.Add("lp1..")
	f.Fuzz(func(t *testing.T, tok string) {
		tk, err := s.parse(tok, now)
		if err != nil {
			return
		}
		// What verifies was signed by this key; signing what it says
		// again verifies and says the same.
		if back, err := s.parse(s.sign(tk), now); err != nil || back != tk {
			t.Fatalf("re-signed %+v: %+v %v", tk, back, err)
		}
	})
}

// FuzzJSONString: every UTF-8 string survives phx.AppendString and a JSON
// decoder, as poll answers rely on.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{`["1",null,"t","e",{"b":"\"\\\n"}]`, "\x00\x1f\u2028", "é✓"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		var back string
		if err := json.Unmarshal(phx.AppendString(nil, s), &back); err != nil || back != s {
			t.Fatalf("%q: got %q, %v", s, back, err)
		}
	})
}
