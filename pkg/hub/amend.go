package hub

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/topic"
)

// Edits, deletes and the change cursor.
//
// Every change of a chat (a new message, an edit, a delete, a read mark)
// gets the next seq of the store's change sequence, and every stored
// message carries the seq of its latest change. A client that remembers
// the highest seq it saw joins with {"since_seq": N} and gets every change
// after it, in seq order: each changed message once in its current state
// (a deleted one as a tombstone) and each reader's newest read mark. A cut
// page says has_more; "seq" in the reply is where to continue from.

// DefaultEditWindow is how long an author may edit or delete a message.
const DefaultEditWindow = 15 * time.Minute

// editMessage handles edit_message {id, body} on the request stage.
func (c *Client) editMessage(f *phx.Frame) {
	ch, ok := c.chatChannel(f)
	if !ok {
		return
	}
	var p struct {
		ID   json.Number `json:"id"`
		Body *string     `json:"body"`
	}
	if err := json.Unmarshal(f.Payload, &p); err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "id must be a message id and body a string")
		return
	}
	id, err := strconv.ParseInt(p.ID.String(), 10, 64)
	if err != nil || id <= 0 {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "id must be a message id")
		return
	}
	if p.Body == nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "body must be a string")
		return
	}
	if reason := c.hub.validateBody(*p.Body); reason != "" {
		c.replyError(ch.joinRef, f.Ref, f.Topic, reason)
		return
	}
	c.amendReply(ch, f, store.Amend{ID: id, Body: *p.Body}, false)
}

// deleteMessage handles delete_message {id} on the request stage.
func (c *Client) deleteMessage(f *phx.Frame) {
	ch, ok := c.chatChannel(f)
	if !ok {
		return
	}
	var p struct {
		ID json.Number `json:"id"`
	}
	if err := json.Unmarshal(f.Payload, &p); err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "id must be a message id")
		return
	}
	id, err := strconv.ParseInt(p.ID.String(), 10, 64)
	if err != nil || id <= 0 {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "id must be a message id")
		return
	}
	c.amendReply(ch, f, store.Amend{ID: id}, true)
}

// amendReply applies an author's edit or delete in ch and answers f: the
// message must be the author's own, of this chat, and inside the edit
// window.
func (c *Client) amendReply(ch channel, f *phx.Frame, a store.Amend, del bool) {
	a.Room, a.Author = ch.name, c.user
	if w := c.hub.cfg.EditWindow; w > 0 {
		a.NotBefore = time.Now().Add(-w)
	}
	m, event, payload, err := c.hub.amendStore(a, del)
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
		return
	}
	// The acknowledgement precedes the broadcast, as for new_message.
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", payload)
	c.hub.announceAmend(ch.topic, m, event, payload, c)
}

// amendStore stores an edit or delete and returns the message, the event
// to broadcast and its payload: the updated message, or {id, room, seq} of
// a delete.
func (h *Hub) amendStore(a store.Amend, del bool) (m store.Message, event string, payload []byte, err error) {
	ctx, cancel := h.ctx()
	if del {
		m, err = h.cfg.Store.DeleteMessage(ctx, a)
	} else {
		m, err = h.cfg.Store.EditMessage(ctx, a)
	}
	cancel()
	if err != nil {
		return m, "", nil, err
	}
	if !del {
		payload, err = encodeMessage(&m)
		return m, "message_updated", payload, err
	}
	payload = append([]byte(`{"id":`), strconv.FormatInt(m.ID, 10)...)
	payload = append(append(payload, `,"room":`...), phx.AppendString(nil, m.Room)...)
	payload = append(append(payload, `,"seq":`...), strconv.FormatInt(m.Seq, 10)...)
	return m, "message_deleted", append(payload, '}'), nil
}

// announceAmend broadcasts a stored edit or delete to its chat, and to
// each side's lobby when that side is not in the chat: an unread count or
// a last message shown there may have changed.
func (h *Hub) announceAmend(t topic.Topic, m store.Message, event string, payload []byte, origin *Client) {
	room := t.String()
	h.broadcastFrom(room, event, payload, origin, nil)
	for _, u := range [...]string{m.UserID, m.OpponentID} {
		if present, _ := h.cfg.Presence.Present(context.Background(), room, u); !present {
			h.Broadcast(topic.LobbyName(u), event, payload)
		}
	}
}

// ModerateMessage edits (body set) or deletes (del) any message by id, for
// the HTTP API. It returns what the chat's clients were sent.
func (h *Hub) ModerateMessage(id int64, body string, del bool) ([]byte, error) {
	if !del {
		if reason := h.validateBody(body); reason != "" {
			return nil, &InputError{reason}
		}
	}
	m, event, payload, err := h.amendStore(store.Amend{ID: id, Body: body}, del)
	if errors.Is(err, store.ErrRefused) {
		return nil, &InputError{storeReason(err)}
	}
	if err != nil {
		return nil, err
	}
	t, err := topic.Parse(m.Room)
	if err != nil {
		return nil, err // a stored room is always a topic
	}
	h.announceAmend(t, m, event, payload, nil)
	return payload, nil
}

// changes is a page of up to lim changes of room after seq after.
func (c *Client) changes(ctx context.Context, room string, after int64, lim int) ([]byte, error) {
	page, _, err := c.hub.cfg.Store.Changes(ctx, room, after, lim+1)
	if err != nil {
		return nil, err
	}
	more := false
	if len(page) > lim {
		page, more = page[:lim], true
	}
	return encodeChanges(page, after, more, c.hub.cfg.MaxReplyBytes)
}

// encodeChanges renders {"changes":[...],"has_more":more,"seq":N} within
// limit bytes, keeping the oldest changes; N is the seq of the last change
// in the reply (after when there is none), where the client continues.
func encodeChanges(page []store.Change, after int64, more bool, limit int) ([]byte, error) {
	out := append(make([]byte, 0, 256), `{"changes":[`...)
	const tail = len(`],"has_more":false,"seq":`) + 20 + 1
	seq := after
	for i := range page {
		b, err := json.Marshal(&page[i])
		if err != nil {
			return nil, err
		}
		if len(out)+len(b)+1+tail > limit && i > 0 {
			more = true
			break
		}
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
		seq = page[i].Seq
	}
	out = append(out, `],"has_more":`...)
	out = strconv.AppendBool(out, more)
	out = append(out, `,"seq":`...)
	out = strconv.AppendInt(out, seq, 10)
	return append(out, '}'), nil
}
