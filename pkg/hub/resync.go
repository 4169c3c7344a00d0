package hub

import (
	"context"
	"errors"
	"maps"
	"math"
	"strings"
	"time"

	"github.com/elchat/elchat/internal/pace"
	"github.com/elchat/elchat/pkg/topic"
)

// Fanout between nodes is at-most-once, like Redis pub/sub: what a node
// publishes while its bus is down is lost. The hub heals that through the
// protocol: it notes the store's last id periodically, and when the bus
// recovers every local client is asked to rejoin (phx_error), and for a
// while joins catch up from the watermark taken before the outage even if
// the client's last_id is later.

// busHandler is the Hub seen by its Bus (see BusHandler).
type busHandler Hub

func (b *busHandler) hub() *Hub { return (*Hub)(b) }

func (b *busHandler) Deliver(topic string, msg []byte) {
	h := b.hub()
	if topic == controlTopic {
		h.control(msg) // node to node: never a client's
		return
	}
	h.cfg.Metrics.BusDelivered()
	h.deliverLocal(topic, msg)
}

func (b *busHandler) Ingress(source, name, event string, payload []byte) error {
	h := b.hub()
	if err := ValidHostEvent(name, event); err != nil {
		return err
	}
	h.BroadcastLocal(name, event, payload)
	return nil
}

func (b *busHandler) PresenceChanged(name string, joins, leaves map[string][]Meta) {
	if !topic.IsChat(name) {
		return // only chats carry presence to clients
	}
	h := b.hub()
	if t, err := topic.Parse(name); err == nil {
		// A blocker's presence does not reach the blocked user (from the
		// cache: this handler may not wait on the store).
		for _, key := range [...]string{t.A, t.B} {
			if _, ok := joins[key]; !ok {
				continue
			}
			if yes, _ := h.rules.blocked(key, t.Other(key)); yes {
				joins = maps.Clone(joins) // the bus's map is not ours to change
				delete(joins, key)
			}
		}
		if len(joins) == 0 && len(leaves) == 0 {
			return
		}
	}
	h.Broadcast(name, "presence_diff", encodeDiff(joins, leaves))
}

func (b *busHandler) Down() { b.hub().busDown() }

func (b *busHandler) Up() {
	h := b.hub()
	// Block announcements may have been lost: read blocks afresh.
	h.rules.resetBlocks()
	go func() {
		ctx, cancel := h.ctx()
		defer cancel()
		if err := h.LoadBans(ctx); err != nil {
			h.cfg.Logger.Warn("could not read the bans", "err", err)
		}
	}()
	go func() {
		n := h.busUp(context.Background(), h.cfg.ResyncDelay, h.cfg.ResyncSpread)
		h.cfg.Logger.Info("clients asked to rejoin after the bus outage", "topics", n)
		// If only this node lost the bus, the others' clients missed its
		// messages without noticing anything: tell them.
		a, ok := h.cfg.Bus.(resyncAnnouncer)
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.AnnounceResync(ctx, h.Watermark()); err != nil {
			h.cfg.Logger.Warn("could not announce the resync to the other nodes", "err", err)
		}
	}()
}

func (b *busHandler) ResyncRequested(watermark int64, node string) {
	h := b.hub()
	go func() {
		if n := h.resyncRequested(context.Background(), watermark, h.cfg.ResyncDelay/2, h.cfg.ResyncSpread); n > 0 {
			h.cfg.Logger.Info("clients asked to rejoin: another node lost messages", "node", node, "topics", n)
		}
	}()
}

// ErrReservedEvent is returned for a host-app event that clients would
// take for one of ElChat's own.
var ErrReservedEvent = errors.New("event name reserved by ElChat")

// ValidHostEvent is the one rule for events a host application injects
// (HTTP API, Action Cable, plain PUBLISH): a lobby or chat topic, and an
// event name that is not the protocol's (phx_*) nor one ElChat produces,
// which clients trust to come from ElChat.
func ValidHostEvent(name, event string) error {
	if _, err := topic.Parse(name); err != nil {
		return err
	}
	switch {
	case event == "":
		return errors.New("event is empty")
	case strings.HasPrefix(event, "phx_"), strings.HasPrefix(event, "presence_"):
		return ErrReservedEvent
	}
	switch event {
	case "new_message", "read", "typing", "notification", "message_updated", "message_deleted", "heartbeat":
		return ErrReservedEvent
	}
	return nil
}

