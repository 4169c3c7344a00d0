package server

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"strings"
)

// bearerPrefix marks the subprotocol phoenix.js uses for its authToken
// option: "base64url.bearer.phx." + btoa(token) without padding.
const bearerPrefix = "base64url.bearer.phx."

// handshake collects what the upgrade callbacks see; one per upgrade.
type handshake struct {
	path     string
	vsn      string
	token    string
	origin   string
	hasOrig  bool
	host     string
	phoenix  bool // "phoenix" subprotocol offered: it must be echoed
	bearer   string
	badQuery bool
}

func (hs *handshake) onRequest(uri []byte) error {
	path, query, _ := bytes.Cut(uri, []byte{'?'})
	hs.path = string(path)
	q, err := url.ParseQuery(string(query))
	if err != nil {
		hs.badQuery = true
		return nil
	}
	// phoenix.js appends vsn last and Plug keeps the last value; so do we.
	if v := q["vsn"]; len(v) > 0 {
		hs.vsn = v[len(v)-1]
	}
	hs.token = q.Get("token")
	return nil
}

func (hs *handshake) onHost(host []byte) error {
	hs.host = string(host)
	return nil
}

// sameOrigin reports whether the page came from this very host (the demo
// page, or an app served through the same proxy). A browser sets both
// headers itself, so a page on another site cannot fake this.
func (hs *handshake) sameOrigin() bool {
	u, err := url.Parse(hs.origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, hs.host)
}

func (hs *handshake) onHeader(key, value []byte) error {
	if strings.EqualFold(string(key), "Origin") {
		hs.origin = string(value)
		hs.hasOrig = true
	}
	return nil
}

// protocols picks "phoenix" from the offered subprotocols and takes the
// bearer token out of the list, as Phoenix does.
func (hs *handshake) protocols(value []byte) (string, bool) {
	for _, p := range strings.Split(string(value), ",") {
		p = strings.TrimSpace(p)
		switch {
		case p == "phoenix":
			hs.phoenix = true
		case strings.HasPrefix(p, bearerPrefix):
			enc := p[len(bearerPrefix):]
			tok, err := base64.RawStdEncoding.DecodeString(enc)
			if err != nil {
				tok, err = base64.RawURLEncoding.DecodeString(enc)
			}
			if err == nil {
				hs.bearer = string(tok)
			}
		}
	}
	if hs.phoenix {
		return "phoenix", true
	}
	return "", false
}

// authToken returns the token from the subprotocol, else from the query.
func (hs *handshake) authToken() string {
	if hs.bearer != "" {
		return hs.bearer
	}
	return hs.token
}

// Origins is an allow-list of browser origins.
type Origins struct {
	any     bool
	allowed map[string]struct{}
}

// ParseOrigins reads a comma-separated list; "*" allows every origin and is
// honoured only when given explicitly.
func ParseOrigins(list string) Origins {
	o := Origins{allowed: make(map[string]struct{})}
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimRight(strings.TrimSpace(s), "/")
		switch s {
		case "":
		case "*":
			o.any = true
		default:
			o.allowed[strings.ToLower(s)] = struct{}{}
		}
	}
	return o
}

// Allow reports whether a browser from origin may connect.
func (o Origins) Allow(origin string) bool {
	if o.any {
		return true
	}
	_, ok := o.allowed[strings.ToLower(strings.TrimRight(origin, "/"))]
	return ok
}
