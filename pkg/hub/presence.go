package hub

import (
	"strconv"
	"time"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/topic"
)

// track records this connection's presence in ch, on the request stage. In
// a chat the joiner gets presence_state and everybody a presence_diff; a
// lobby is tracked only so the cluster knows the user is online.
func (c *Client) track(ch channel) {
	h := c.hub
	meta := Meta{Ref: ch.metaRef, Name: c.name, OnlineAt: time.Now().Unix()}
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.cfg.Presence.Track(ctx, ch.name, c.user, meta); err != nil {
		h.logs.track.Log("topic", ch.name, "err", err)
	}
	if ch.topic.Kind != topic.Chat {
		return
	}
	state, err := h.cfg.Presence.List(ctx, ch.name)
	if err != nil {
		h.logs.list.Log("topic", ch.name, "err", err)
		state = map[string][]Meta{c.user: {meta}}
	}
	other := ch.topic.Other(c.user)
	// A blocker's presence does not reach the blocked user. On a store
	// failure the presence is withheld too.
	if blocks, err := h.isBlocked(other, c.user); blocks || err != nil {
		delete(state, other)
	}
	c.push(ch.joinRef, ch.name, "presence_state", encodeState(state))
	if blocks, err := h.isBlocked(c.user, other); blocks || err != nil {
		return
	}
	h.broadcastFrom(ch.name, "presence_diff", encodeDiff(map[string][]Meta{c.user: {meta}}, nil), c, nil)
}

// untrack withdraws this connection's presence from ch, on the request
// stage; the connection itself no longer receives ch's messages.
func (c *Client) untrack(ch channel) {
	h := c.hub
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.cfg.Presence.Untrack(ctx, ch.name, c.user, ch.metaRef); err != nil {
		h.logs.untrack.Log("topic", ch.name, "err", err)
	}
	if ch.topic.Kind == topic.Chat {
		meta := Meta{Ref: ch.metaRef, Name: c.name}
		h.broadcastFrom(ch.name, "presence_diff", encodeDiff(nil, map[string][]Meta{c.user: {meta}}), c, nil)
	}
}

// encodeState renders a presence table in Phoenix's presence_state shape:
// {"key":{"metas":[{...},...]},...}.
func encodeState(state map[string][]Meta) []byte {
	return appendEntries(make([]byte, 0, 64+96*len(state)), state)
}

// encodeDiff renders a presence_diff. Both keys are always present:
// phoenix.js throws on a missing side.
func encodeDiff(joins, leaves map[string][]Meta) []byte {
	b := append(make([]byte, 0, 128), `{"joins":`...)
	b = appendEntries(b, joins)
	b = append(b, `,"leaves":`...)
	b = appendEntries(b, leaves)
	return append(b, '}')
}

func appendEntries(b []byte, entries map[string][]Meta) []byte {
	b = append(b, '{')
	first := true
	for key, metas := range entries {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendEntry(b, key, metas...)
	}
	return append(b, '}')
}

func appendEntry(b []byte, key string, metas ...Meta) []byte {
	b = phx.AppendString(b, key)
	b = append(b, `:{"metas":[`...)
	for i, m := range metas {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendMeta(b, m)
	}
	return append(b, `]}`...)
}

func appendMeta(b []byte, m Meta) []byte {
	b = append(b, `{"phx_ref":`...)
	b = phx.AppendString(b, m.Ref)
	b = append(b, `,"name":`...)
	b = phx.AppendString(b, m.Name)
	b = append(b, `,"online_at":`...)
	b = strconv.AppendInt(b, m.OnlineAt, 10)
	return append(b, '}')
}
