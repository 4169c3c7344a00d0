package redisbus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/pkg/hub"
)

// acListener is one ListenActionCable registration.
type acListener struct {
	prefix  string // channel prefix including its ':' ("" when none)
	deliver func(topic, event string, payload []byte)
}

// ListenActionCable delivers what a Rails app broadcasts with Action
// Cable's Redis adapter configured with channel_prefix channelPrefix
// (Action Cable joins it as "#{channel_prefix}:#{broadcasting}"), for
// broadcastings named like ElChat topics: ActionCable.server.broadcast(
// "user:42", {event: "x", payload: {...}}) publishes
// {"event":"x","payload":{...}} on "<channelPrefix>:user:42".
//
// Every node receives every such message, so deliver must deliver to this
// node's subscribers only; with a nil deliver the frame goes to the
// function given to Run, which is exactly that. A message without "event"
// is delivered as event "broadcast" with the whole object as payload.
// Payloads that are not JSON objects, topics other than user: and chat:,
// and phx_ events are logged and dropped.
//
// The patterns ride on the node's one pub/sub connection and are
// resubscribed with it after an outage. Listening stops when ctx is done.
func (b *Bus) ListenActionCable(ctx context.Context, channelPrefix string, deliver func(topic, event string, payload []byte)) error {
	l := &acListener{deliver: deliver}
	if channelPrefix != "" {
		l.prefix = channelPrefix + ":"
	}
	pats := []string{globEscape(l.prefix) + "user:*", globEscape(l.prefix) + "chat:*"}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	for _, p := range pats {
		if b.patterns[p] != nil {
			b.mu.Unlock()
			return errors.New("redisbus: already listening to Action Cable prefix " + channelPrefix)
		}
	}
	for _, p := range pats {
		b.patterns[p] = l
		b.dirtyPats[p] = struct{}{}
	}
	b.mu.Unlock()
	b.kick()
	go func() {
		select {
		case <-ctx.Done():
		case <-b.ctx.Done():
			return
		}
		b.mu.Lock()
		for _, p := range pats {
			delete(b.patterns, p)
			b.dirtyPats[p] = struct{}{}
		}
		b.mu.Unlock()
		b.kick()
	}()
	return nil
}

// globEscape quotes Redis glob metacharacters, so a prefix matches only
// itself.
func globEscape(s string) string {
	var sb strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func (b *Bus) handleActionCable(m *redis.Message) {
	b.mu.Lock()
	l := b.patterns[m.Pattern]
	b.mu.Unlock()
	if l == nil {
		return // unsubscribing
	}
	topic := strings.TrimPrefix(m.Channel, l.prefix)
	var msg struct {
		Event   *string         `json:"event"`
		Payload json.RawMessage `json:"payload"`
	}
	raw := []byte(m.Payload)
	if !isObject(raw) || json.Unmarshal(raw, &msg) != nil {
		b.stats.refused.Add(1)
		b.refusedLog.Log("source", "action cable", "channel", m.Channel, "reason", "not a JSON object")
		return
	}
	event, payload := "broadcast", raw
	if msg.Event != nil {
		event, payload = *msg.Event, msg.Payload
		if len(payload) == 0 {
			payload = []byte("{}")
		}
	}
	b.ingress("action cable", topic, event, payload, l.deliver)
}

// handlePlain serves the plain ingress channel <prefix>publish:
// {"topic":"user:42","event":"x","payload":{...}}.
func (b *Bus) handlePlain(p string) {
	var msg struct {
		Topic   string          `json:"topic"`
		Event   string          `json:"event"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal([]byte(p), &msg); err != nil {
		b.stats.refused.Add(1)
		b.refusedLog.Log("source", "publish", "reason", "not a JSON object")
		return
	}
	if len(msg.Payload) == 0 {
		msg.Payload = []byte("{}")
	}
	b.ingress("publish", msg.Topic, msg.Event, msg.Payload, nil)
}

// ingress validates a host-app message (the hub's rule for host events:
// hub.ValidHostEvent) and delivers it locally.
func (b *Bus) ingress(src, topic, event string, payload []byte, deliver func(topic, event string, payload []byte)) {
	if !isObject(payload) {
		b.stats.refused.Add(1)
		b.refusedLog.Log("source", src, "topic", topic, "event", event, "reason", "payload is not a JSON object")
		return
	}
	var err error
	switch h := b.handler.Load(); {
	case deliver != nil:
		if err = hub.ValidHostEvent(topic, event); err == nil {
			deliver(topic, event, compact(payload))
		}
	case !b.subscribed(topic): // nobody here: skip the encoding
		err = hub.ValidHostEvent(topic, event)
	case h != nil:
		err = h.Ingress(src, topic, event, compact(payload))
	}
	if err != nil {
		b.stats.refused.Add(1)
		b.refusedLog.Log("source", src, "topic", topic, "event", event, "reason", err.Error())
	}
}

func isObject(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 1 && raw[0] == '{' && json.Valid(raw)
}

// compact drops insignificant whitespace (Ruby's JSON may be pretty): it
// is sent to every subscriber.
func compact(raw []byte) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}
