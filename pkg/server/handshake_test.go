package server

import (
	"net/url"
	"testing"
)

// agreesWithNetURL fails t unless parseQuery answers as url.ParseQuery
// does for the two values an upgrade reads, malformed queries included.
func agreesWithNetURL(t *testing.T, q string) {
	t.Helper()
	vsn, token, bad := parseQuery(q)
	v, err := url.ParseQuery(q)
	if bad != (err != nil) {
		t.Errorf("%q: bad = %v, url.ParseQuery err = %v", q, bad, err)
		return
	}
	if err != nil {
		return
	}
	wantVsn := ""
	if vs := v["vsn"]; len(vs) > 0 {
		wantVsn = vs[len(vs)-1]
	}
	if vsn != wantVsn || token != v.Get("token") {
		t.Errorf("%q: vsn %q token %q, want %q %q", q, vsn, token, wantVsn, v.Get("token"))
	}
}

func TestParseQueryAgreesWithNetURL(t *testing.T) {
	for _, q := range []string{
		"", "token=abc&vsn=2.0.0", "vsn=1.0.0&token=a&vsn=2.0.0", "token=a&token=b",
		"token=a%2Eb&vsn=2.0.0", "token=a+b", "token=%zz", "vsn=2.0.0;x=1", "&&token=x&",
		"token", "=x&token=y", "tok%65n=z", "token=a=b", "vsn=%", "x=%41&token=t",
	} {
		agreesWithNetURL(t, q)
	}
}

func FuzzParseQuery(f *testing.F) {
	f.Add("token=abc&vsn=2.0.0")
	f.Add("vsn=2.0.0;x=1")
	f.Fuzz(agreesWithNetURL)
}
