package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/topic"
	"github.com/elchat/elchat/pkg/transport"
)

// Close codes. 1000 tells phoenix.js to stay away; every other code makes it
// reconnect, which is what restarts and kicks want.
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001
	CloseUnsupported    = 1003
	CloseInvalidData    = 1007
	ClosePolicy         = 1008
	CloseServiceRestart = 1012
)

// Client is one authenticated connection and the channels it joined.
type Client struct {
	hub  *Hub
	conn Conn
	user string // immutable
	name string // immutable

	// channels is owned by the connection's handler: it is touched only in
	// HandleText, HandleBinary and Closed, which the transport serialises
	// per connection, so it needs no lock. A slice, not a map: a
	// connection holds a handful of channels and idle memory matters.
	channels []channel
	closed   bool // owned by the handler, like channels
	// limiter meters channel events; owned by the handler. Created on the
	// first event, so an idle connection does not pay for it.
	limiter *rate.Limiter
}

type channel struct {
	name    string
	topic   topic.Topic
	joinRef string
	metaRef string // presence meta of this connection in the topic
}

// Connect registers an authenticated connection for user (display name
// name) and returns the session the transport feeds its frames to.
func (h *Hub) Connect(conn Conn, user, name string) *Client {
	h.clients.Add(1)
	return &Client{hub: h, conn: conn, user: user, name: name}
}

// User returns the connection's user id.
func (c *Client) User() string { return c.user }

func (c *Client) find(name string) int {
	for i := range c.channels {
		if c.channels[i].name == name {
			return i
		}
	}
	return -1
}

// send encodes one frame for this connection only. It runs in the
// connection's handler, so the frame may wait for the end of the turn.
func (c *Client) send(encode func([]byte) []byte) {
	buf := transport.Begin(make([]byte, 0, 256))
	c.sendOwn(transport.Finish(encode(buf)))
}

// sendOwn writes a frame caused by this connection's own request.
func (c *Client) sendOwn(frame []byte) {
	if l, ok := c.conn.(laterSender); ok {
		_ = l.SendLater(frame)
		return
	}
	_ = c.conn.Send(frame)
}

func (c *Client) reply(joinRef, ref, topicName, status string, response []byte) {
	c.send(func(b []byte) []byte { return phx.AppendReply(b, joinRef, ref, topicName, status, response) })
}

func (c *Client) replyError(joinRef, ref, topicName, reason string) {
	c.send(func(b []byte) []byte { return phx.AppendErrorReply(b, joinRef, ref, topicName, reason) })
}

func (c *Client) push(joinRef, topicName, event string, payload []byte) {
	c.send(func(b []byte) []byte { return phx.AppendPush(b, joinRef, topicName, event, payload) })
}

// HandleBinary rejects binary frames: ElChat's events are JSON.
func (c *Client) HandleBinary([]byte) {
	c.conn.Close(CloseUnsupported, "binary frames are not supported")
}

// HandleText processes one Phoenix frame.
func (c *Client) HandleText(data []byte) {
	if c.closed {
		return
	}
	f, err := phx.Decode(data)
	if err != nil {
		// The transport cuts the reason to what a close frame holds.
		c.conn.Close(CloseInvalidData, "malformed frame: "+err.Error())
		return
	}
	switch {
	case f.Topic == "phoenix":
		if f.Event == "heartbeat" {
			c.reply("", f.Ref, f.Topic, "ok", nil)
		} else {
			c.replyError("", f.Ref, f.Topic, "unmatched topic")
		}
	case f.Event == "phx_join":
		// Joins read the store, so they draw on the same bucket as events.
		if !c.allow() {
			c.replyError(f.JoinRef, f.Ref, f.Topic, "rate limited")
			return
		}
		c.join(f)
	case f.Event == "phx_leave":
		c.leave(f)
	default:
		i := c.find(f.Topic)
		if i < 0 {
			c.replyError("", f.Ref, f.Topic, "unmatched topic")
			return
		}
		ch := &c.channels[i]
		if f.JoinRef != "" && f.JoinRef != ch.joinRef {
			return // a frame for an earlier join of this topic: Phoenix drops it
		}
		c.hub.cfg.Metrics.MessageIn()
		if !c.allow() {
			c.replyError(ch.joinRef, f.Ref, f.Topic, "rate limited")
			return
		}
		c.event(ch, f)
	}
}

