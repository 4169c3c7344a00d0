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
	c.joinSubscribed(f, t, params.LastID, params.SinceSeq, oldJoinRef, live)
}

// joinSubscribed is the rest of a join once c is among the topic's local
// subscribers: wait for the bus, read the reply, answer, track presence.
func (c *Client) joinSubscribed(f *phx.Frame, t topic.Topic, lastID, sinceSeq *int64, oldJoinRef string, live <-chan struct{}) {
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
	var err error
	if t.Kind == topic.Lobby {
		resp, err = c.lobbyJoin()
	} else {
		resp, err = c.chatJoin(t, lastID, sinceSeq)
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

// joinNowLocked answers a lobby join on the event loop when nothing in it
// can wait: the first join of the user's own lobby, without params, on a
// node whose store knows from memory that the user has nothing unread and
// whose presence is in process. That is the join of nearly every connect
// of a single node, and handing it to the request stage (a goroutine
// wake-up, two store deadlines) cost more than the join itself.
//
// It reports false, having done nothing, when the join must go to the
// stage as a whole. Once c is subscribed it always returns true: a join
// that turns out to need the store after all goes on from there on the
// stage, so the subscription still comes before the read (see join).
func (c *Client) joinNowLocked(f *phx.Frame) bool {
	h := c.hub
	if h.nowUnread == nil || h.nowPresence == nil || c.sched {
		return false
	}
	if len(f.Payload) > 0 && string(f.Payload) != "{}" {
		return false
	}
	t, err := topic.Parse(f.Topic)
	if err != nil || t.Kind != topic.Lobby || !t.Allows(c.user) {
		return false // the stage answers the refusal
	}
	if c.findLocked(f.Topic) >= 0 || len(c.channels) >= h.cfg.MaxChannels {
		return false
	}
	live := h.subscribe(f.Topic, c)
	if !isClosed(live) || !h.nowUnread.NothingUnread(c.user) {
		c.stageRestLocked(f, t, live)
		return true
	}
	ch := channel{name: f.Topic, topic: t, joinRef: f.JoinRef, metaRef: h.newRef()}
	c.reply(f.JoinRef, f.Ref, f.Topic, "ok", noUnread)
	c.channels = append(c.channels, ch)
	h.cfg.Metrics.Join(t.Kind.String())
	h.nowPresence.TrackNow(ch.name, c.user, Meta{Ref: ch.metaRef, Name: c.name, OnlineAt: time.Now().Unix()})
	return true
}

// stageRestLocked hands the rest of a join that subscribed on the event
// loop to the request stage.
func (c *Client) stageRestLocked(f *phx.Frame, t topic.Topic, live <-chan struct{}) {
	fc := *f
	fc.Payload = nil // a lobby join without params: nothing to keep
	// A cleanup task: a close before it runs must still undo the
	// subscription.
	c.enqueueLocked(func(c *Client) {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			c.hub.unsubscribe(fc.Topic, c)
			return
		}
		c.joinSubscribed(&fc, t, nil, nil, "", live)
	}, true)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// awaitLive waits for the bus to confirm the subscription, at most as long
// as a store call may take.
func (c *Client) awaitLive(live <-chan struct{}) bool {
	if isClosed(live) {
		return true
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