// trackWatermark samples the store's last message id every period until
// ctx ends, so that busDown knows an id that every message published
// before the outage is older than.
func (h *Hub) trackWatermark(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	var prev, prevSeq int64
	for {
		c, cancel := h.ctx()
		id, err := h.cfg.Store.LastID(c)
		var seq int64
		if err == nil {
			// The change cursor's watermark, sampled with the id's.
			seq, err = h.cfg.Store.LastSeq(c)
		}
		cancel()
		if err == nil {
			// Publish the previous sample: it is at least one period old, so
			// messages up to it were published before any outage that
			// starts now.
			h.safeID.Store(prev)
			h.safeSeq.Store(prevSeq)
			prev, prevSeq = id, seq
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// busDown records that cross-node messages are being lost from about now:
// until the resync after busUp ends, a chat join whose last_id is newer
// than the last safe watermark catches up from the watermark instead, so
// a rejoin fills the gap even though the client saw later messages.
func (h *Hub) busDown() {
	prev := h.resyncUntil.Swap(math.MaxInt64)
	if prev == math.MaxInt64 {
		return // already down
	}
	w, ws := h.safeID.Load(), h.safeSeq.Load()
	if prev > time.Now().UnixNano() {
		// A resync is still under way: keep the older of the watermarks.
		w = min(w, h.resyncFrom.Load())
		ws = min(ws, h.resyncFromSeq.Load())
	}
	h.resyncFrom.Store(w)
	h.resyncFromSeq.Store(ws)
}

// busUp ends an outage: after delay (other nodes reconnect too), every
// local client is asked to rejoin (Resync over spread), and joins keep
// catching up from the watermark for a while longer.
func (h *Hub) busUp(ctx context.Context, delay, spread time.Duration) int {
	h.resyncUntil.Store(time.Now().Add(delay + spread + 2*time.Minute).UnixNano())
	select {
	case <-ctx.Done():
		return 0
	case <-time.After(delay):
	}
	return h.Resync(ctx, spread)
}

// Watermark returns the id from which this node's clients catch up after
// its last bus outage (see busDown); other nodes use it when the node
// announces that its messages were lost.
func (h *Hub) Watermark() int64 { return h.resyncFrom.Load() }

// resyncRequested handles another node's announcement that messages it
// published since watermark were lost: unless this node is resyncing
// already (a shared outage, where its own watermark serves just as well),
// its clients rejoin and catch up from watermark, after delay and spread
// over spread like busUp.
func (h *Hub) resyncRequested(ctx context.Context, watermark int64, delay, spread time.Duration) int {
	now := time.Now().UnixNano()
	until := time.Now().Add(delay + spread + 2*time.Minute).UnixNano()
	for {
		cur := h.resyncUntil.Load()
		if cur > now {
			return 0
		}
		if h.resyncUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	h.resyncFrom.Store(watermark)
	// The announcement names a message id only: change cursors replay
	// the whole change log of their chat, paged.
	h.resyncFromSeq.Store(0)
	select {
	case <-ctx.Done():
		return 0
	case <-time.After(delay):
	}
	return h.Resync(ctx, spread)
}

// catchUpFrom returns where a join asking for messages after lastID must
// start: lastID itself, or the watermark while fanout may have lost
// messages.
func (h *Hub) catchUpFrom(lastID int64) int64 {
	if time.Now().UnixNano() < h.resyncUntil.Load() {
		if from := h.resyncFrom.Load(); from < lastID {
			return from
		}
	}
	return lastID
}

// catchUpSeq is catchUpFrom for a change cursor: while fanout may have
// lost changes, a join with a later since_seq catches up from the change
// watermark taken before the loss.
func (h *Hub) catchUpSeq(after int64) int64 {
	if time.Now().UnixNano() < h.resyncUntil.Load() {
		if from := h.resyncFromSeq.Load(); from < after {
			return from
		}
	}
	return after
}

// Resync makes every client of this node rejoin its channels, spread over
// spread: each local topic gets a phx_error broadcast (null join_ref, so
// phoenix.js applies it to the current join), and phoenix.js rejoins after
// its rejoin backoff with its join params, whose last_id fetches whatever
// the client missed. The node calls it when the bus may have lost messages.
func (h *Hub) Resync(ctx context.Context, spread time.Duration) int {
	var topics []string
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		for t := range s.topics {
			topics = append(topics, t)
		}
		s.mu.RUnlock()
	}
	return pace.Spread(ctx, len(topics), spread, func(i int) {
		h.BroadcastLocal(topics[i], "phx_error", []byte(`{"reason":"resync"}`))
	})
}
