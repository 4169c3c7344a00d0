package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/elchat/elchat/pkg/hub"
)

// Moderation: redact or delete any message, block on a user's behalf, ban.
//
//	PATCH  /api/v1/messages/{id}               {"body": "..."}   redact (edit) a message
//	DELETE /api/v1/messages/{id}                                 delete a message (tombstone)
//	PUT    /api/v1/users/{id}/blocks/{other}                     {id} blocks {other}
//	DELETE /api/v1/users/{id}/blocks/{other}                     {id} unblocks {other}
//	PUT    /api/v1/users/{id}/ban              {"until": RFC 3339, "reason": "..."} (both optional)
//	DELETE /api/v1/users/{id}/ban                                lift the ban
func (a *Handler) moderationRoutes() {
	a.mux.HandleFunc("PATCH /api/v1/messages/{id}", a.editMessage)
	a.mux.HandleFunc("DELETE /api/v1/messages/{id}", a.deleteMessage)
	a.mux.HandleFunc("PUT /api/v1/users/{id}/blocks/{other}", a.block(true))
	a.mux.HandleFunc("DELETE /api/v1/users/{id}/blocks/{other}", a.block(false))
	a.mux.HandleFunc("PUT /api/v1/users/{id}/ban", a.ban)
	a.mux.HandleFunc("DELETE /api/v1/users/{id}/ban", a.unban)
}

func messageID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "id must be a message id")
		return 0, false
	}
	return id, true
}

func (a *Handler) editMessage(w http.ResponseWriter, r *http.Request) {
	id, ok := messageID(w, r)
	if !ok {
		return
	}
	var req struct {
		Body string `json:"body"`
	}
	if !decode(w, r, &req) {
		return
	}
	a.moderate(w, id, req.Body, false)
}

func (a *Handler) deleteMessage(w http.ResponseWriter, r *http.Request) {
	if id, ok := messageID(w, r); ok {
		a.moderate(w, id, "", true)
	}
}

func (a *Handler) moderate(w http.ResponseWriter, id int64, body string, del bool) {
	out, err := a.hub.ModerateMessage(id, body, del)
	if done(w, err) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(out) //nolint:errcheck
	}
}

// done answers a failed hub call and reports whether err was nil.
func done(w http.ResponseWriter, err error) bool {
	var in *hub.InputError
	switch {
	case errors.As(err, &in) && in.Reason == "message not found":
		writeError(w, http.StatusNotFound, in.Reason)
	case errors.As(err, &in):
		writeError(w, http.StatusBadRequest, in.Reason)
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "store unavailable")
	default:
		return true
	}
	return false
}

func (a *Handler) block(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if done(w, a.hub.SetBlock(r.PathValue("id"), r.PathValue("other"), on)) {
			writeJSON(w, http.StatusOK, map[string]any{"user_id": r.PathValue("id"), "blocked_user_id": r.PathValue("other"), "blocked": on})
		}
	}
}

func (a *Handler) ban(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Until  *time.Time `json:"until"`
		Reason string     `json:"reason"`
	}
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	if len(req.Reason) > 100 {
		writeError(w, http.StatusBadRequest, "reason longer than 100 bytes (it must fit a close frame)")
		return
	}
	var until time.Time
	if req.Until != nil {
		until = *req.Until
	}
	if done(w, a.hub.Ban(r.PathValue("id"), until, req.Reason)) {
		writeJSON(w, http.StatusOK, map[string]any{"user_id": r.PathValue("id"), "banned": true, "until": req.Until})
	}
}

func (a *Handler) unban(w http.ResponseWriter, r *http.Request) {
	if done(w, a.hub.Unban(r.PathValue("id"))) {
		writeJSON(w, http.StatusOK, map[string]any{"user_id": r.PathValue("id"), "banned": false})
	}
}
