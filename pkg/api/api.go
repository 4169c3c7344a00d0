// Package api is ElChat's server-to-server HTTP API: a host app's backend
// publishes events, posts messages on behalf of users and reads presence
// and unread counts. Every request carries the API key as a bearer token.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/topic"
	"github.com/elchat/elchat/pkg/webhook"
)

// maxBody bounds request bodies; messages are small.
const maxBody = 64 << 10

// Handler serves /api/v1/.
type Handler struct {
	key []byte // immutable
	hub *hub.Hub
	mux *http.ServeMux
}

// New returns the API; an empty key disables it (every request gets 404),
// so a node never exposes an unauthenticated API by accident.
func New(key string, h *hub.Hub) *Handler {
	a := &Handler{key: []byte(key), hub: h, mux: http.NewServeMux()}
	a.mux.HandleFunc("POST /api/v1/publish", a.publish)
	a.mux.HandleFunc("POST /api/v1/messages", a.postMessage)
	a.mux.HandleFunc("GET /api/v1/presence/{topic}", a.presence)
	a.mux.HandleFunc("GET /api/v1/users/{id}/unread", a.unread)
	a.mux.HandleFunc("GET /api/v1/users/{id}/online", a.online)
	a.moderationRoutes()
	return a
}

func (a *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(a.key) == 0 {
		http.NotFound(w, r)
		return
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), a.key) != 1 {
		writeError(w, http.StatusUnauthorized, "missing or wrong API key")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	a.mux.ServeHTTP(w, r)
}

func (a *Handler) publish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Topic   string          `json:"topic"`
		Event   string          `json:"event"`
		Payload json.RawMessage `json:"payload"`
	}
	if !decode(w, r, &req) {
		return
	}
	if _, err := topic.Parse(req.Topic); err != nil {
		writeError(w, http.StatusBadRequest, "topic: "+err.Error())
		return
	}
	// The same rule as the Redis ingresses: clients trust ElChat's own
	// events to come from ElChat.
	if err := hub.ValidHostEvent(req.Topic, req.Event); err != nil {
		writeError(w, http.StatusBadRequest, "event must be set and not a reserved name: "+err.Error())
		return
	}
	if len(req.Payload) == 0 {
		req.Payload = json.RawMessage("{}")
	}
	if req.Payload[0] != '{' {
		writeError(w, http.StatusBadRequest, "payload must be a JSON object")
		return
	}
	a.hub.Broadcast(req.Topic, req.Event, req.Payload)
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "published"})
}

func (a *Handler) postMessage(w http.ResponseWriter, r *http.Request) {
	var req struct {
		From     string `json:"from"`
		To       string `json:"to"`
		Body     string `json:"body"`
		ClientID string `json:"client_id"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.From == "" || req.To == "" || req.From == req.To {
		writeError(w, http.StatusBadRequest, "from and to must be two different user ids")
		return
	}
	t, err := topic.Parse(topic.ChatName(req.From, req.To))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	msg, err := a.hub.PostAndDeliver(req.From, t, req.Body, req.ClientID)
	var in *hub.InputError
	switch {
	case errors.As(err, &in):
		writeError(w, http.StatusBadRequest, in.Reason)
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "store unavailable")
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		w.Write(msg) //nolint:errcheck
	}
}

func (a *Handler) presence(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("topic")
	if _, err := topic.Parse(name); err != nil {
		writeError(w, http.StatusBadRequest, "topic: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	state, err := a.hub.Presence().List(ctx, name)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "presence unavailable")
		return
	}
	out := make(map[string]map[string][]hub.Meta, len(state))
	for k, metas := range state {
		out[k] = map[string][]hub.Meta{"metas": metas}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Handler) unread(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	chats, err := a.hub.Unread(ctx, r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "store unavailable")
		return
	}
	if chats == nil {
		chats = []store.UnreadChat{}
	}
	total := 0
	for _, c := range chats {
		total += c.Unread
	}
	writeJSON(w, http.StatusOK, map[string]any{"total": total, "chats": chats})
}

func (a *Handler) online(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	on, err := a.hub.Presence().Present(ctx, topic.LobbyName(id), id)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "presence unavailable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"user_id": id, "online": on})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// DeadEvents serves GET /api/v1/webhooks/dead from ob: the webhook events
// given up on, newest first (?limit=N, default 100, at most 1000). Each is
// the body that was POSTed plus state, attempts, last_error and
// updated_at. POST /api/v1/webhooks/dead/{id}/retry gives one a fresh set
// of attempts (after the receiver is fixed). Without a call (webhooks
// off) both paths are 404.
func (a *Handler) DeadEvents(ob store.Outbox) {
	a.mux.HandleFunc("GET /api/v1/webhooks/dead", func(w http.ResponseWriter, r *http.Request) {
		limit := 100
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				writeError(w, http.StatusBadRequest, "limit must be a positive integer")
				return
			}
			limit = n
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		evs, err := ob.DeadEvents(ctx, limit)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "store unavailable")
			return
		}
		type dead struct {
			webhook.Body
			State     string    `json:"state"`
			Attempts  int       `json:"attempts"`
			LastError string    `json:"last_error"`
			UpdatedAt time.Time `json:"updated_at"`
		}
		out := make([]dead, len(evs))
		for i, e := range evs {
			out[i] = dead{Body: webhook.Body{ID: webhook.EventID(e.ID), Type: e.Type, UserID: e.UserID, DueAt: e.DueAt, Messages: e.Messages},
				State: e.State, Attempts: e.Attempts, LastError: e.LastError, UpdatedAt: e.UpdatedAt}
		}
		writeJSON(w, http.StatusOK, map[string]any{"events": out})
	})
	a.mux.HandleFunc("POST /api/v1/webhooks/dead/{id}/retry", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(strings.TrimPrefix(r.PathValue("id"), "evt_"), 10, 64)
		if err != nil || id <= 0 {
			writeError(w, http.StatusBadRequest, "id must be an event id (evt_N)")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		ok, err := ob.RequeueEvent(ctx, id)
		switch {
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, "store unavailable")
		case !ok:
			writeError(w, http.StatusNotFound, "no dead event with that id")
		default:
			writeJSON(w, http.StatusAccepted, map[string]string{"id": webhook.EventID(id), "state": store.EventSending})
		}
	})
}
