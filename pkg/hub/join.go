package hub

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/topic"
)

// join handles phx_join on the request stage. The order is what makes a
// join lossless: subscribe locally, wait until the bus confirms the
// node's subscription, and only then read the store, so every message is
// either in the reply (stored before the read) or in the live stream
// (published after the subscription was live); clients dedupe the few
// that are in both by id.
func (c *Client) join(f *phx.Frame) {
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
	var params struct {
		LastID   *int64 `json:"last_id"`
		SinceSeq *int64 `json:"since_seq"`
		Grant    string `json:"grant"`
	}
	// phoenix.js sends {} when a channel has no params: most joins.
	if len(f.Payload) > 0 && f.Payload[0] == '{' && string(f.Payload) != "{}" {
		if err := json.Unmarshal(f.Payload, &params); err != nil {
			c.replyError(f.JoinRef, f.Ref, f.Topic, "invalid join params")
			return
		}
	}
	if params.SinceSeq != nil && *params.SinceSeq < 0 {
		c.replyError(f.JoinRef, f.Ref, f.Topic, "since_seq must not be negative")
		return
	}
	if t.Kind == topic.Chat {
		if reason := c.admitChat(t, params.Grant); reason != "" {
			c.replyError(f.JoinRef, f.Ref, f.Topic, reason)
			return
		}
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	old := c.findLocked(f.Topic)
	if old < 0 && len(c.channels) >= c.hub.cfg.MaxChannels {
		c.mu.Unlock()
		c.replyError(f.JoinRef, f.Ref, f.Topic, "too many channels joined")
		return
	}
	// Phoenix replaces a duplicate join: the new join is answered, then
	// the old join_ref gets phx_close (which the client drops). The
	// connection stays subscribed throughout.
	var oldJoinRef string
	var live <-chan struct{}
	if old >= 0 {
		prev := c.channels[old]
		oldJoinRef = prev.joinRef
		c.channels = append(c.channels[:old], c.channels[old+1:]...)
		c.enqueueLocked(func(c *Client) { c.untrack(prev) }, true)
		live = closedChan
	} else {
		live = c.hub.subscribe(f.Topic, c)
	}
	c.mu.Unlock()

	fail := func(reason string) {
		c.hub.unsubscribe(f.Topic, c)
		c.replyError(f.JoinRef, f.Ref, f.Topic, reason)
		if oldJoinRef != "" {
			c.push(oldJoinRef, f.Topic, phx.EventClose, nil)
		}
	}
	if !c.awaitLive(live) {
		fail("cluster unavailable")
		return
	}
	var resp []byte
	if t.Kind == topic.Lobby {
		resp, err = c.lobbyJoin()
	} else {
		resp, err = c.chatJoin(t, params.LastID, params.SinceSeq)
	}
	if err != nil {
		fail(storeReason(err))
		return
	}

	ch := channel{name: f.Topic, topic: t, joinRef: f.JoinRef, metaRef: c.hub.newRef()}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.hub.unsubscribe(f.Topic, c)
		return
	}
	c.reply(f.JoinRef, f.Ref, f.Topic, "ok", resp)
	if oldJoinRef != "" {
		c.pushClose(oldJoinRef, f.Topic)
	}
	c.channels = append(c.channels, ch)
	c.mu.Unlock()
	c.hub.cfg.Metrics.Join(t.Kind.String())
	// A close from now on untracks ch on the stage, after this request.
	c.track(ch)
}

// awaitLive waits for the bus to confirm the subscription, at most as long
// as a store call may take.
func (c *Client) awaitLive(live <-chan struct{}) bool {
	select {
	case <-live:
		return true
	default:
	}
	t := time.NewTimer(c.hub.cfg.StoreTimeout)
	defer t.Stop()
	select {
	case <-live:
		return true
	case <-t.C:
		return false
	}
}
