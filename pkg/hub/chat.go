package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/topic"
)

// lobbyJoin reads the user's unread chats for the lobby's join reply.
func (c *Client) lobbyJoin() ([]byte, error) {
	ctx, cancel := c.hub.ctx()
	defer cancel()
	unread, err := c.hub.cfg.Store.Unread(ctx, c.user)
	if err != nil {
		return nil, err
	}
	if unread, err = c.hub.withoutBlocked(ctx, c.user, unread); err != nil {
		return nil, err
	}
	return encodeUnread(unread, c.hub.cfg.MaxReplyBytes)
}

// chatJoin reads a chat's join reply: the changes after since_seq, what
// came after last_id, or the newest page of history.
func (c *Client) chatJoin(t topic.Topic, lastID, sinceSeq *int64) ([]byte, error) {
	ctx, cancel := c.hub.ctx()
	defer cancel()
	if sinceSeq != nil {
		return c.changes(ctx, t.String(), c.hub.catchUpSeq(*sinceSeq), c.hub.cfg.CatchUpLimit)
	}
	if lastID != nil {
		return c.since(ctx, t.String(), c.hub.catchUpFrom(*lastID), c.hub.cfg.CatchUpLimit)
	}
	return c.history(ctx, t.String(), 0)
}

// since is a page of up to lim messages after after, oldest first.
func (c *Client) since(ctx context.Context, room string, after int64, lim int) ([]byte, error) {
	msgs, err := c.hub.cfg.Store.Since(ctx, room, after, lim+1)
	if err != nil {
		return nil, err
	}
	more := false
	if len(msgs) > lim {
		msgs, more = msgs[:lim], true
	}
	return encodePage(msgs, more, false, c.hub.cfg.MaxReplyBytes)
}

// history is the page of messages before before (0: the newest), oldest
// first.
func (c *Client) history(ctx context.Context, room string, before int64) ([]byte, error) {
	lim := c.hub.cfg.HistoryLimit
	msgs, err := c.hub.cfg.Store.History(ctx, room, before, lim+1)
	if err != nil {
		return nil, err
	}
	more := false
	if len(msgs) > lim {
		msgs, more = msgs[1:], true // oldest first: the extra one is the oldest
	}
	return encodePage(msgs, more, true, c.hub.cfg.MaxReplyBytes)
}

// typingLocked relays a typing notice to the other side, here and on the
// other nodes. It waits on nothing.
func (c *Client) typingLocked(f *phx.Frame) {
	ch, ok := c.channelLocked(f)
	if !ok {
		return
	}
	if ch.topic.Kind != topic.Chat {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "unknown event")
		return
	}
	if silenced, known := c.hub.rules.silenced(ch.topic.A, ch.topic.B); silenced || !known {
		// Nobody learns that a blocked user is typing, nor a blocker. A
		// chat join caches both users' blocks; if they were evicted since,
		// this notice is dropped (it cannot wait for the store) and they
		// are read again for the next one.
		if !known {
			c.hub.loadLater(ch.topic)
		}
		c.reply(ch.joinRef, f.Ref, f.Topic, "ok", nil)
		return
	}
	payload := append([]byte(`{"user_id":`), phx.AppendString(nil, c.user)...)
	payload = append(append(payload, `,"name":`...), phx.AppendString(nil, c.name)...)
	payload = append(payload, '}')
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", nil)
	c.hub.broadcastFrom(ch.name, "typing", payload, nil, c)
}

// chatChannel is channel for the chat-only events.
func (c *Client) chatChannel(f *phx.Frame) (channel, bool) {
	ch, ok := c.channel(f)
	if ok && ch.topic.Kind != topic.Chat {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "unknown event")
		return channel{}, false
	}
	return ch, ok
}

// newMessage stores a message on the request stage, waiting for its
// group commit; stores that can commit asynchronously take
// newMessageLocked instead.
func (c *Client) newMessage(f *phx.Frame) {
	ch, ok := c.chatChannel(f)
	if !ok {
		return
	}
	body, clientID, ok := c.messageParams(ch, f)
	if !ok {
		return
	}
	if reason, err := c.hub.blockReason(ch.topic, c.user); err != nil || reason != "" {
		if err != nil {
			reason = storeReason(err)
		}
		c.replyError(ch.joinRef, f.Ref, f.Topic, reason)
		return
	}
	msg, err := c.hub.save(c.user, ch.topic, body, clientID)
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
		return
	}
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", msg)
	c.hub.deliver(ch.topic, c.user, msg, c)
}

