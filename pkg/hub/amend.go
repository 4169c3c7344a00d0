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
	payload, err := c.hub.amend(ch.topic, a, del, c)
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
		return
	}
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", payload)
}

// amend stores an edit or delete and broadcasts it to the chat (and to
// the other side's lobby when they are not in the chat). It returns the
// reply: the updated message, or {id, room, seq} of a delete.
func (h *Hub) amend(t topic.Topic, a store.Amend, del bool, origin *Client) ([]byte, error) {
	ctx, cancel := h.ctx()
	var (
		m   store.Message
		err error
	)
	if del {
		m, err = h.cfg.Store.DeleteMessage(ctx, a)
	} else {
		m, err = h.cfg.Store.EditMessage(ctx, a)
	}
	cancel()
	if err != nil {
		return nil, err
	}
	if t.Kind == 0 {
		if t, err = topic.Parse(m.Room); err != nil {
			return nil, err
		}
	}
	event := "message_updated"
	var payload []byte
	if del {
		event = "message_deleted"
		payload = append([]byte(`{"id":`), strconv.FormatInt(m.ID, 10)...)
		payload = append(append(payload, `,"room":`...), phx.AppendString(nil, m.Room)...)
		payload = append(append(payload, `,"seq":`...), strconv.FormatInt(m.Seq, 10)...)
		payload = append(payload, '}')
	} else if payload, err = json.Marshal(m); err != nil {
		return nil, err
	}
	room := t.String()
	h.broadcastFrom(room, event, payload, origin, nil)
	// The lobby follows: an unread count or a last message shown there may
	// have changed.
	for _, u := range [...]string{m.UserID, m.OpponentID} {
		if present, _ := h.cfg.Presence.Present(context.Background(), room, u); !present {
			h.Broadcast(topic.LobbyName(u), event, payload)
		}
	}
	return payload, nil
}

// ModerateMessage edits (body set) or deletes (del) any message by id, for
// the HTTP API. It returns what the chat's clients were sent.
func (h *Hub) ModerateMessage(id int64, body string, del bool) ([]byte, error) {
	if !del {
		if reason := h.validateBody(body); reason != "" {
			return nil, &InputError{reason}
		}
	}
	out, err := h.amend(topic.Topic{}, store.Amend{ID: id, Body: body}, del, nil)
	if errors.Is(err, store.ErrRefused) {
		return nil, &InputError{storeReason(err)}
	}
	return out, err
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
