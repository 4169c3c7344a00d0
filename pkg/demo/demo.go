// Package demo serves ElChat's development chat page: a small browser client
// written against the unmodified phoenix.js library, a list of demo users
// with their online state, and a token endpoint that signs in as any of
// them. It exists for `elchat serve --dev` only: the token endpoint lets
// anybody act as a demo user, so a node that mounts it must never face the
// internet.
//
// Everything is embedded in the binary (no CDN, no build step): the page,
// its script and style sheet, and phoenix 1.8.16's ESM build (MIT, see
// static/PHOENIX-LICENSE.md).
package demo

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"time"

	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/topic"
)

//go:embed static
var staticFiles embed.FS

// User is one demo account.
type User struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Online bool   `json:"online"`
}

// Users are the accounts the demo page offers. Their ids are what the
// tokens carry as sub, so they also name the lobbies (user:1) and chats
// (chat:1:2).
var Users = []User{
	{ID: "1", Name: "alice"},
	{ID: "2", Name: "bob"},
	{ID: "3", Name: "carol"},
	{ID: "4", Name: "dave"},
	{ID: "5", Name: "erin"},
}

// TokenTTL is the lifetime of the tokens the demo hands out.
const TokenTTL = 12 * time.Hour

// presenceTimeout bounds one online lookup, so a slow cluster presence
// cannot hang the contact list.
const presenceTimeout = 2 * time.Second

type handler struct {
	secret   []byte       // immutable
	presence hub.Presence // immutable; nil: everybody offline
	mux      *http.ServeMux
}

// New returns the demo's handler. secret signs the tokens (the node's
// ELCHAT_SECRET, so the node accepts them); presence answers who is online
// (a user is online when present in their own lobby, user:ID). Mount it at
// "/": it serves GET /, GET /demo/users, GET /demo/token?user=ID and the
// static files under /demo/, and answers 404 for everything else.
func New(secret []byte, presence hub.Presence) http.Handler {
	h := &handler{secret: append([]byte(nil), secret...), presence: presence, mux: http.NewServeMux()}
	sub, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	h.mux.HandleFunc("GET /{$}", h.index)
	h.mux.HandleFunc("GET /demo/users", h.users)
	h.mux.HandleFunc("GET /demo/token", h.token)
	h.mux.Handle("GET /demo/", noDirs(http.StripPrefix("/demo/", files)))
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	h.mux.ServeHTTP(w, r)
}

func (h *handler) index(w http.ResponseWriter, r *http.Request) {
	page, err := staticFiles.ReadFile("static/index.html")
	if err != nil {
		http.Error(w, "demo page missing", http.StatusInternalServerError)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	// Scripts and styles come from this node only; the socket is same-origin.
	hdr.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'")
	w.Write(page) //nolint:errcheck // the client went away
}

func (h *handler) users(w http.ResponseWriter, r *http.Request) {
	list := make([]User, len(Users))
	copy(list, Users)
	if h.presence != nil {
		for i := range list {
			ctx, cancel := context.WithTimeout(r.Context(), presenceTimeout)
			online, err := h.presence.Present(ctx, topic.LobbyName(list[i].ID), list[i].ID)
			cancel()
			list[i].Online = err == nil && online
		}
	}
	writeJSON(w, http.StatusOK, list)
}

func (h *handler) token(w http.ResponseWriter, r *http.Request) {
	u, ok := lookup(r.URL.Query().Get("user"))
	if !ok {
		http.Error(w, "no such demo user", http.StatusNotFound)
		return
	}
	tok, err := auth.Mint(h.secret, u.ID, u.Name, TokenTTL)
	if err != nil {
		http.Error(w, "cannot sign a token", http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Token string `json:"token"`
		User  User   `json:"user"`
	}{tok, u})
}

func lookup(id string) (User, bool) {
	for _, u := range Users {
		if u.ID == id {
			return u, true
		}
	}
	return User{}, false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client went away
}

// noDirs answers 404 for directory paths instead of listing them.
func noDirs(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == "" || p[len(p)-1] == '/' {
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}