// newMessageLocked queues the message for the next group commit without
// any goroutine waiting for it: the client stays busy (its later frames
// queue) until the commit's answer resumes it on the stage, which then
// replies and delivers. So the number of messages in one commit is not
// bounded by the stage's pool, and a message costs no hand-off before its
// commit.
func (c *Client) newMessageLocked(f *phx.Frame) {
	ch, ok := c.channelLocked(f)
	if !ok {
		return
	}
	if ch.topic.Kind != topic.Chat {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "unknown event")
		return
	}
	body, clientID, ok := c.messageParams(ch, f)
	if !ok {
		return
	}
	h := c.hub
	// Blocks are cached per node; on the event loop only the cache may
	// answer, a miss waits for the store on the stage.
	reason, known := h.blockReasonLocal(ch.topic, c.user)
	if !known {
		c.stageMessageLocked(f)
		return
	}
	if reason != "" {
		c.replyError(ch.joinRef, f.Ref, f.Topic, reason)
		return
	}
	m := store.NewMessage{Room: ch.name, UserID: c.user, OpponentID: ch.topic.Other(c.user), Body: body, ClientID: clientID}
	if h.cfg.NotifyAfter > 0 {
		// The webhook outbox needs to know now whether the recipient is
		// in the chat; on the event loop only memory may answer.
		lp, ok := h.cfg.Presence.(localPresence)
		present, known := false, false
		if ok {
			present, known = lp.PresentLocal(m.Room, m.OpponentID)
		}
		if !known {
			c.stageMessageLocked(f)
			return
		}
		if !present {
			m.NotifyAfter = h.cfg.NotifyAfter
		}
	}
	ref := f.Ref
	ctx := h.messageCtx()
	wasSched := c.sched
	c.suspendLocked()
	queued := h.cfg.Store.(store.AsyncSaver).SaveAsync(ctx, m, func(msg store.Message, _ bool, err error) {
		c.resume(func(c *Client) { c.messageStored(ch, ref, msg, err) })
	})
	if queued {
		return
	}
	// The commit queue is full: wait for it on the stage instead.
	c.sched, c.suspended = wasSched, false
	c.hub.stage.unparkIdle()
	c.stageMessageLocked(f)
}

// stageMessageLocked hands a message the event loop cannot take further
// (it would wait on the store or the network) to the request stage.
func (c *Client) stageMessageLocked(f *phx.Frame) {
	g := *f
	g.Payload = bytes.Clone(f.Payload) // f's bytes are the transport's read buffer
	c.enqueueLocked(func(c *Client) { c.newMessage(&g) }, false)
}

// messageStored answers a message whose commit ended, on the stage.
func (c *Client) messageStored(ch channel, ref string, msg store.Message, err error) {
	if err != nil {
		c.replyError(ch.joinRef, ref, ch.name, storeReason(err))
		return
	}
	b, err := encodeMessage(&msg)
	if err != nil {
		c.replyError(ch.joinRef, ref, ch.name, "store error")
		return
	}
	c.reply(ch.joinRef, ref, ch.name, "ok", b)
	c.hub.deliver(ch.topic, c.user, b, c)
}

// messageParams reads and checks a new_message payload, answering the
// client when it is refused.
func (c *Client) messageParams(ch channel, f *phx.Frame) (body, clientID string, ok bool) {
	body, clientID, ok = quickMessageParams(f.Payload)
	if !ok {
		if body, clientID, ok = jsonMessageParams(f.Payload); !ok {
			c.replyError(ch.joinRef, f.Ref, f.Topic, "body must be a string")
			return "", "", false
		}
	}
	if reason := c.hub.validateBody(body); reason != "" {
		c.replyError(ch.joinRef, f.Ref, f.Topic, reason)
		return "", "", false
	}
	if len(clientID) > 128 {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "client_id longer than 128 bytes")
		return "", "", false
	}
	return body, clientID, true
}

// jsonMessageParams reads any new_message payload encoding/json accepts;
// ok is false when it is not an object with a string body.
func jsonMessageParams(payload []byte) (body, clientID string, ok bool) {
	var p struct {
		Body     *string `json:"body"`
		ClientID string  `json:"client_id"`
	}
	if err := json.Unmarshal(payload, &p); err != nil || p.Body == nil {
		return "", "", false
	}
	return *p.Body, p.ClientID, true
}

func (h *Hub) validateBody(body string) string {
	switch {
	case strings.TrimSpace(body) == "":
		return "body is empty"
	case len(body) > h.cfg.MaxBodyBytes:
		return fmt.Sprintf("body longer than %d bytes", h.cfg.MaxBodyBytes)
	case !utf8.ValidString(body):
		return "body is not valid UTF-8"
	case strings.IndexByte(body, 0) >= 0:
		return "body contains a NUL character"
	}
	return ""
}