// allow takes a token from the connection's bucket.
func (c *Client) allow() bool {
	if c.limiter == nil {
		c.limiter = rate.NewLimiter(rate.Limit(c.hub.cfg.PushRate), c.hub.cfg.PushBurst)
	}
	return c.limiter.Allow()
}

func (c *Client) join(f phx.Frame) {
	t, err := topic.Parse(f.Topic)
	if errors.Is(err, topic.ErrUnmatched) {
		c.replyError("", f.Ref, f.Topic, "unmatched topic")
		return
	}
	if err != nil {
		c.replyError(f.JoinRef, f.Ref, f.Topic, err.Error())
		return
	}
	if !t.Allows(c.user) {
		c.replyError(f.JoinRef, f.Ref, f.Topic, "unauthorized")
		return
	}
	old := c.find(f.Topic)
	if old < 0 && len(c.channels) >= c.hub.cfg.MaxChannels {
		c.replyError(f.JoinRef, f.Ref, f.Topic, "too many channels joined")
		return
	}
	var params struct {
		LastID *int64 `json:"last_id"`
	}
	if len(f.Payload) > 0 && f.Payload[0] == '{' {
		if err := json.Unmarshal(f.Payload, &params); err != nil {
			c.replyError(f.JoinRef, f.Ref, f.Topic, "invalid join params")
			return
		}
	}

	var oldJoinRef string
	if old >= 0 {
		// Phoenix replaces a duplicate join: the new join is answered,
		// then the old join_ref gets phx_close (which the client drops).
		oldJoinRef = c.channels[old].joinRef
		c.drop(old)
	}
	// Subscribe before reading history: a message stored in between then
	// arrives twice (clients dedupe by id) instead of never.
	c.hub.subscribe(f.Topic, c)
	ch := channel{name: f.Topic, topic: t, joinRef: f.JoinRef}

	var resp []byte
	if t.Kind == topic.Lobby {
		resp, err = c.lobbyJoin()
	} else {
		resp, err = c.chatJoin(t, params.LastID)
	}
	if err != nil {
		c.hub.unsubscribe(f.Topic, c)
		c.replyError(f.JoinRef, f.Ref, f.Topic, storeReason(err))
		if oldJoinRef != "" {
			c.push(oldJoinRef, f.Topic, "phx_close", nil)
		}
		return
	}
	c.reply(f.JoinRef, f.Ref, f.Topic, "ok", resp)
	if oldJoinRef != "" {
		c.send(func(b []byte) []byte {
			return phx.AppendMessage(b, oldJoinRef, oldJoinRef, f.Topic, "phx_close", nil)
		})
	}
	c.hub.cfg.Metrics.Join(t.Kind.String())
	ch.metaRef = c.track(&ch)
	c.channels = append(c.channels, ch)
}

func (c *Client) lobbyJoin() ([]byte, error) {
	ctx, cancel := c.hub.ctx()
	defer cancel()
	unread, err := c.hub.cfg.Store.Unread(ctx, c.user)
	if err != nil {
		return nil, err
	}
	if unread == nil {
		unread = []store.UnreadChat{}
	}
	return json.Marshal(struct {
		Unread []store.UnreadChat `json:"unread"`
	}{unread})
}

