package flatjson_test

import (
	"strings"
	"testing"

	"github.com/elchat/elchat/internal/flatjson"
)

func TestMembers(t *testing.T) {
	for _, tc := range []struct {
		in    string
		value flatjson.Value
		want  string // key=raw pairs joined by ";", or "!" for false
	}{
		{`{}`, flatjson.Scalar, ""},
		{` { "a" : "x" , "b":-1.5e3,"c":true,"d":null } `, flatjson.Scalar, `a="x";b=-1.5e3;c=true;d=null`},
		{`{"a":"x","a":"y"}`, flatjson.String, `a="x";a="y"`},
		{`{"a":1}`, flatjson.String, "!"},          // not a string
		{`{"a":"\n"}`, flatjson.Scalar, "!"},       // escape
		{"{\"a\":\"\xff\"}", flatjson.Scalar, "!"}, // invalid UTF-8
		{"{\"a\":\"\t\"}", flatjson.Scalar, "!"},   // control character
		{`{"a":{}}`, flatjson.Scalar, "!"},         // nested
		{`{"a":01}`, flatjson.Scalar, "!"},         // leading zero
		{`{"a":1.}`, flatjson.Scalar, "!"},
		{`{"a":1,}`, flatjson.Scalar, "!"},
		{`{"a":1} x`, flatjson.Scalar, "!"},
		{`{"a" 1}`, flatjson.Scalar, "!"},
		{`["a"]`, flatjson.Scalar, "!"},
		{`{"a":tru}`, flatjson.Scalar, "!"},
		{`{"a":"x"`, flatjson.Scalar, "!"},
	} {
		var got []string
		ok := flatjson.Members([]byte(tc.in), tc.value, func(k, raw []byte) bool {
			got = append(got, string(k)+"="+string(raw))
			return true
		})
		s := strings.Join(got, ";")
		if !ok {
			s = "!"
		}
		if s != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, s, tc.want)
		}
	}
	// A member that refuses ends the walk with false.
	if flatjson.Members([]byte(`{"a":1,"b":2}`), flatjson.Scalar, func(k, _ []byte) bool { return string(k) != "b" }) {
		t.Error("a refusing member did not make Members false")
	}
}