// save stores a message from user in chat t and returns it encoded. It is
// acknowledged (returned) only once stored; delivery is the caller's next
// step (see deliver), so an acknowledgement always precedes the broadcast
// on the sender's connection.
func (h *Hub) save(user string, t topic.Topic, body, clientID string) ([]byte, error) {
	ctx := h.messageCtx()
	m := store.NewMessage{
		Room: t.String(), UserID: user, OpponentID: t.Other(user), Body: body, ClientID: clientID,
	}
	if h.cfg.NotifyAfter > 0 {
		// Asked before the save so the outbox row can commit with the
		// message; a presence error counts as absent, as in deliver.
		if present, err := h.cfg.Presence.Present(ctx, m.Room, m.OpponentID); err != nil || !present {
			m.NotifyAfter = h.cfg.NotifyAfter
		}
	}
	msg, _, err := h.cfg.Store.Save(ctx, m)
	if err != nil {
		return nil, err
	}
	return encodeMessage(&msg)
}

// deliver broadcasts a stored message to its chat and, when the recipient
// is not in the chat anywhere in the cluster, notifies their lobby. A
// retried message is delivered again: the first delivery may never have
// happened, and clients dedupe by id.
func (h *Hub) deliver(t topic.Topic, sender string, msg []byte, origin *Client) {
	room := t.String()
	h.broadcastFrom(room, "new_message", msg, origin, nil)
	other := t.Other(sender)
	// No deadline of our own: Present answers from memory (in-process, or
	// the Redis bus's mirror of subscribed topics), and its rare Redis
	// fallback is bounded by the client's read timeout. A context per
	// message would be the routing path's largest allocation.
	present, err := h.cfg.Presence.Present(context.Background(), room, other)
	if err != nil {
		h.logs.present.Log("topic", room, "err", err)
	}
	if present {
		return
	}
	note := make([]byte, 0, len(room)+len(msg)+32)
	note = append(note, `{"room":`...)
	note = phx.AppendString(note, room)
	note = append(note, `,"message":`...)
	note = append(note, msg...)
	note = append(note, '}')
	h.Broadcast(topic.LobbyName(other), "notification", note)
}

// PostAndDeliver stores a message from user in chat t and delivers it like
// one sent over a socket. The HTTP API uses it.
func (h *Hub) PostAndDeliver(user string, t topic.Topic, body, clientID string) ([]byte, error) {
	if reason := h.validateBody(body); reason != "" {
		return nil, &InputError{reason}
	}
	reason, err := h.blockReason(t, user)
	if err != nil {
		return nil, err
	}
	if reason != "" {
		return nil, &InputError{reason}
	}
	msg, err := h.save(user, t, body, clientID)
	if err != nil {
		if reason := storeReason(err); reason != "store unavailable" && reason != "store error" {
			return nil, &InputError{reason}
		}
		return nil, err
	}
	h.deliver(t, user, msg, nil)
	return msg, nil
}

// InputError is a request the hub refuses because of its content.
type InputError struct{ Reason string }

func (e *InputError) Error() string { return e.Reason }

func (c *Client) read(f *phx.Frame) {
	ch, ok := c.chatChannel(f)
	if !ok {
		return
	}
	var p struct {
		LastID json.Number `json:"last_id"`
	}
	if err := json.Unmarshal(f.Payload, &p); err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "last_id must be a message id")
		return
	}
	lastID, err := strconv.ParseInt(p.LastID.String(), 10, 64)
	if err != nil || lastID <= 0 {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "last_id must be a message id")
		return
	}
	ctx, cancel := c.hub.ctx()
	n, err := c.hub.cfg.Store.MarkRead(ctx, ch.name, c.user, lastID)
	cancel()
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
		return
	}
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", []byte(`{"marked":`+strconv.FormatInt(n, 10)+`}`))
	payload := append([]byte(`{"user_id":`), phx.AppendString(nil, c.user)...)
	payload = append(append(payload, `,"last_id":`...), strconv.FormatInt(lastID, 10)...)
	payload = append(payload, '}')
	c.hub.broadcastFrom(ch.name, "read", payload, c, nil)
}

func (c *Client) historyPage(f *phx.Frame) {
	ch, ok := c.chatChannel(f)
	if !ok {
		return
	}
	var p struct {
		Before   int64  `json:"before"`
		After    int64  `json:"after"`
		SinceSeq *int64 `json:"since_seq"`
	}
	if err := json.Unmarshal(f.Payload, &p); err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "before must be a message id")
		return
	}
	ctx, cancel := c.hub.ctx()
	defer cancel()
	var resp []byte
	var err error
	switch {
	case p.SinceSeq != nil && *p.SinceSeq < 0:
		c.replyError(ch.joinRef, f.Ref, f.Topic, "since_seq must not be negative")
		return
	case p.SinceSeq != nil:
		resp, err = c.changes(ctx, ch.name, *p.SinceSeq, c.hub.cfg.CatchUpLimit)
	case p.After > 0:
		resp, err = c.since(ctx, ch.name, p.After, c.hub.cfg.HistoryLimit)
	default:
		resp, err = c.history(ctx, ch.name, p.Before)
	}
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
		return
	}
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", resp)
}