func (c *Client) chatJoin(t topic.Topic, lastID *int64) ([]byte, error) {
	ctx, cancel := c.hub.ctx()
	defer cancel()
	var msgs []store.Message
	var more bool
	var err error
	if lastID != nil {
		lim := c.hub.cfg.CatchUpLimit
		msgs, err = c.hub.cfg.Store.Since(ctx, t.String(), c.hub.catchUpFrom(*lastID), lim+1)
		if len(msgs) > lim {
			msgs, more = msgs[:lim], true
		}
	} else {
		msgs, more, err = c.history(ctx, t.String(), 0)
	}
	if err != nil {
		return nil, err
	}
	return marshalPage(msgs, more)
}

func marshalPage(msgs []store.Message, more bool) ([]byte, error) {
	if msgs == nil {
		msgs = []store.Message{}
	}
	return json.Marshal(struct {
		Messages []store.Message `json:"messages"`
		HasMore  bool            `json:"has_more"`
	}{msgs, more})
}

// track records this connection's presence in ch. In a chat the joiner gets
// presence_state and everybody a presence_diff; a lobby is tracked only so
// the cluster knows the user is online.
func (c *Client) track(ch *channel) string {
	h := c.hub
	meta := Meta{Ref: h.newRef(), Name: c.name, OnlineAt: time.Now().Unix()}
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.cfg.Presence.Track(ctx, ch.name, c.user, meta); err != nil {
		h.cfg.Logger.Warn("presence track failed", "topic", ch.name, "err", err)
	}
	if ch.topic.Kind != topic.Chat {
		return meta.Ref
	}
	state, err := h.cfg.Presence.List(ctx, ch.name)
	if err != nil {
		h.cfg.Logger.Warn("presence list failed", "topic", ch.name, "err", err)
		state = map[string][]Meta{c.user: {meta}}
	}
	c.push(ch.joinRef, ch.name, "presence_state", encodeState(state))
	h.broadcastFrom(ch.name, "presence_diff", encodeDiff(c.user, meta, true), c, nil)
	return meta.Ref
}

func (c *Client) untrack(ch *channel) {
	h := c.hub
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.cfg.Presence.Untrack(ctx, ch.name, c.user, ch.metaRef); err != nil {
		h.cfg.Logger.Warn("presence untrack failed", "topic", ch.name, "err", err)
	}
	if ch.topic.Kind == topic.Chat {
		meta := Meta{Ref: ch.metaRef, Name: c.name}
		h.broadcastFrom(ch.name, "presence_diff", encodeDiff(c.user, meta, false), c, nil)
	}
}

// drop removes channel i: no more frames, presence left.
func (c *Client) drop(i int) {
	ch := c.channels[i]
	c.channels = append(c.channels[:i], c.channels[i+1:]...)
	c.hub.unsubscribe(ch.name, c)
	c.untrack(&ch)
}

func (c *Client) leave(f phx.Frame) {
	i := c.find(f.Topic)
	if i >= 0 && f.JoinRef != "" && f.JoinRef != c.channels[i].joinRef {
		return // the client raced a server close; Phoenix ignores it
	}
	c.reply(f.JoinRef, f.Ref, f.Topic, "ok", nil)
	if i < 0 {
		return
	}
	joinRef := c.channels[i].joinRef
	c.drop(i)
	c.send(func(b []byte) []byte { return phx.AppendMessage(b, joinRef, joinRef, f.Topic, "phx_close", nil) })
}

// Closed releases everything the connection held.
func (c *Client) Closed() {
	if c.closed {
		return
	}
	c.closed = true
	for len(c.channels) > 0 {
		c.drop(len(c.channels) - 1)
	}
	h := c.hub
	h.clients.Add(-1)
}

func (c *Client) event(ch *channel, f phx.Frame) {
	if ch.topic.Kind != topic.Chat {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "unknown event")
		return
	}
	switch f.Event {
	case "new_message":
		c.newMessage(ch, f)
	case "read":
		c.read(ch, f)
	case "typing":
		payload, _ := json.Marshal(struct {
			UserID string `json:"user_id"`
			Name   string `json:"name"`
		}{c.user, c.name})
		c.reply(ch.joinRef, f.Ref, f.Topic, "ok", nil)
		c.hub.broadcast(ch.name, "typing", payload, c)
	case "history":
		c.historyPage(ch, f)
	default:
		c.replyError(ch.joinRef, f.Ref, f.Topic, "unknown event")
	}
}

