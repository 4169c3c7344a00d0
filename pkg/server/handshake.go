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
	hs.vsn, hs.token, hs.badQuery = parseQuery(string(query))
	return nil
}

// parseQuery reads vsn and token from a query string, by url.ParseQuery's
// rules (a ';' or a bad escape anywhere makes the whole query malformed)
// but without building its map on every upgrade. phoenix.js appends vsn
// last and Plug keeps the last value, so the last vsn counts; the first
// token does, as url.Values.Get has it.
func parseQuery(query string) (vsn, token string, bad bool) {
	seenToken := false
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		if strings.Contains(pair, ";") {
			bad = true
			continue
		}
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			bad = true
			continue
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			bad = true
			continue
		}
		switch {
		case key == "vsn":
			vsn = val
		case key == "token" && !seenToken:
			token, seenToken = val, true
		}
	}
	return vsn, token, bad
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