func (c *Client) newMessage(ch *channel, f phx.Frame) {
	var p struct {
		Body     *string `json:"body"`
		ClientID string  `json:"client_id"`
	}
	if err := json.Unmarshal(f.Payload, &p); err != nil || p.Body == nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "body must be a string")
		return
	}
	if reason := c.hub.validateBody(*p.Body); reason != "" {
		c.replyError(ch.joinRef, f.Ref, f.Topic, reason)
		return
	}
	if len(p.ClientID) > 128 {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "client_id longer than 128 bytes")
		return
	}
	msg, err := c.hub.save(c.user, ch.topic, *p.Body, p.ClientID)
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
		return
	}
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", msg)
	c.hub.deliver(ch.topic, c.user, msg, c)
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
	ctx, cancel := h.ctx()
	defer cancel()
	msg, _, err := h.cfg.Store.Save(ctx, store.NewMessage{
		Room: t.String(), UserID: user, OpponentID: t.Other(user), Body: body, ClientID: clientID,
	})
	if err != nil {
		return nil, err
	}
	return json.Marshal(msg)
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
		h.cfg.Logger.Warn("presence lookup failed; notifying lobby", "topic", room, "err", err)
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
	h.broadcast("user:"+other, "notification", note, nil)
}

// PostAndDeliver stores a message from user in chat t and delivers it like
// one sent over a socket. The HTTP API uses it.
func (h *Hub) PostAndDeliver(user string, t topic.Topic, body, clientID string) ([]byte, error) {
	if reason := h.validateBody(body); reason != "" {
		return nil, &InputError{reason}
	}
	msg, err := h.save(user, t, body, clientID)
	if err != nil {
		return nil, err
	}
	h.deliver(t, user, msg, nil)
	return msg, nil
}

// InputError is a request the hub refuses because of its content.
type InputError struct{ Reason string }

func (e *InputError) Error() string { return e.Reason }

func (c *Client) read(ch *channel, f phx.Frame) {
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
	payload, _ := json.Marshal(struct {
		UserID string `json:"user_id"`
		LastID int64  `json:"last_id"`
	}{c.user, lastID})
	c.hub.broadcastFrom(ch.name, "read", payload, c, nil)
}

func (c *Client) historyPage(ch *channel, f phx.Frame) {
	var p struct {
		Before int64 `json:"before"`
		After  int64 `json:"after"`
	}
	if err := json.Unmarshal(f.Payload, &p); err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "before must be a message id")
		return
	}
	ctx, cancel := c.hub.ctx()
	defer cancel()
	var msgs []store.Message
	var more bool
	var err error
	if p.After > 0 {
		lim := c.hub.cfg.HistoryLimit
		msgs, err = c.hub.cfg.Store.Since(ctx, ch.name, p.After, lim+1)
		if len(msgs) > lim {
			msgs, more = msgs[:lim], true
		}
	} else {
		msgs, more, err = c.history(ctx, ch.name, p.Before)
	}
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, storeReason(err))
		return
	}
	resp, err := marshalPage(msgs, more)
	if err != nil {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "internal error")
		return
	}
	c.reply(ch.joinRef, f.Ref, f.Topic, "ok", resp)
}

func (c *Client) history(ctx context.Context, room string, before int64) ([]store.Message, bool, error) {
	lim := c.hub.cfg.HistoryLimit
	msgs, err := c.hub.cfg.Store.History(ctx, room, before, lim+1)
	if err != nil {
		return nil, false, err
	}
	if len(msgs) > lim {
		return msgs[1:], true, nil // oldest first: the extra one is the oldest
	}
	return msgs, false, nil
}

func storeReason(err error) string {
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		return "store unavailable"
	}
	return "store error"
}
