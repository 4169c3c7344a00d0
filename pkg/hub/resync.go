package hub

import (
	"context"
	"errors"
	"maps"
	"math"
	"strings"
	"sync"
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

func (b *busHandler) Down(lastAlive time.Time) { b.hub().busDown(lastAlive) }

func (b *busHandler) Up(lost Loss) {
	h := b.hub()
	if lost.Published {
		// The others' clients missed this node's messages without
		// noticing anything: tell them, at once, so that a node still
		// waiting to start its own rejoin wave folds the announcement
		// into it instead of running a second one.
		if a, ok := h.cfg.Bus.(resyncAnnouncer); ok {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := a.AnnounceResync(ctx, h.Watermark()); err != nil {
					h.cfg.Logger.Warn("could not announce the resync to the other nodes", "err", err)
				}
			}()
		}
	}
	// Another node's loss heard while down was left to this recovery's
	// wave: it needs one even if the subscription never lapsed.
	if !lost.Received && !h.takeHeardWhileDown() {
		// Nothing published elsewhere was missed here (only commands
		// failed): no rejoin wave.
		h.busBack()
		return
	}
	// Block announcements may have been lost: read blocks afresh.
	h.rules.resetBlocks()
	go func() {
		ctx, cancel := h.ctx()
		defer cancel()
		if err := h.LoadBans(ctx); err != nil {
			h.cfg.Logger.Warn("could not read the bans", "err", err)
		}
	}()
	// The wave's state is set before Up returns, so that a Down right
	// after it finds the node recovered and marks it down again.
	h.startWave(h.cfg.ResyncDelay, h.cfg.ResyncSpread)
	go func() {
		time.Sleep(h.cfg.ResyncDelay)
		n := h.Resync(context.Background(), h.cfg.ResyncSpread)
		h.cfg.Logger.Info("clients asked to rejoin after the bus outage", "topics", n)
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

func (b *busHandler) ResyncTopics(topics []string, node string) {
	h := b.hub()
	go func() {
		if n := h.ResyncTopics(context.Background(), topics, h.cfg.ResyncSpread); n > 0 {
			h.cfg.Logger.Info("clients asked to rejoin: presence changes were lost", "node", node, "topics", n)
		}
	}()
}

// ResyncTopics makes the local clients of those of topics this node has
// subscribers for rejoin, spread over spread; it returns how many topics
// that was.
func (h *Hub) ResyncTopics(ctx context.Context, topics []string, spread time.Duration) int {
	var local []string
	for _, t := range topics {
		s := h.shard(t)
		s.mu.RLock()
		_, ok := s.topics[t]
		s.mu.RUnlock()
		if ok {
			local = append(local, t)
		}
	}
	return pace.Spread(ctx, len(local), spread, func(i int) {
		h.BroadcastLocal(local[i], "phx_error", []byte(`{"reason":"resync"}`))
	})
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

// watermarkMargin is how much older than the last sign of life a
// watermark must be: a message is stored a little before it is
// published, and clocks of one process still tick between the two.
const watermarkMargin = time.Second

// watermarks keeps the store's last id sampled over the last few minutes
// (a ring of samples), so that an outage noticed late still finds an id
// taken before the loss began.
type watermarks struct {
	mu      sync.Mutex
	samples [64]watermark // guarded by mu: ring, next write at n % len
	n       int           // guarded by mu: samples ever added
}

type watermark struct {
	at      time.Time
	id, seq int64 // store LastID and LastSeq
}

func (w *watermarks) add(at time.Time, id, seq int64) {
	w.mu.Lock()
	w.samples[w.n%len(w.samples)] = watermark{at, id, seq}
	w.n++
	w.mu.Unlock()
}

// before returns the newest sample taken before t. With none that old it
// returns the oldest sample kept (ok false when there is none at all).
func (w *watermarks) before(t time.Time) (s watermark, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	kept := min(w.n, len(w.samples))
	for i := 1; i <= kept; i++ { // newest first
		s := w.samples[(w.n-i)%len(w.samples)]
		if s.at.Before(t) {
			return s, true
		}
	}
	if kept == 0 {
		return watermark{}, false
	}
	return w.samples[(w.n-kept)%len(w.samples)], true
}

// trackWatermark samples the store's last message id every period until
// ctx ends, so that busDown knows an id older than any loss that starts
// after a given moment.
func (h *Hub) trackWatermark(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		// The time is taken before the read: every message stored before
		// it has an id no greater than the sample.
		at := time.Now()
		c, cancel := h.ctx()
		id, err := h.cfg.Store.LastID(c)
		var seq int64
		if err == nil {
			// The change cursor's watermark, sampled with the id's.
			seq, err = h.cfg.Store.LastSeq(c)
		}
		cancel()
		if err == nil {
			h.marks.add(at, id, seq)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// safeWatermark returns an id and a change sequence older than every
// message or change that may have been lost after lastAlive, the last
// moment fanout was known to work: the newest sample taken before
// lastAlive minus watermarkMargin.
func (h *Hub) safeWatermark(lastAlive time.Time) (id, seq int64) {
	s, _ := h.marks.before(lastAlive.Add(-watermarkMargin))
	return s.id, s.seq
}

// busDown records that cross-node messages may be lost since lastAlive:
// until the resync after busUp ends, a chat join whose last_id is newer
// than a watermark older than lastAlive catches up from the watermark
// instead, so a rejoin fills the gap even though the client saw later
// messages (delivered locally, or before the loss was noticed).
func (h *Hub) busDown(lastAlive time.Time) {
	h.resyncMu.Lock()
	defer h.resyncMu.Unlock()
	prev := h.resyncUntil.Swap(math.MaxInt64)
	if prev == math.MaxInt64 {
		return // already down
	}
	w, ws := h.safeWatermark(lastAlive)
	if prev > time.Now().UnixNano() {
		// A resync is still under way: keep the older of the watermarks.
		w = min(w, h.resyncFrom.Load())
		ws = min(ws, h.resyncFromSeq.Load())
	}
	h.resyncFrom.Store(w)
	h.resyncFromSeq.Store(ws)
}

// resyncWindow is how long after a rejoin wave starts joins keep catching
// up from the watermark: the wave's spread, and time for phoenix.js's
// rejoin backoff and reconnects behind it.
func resyncWindow(delay, spread time.Duration) time.Duration {
	return delay + spread + 2*time.Minute
}

// startWave records a rejoin wave starting after delay: joins catch up
// from the watermark until its window ends, and announcements heard
// before it starts fold into it.
func (h *Hub) startWave(delay, spread time.Duration) {
	now := time.Now()
	h.resyncMu.Lock()
	h.waveUntil = now.Add(resyncWindow(delay, spread)).UnixNano()
	h.resyncUntil.Store(h.waveUntil)
	h.waveAt = now.Add(delay).UnixNano()
	h.heardWhileDown = false
	h.resyncMu.Unlock()
}

// takeHeardWhileDown reports, once, whether another node announced a loss
// while this node's bus was down.
func (h *Hub) takeHeardWhileDown() bool {
	h.resyncMu.Lock()
	defer h.resyncMu.Unlock()
	heard := h.heardWhileDown
	h.heardWhileDown = false
	return heard
}

// busBack ends an outage that lost nothing this node receives: joins stop
// catching up from the outage's watermark, unless a rejoin wave started
// earlier is still within its window.
func (h *Hub) busBack() {
	h.resyncMu.Lock()
	if h.resyncUntil.Load() == math.MaxInt64 {
		h.resyncUntil.Store(h.waveUntil)
	}
	h.resyncMu.Unlock()
}

// busUp ends an outage: after delay (other nodes reconnect too), every
// local client is asked to rejoin (Resync over spread), and joins keep
// catching up from the watermark for a while longer.
func (h *Hub) busUp(ctx context.Context, delay, spread time.Duration) int {
	h.startWave(delay, spread)
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
// published since watermark were lost: joins catch up from watermark (or
// from this node's own, if older), and the local clients rejoin after
// delay, spread over spread, like busUp. It returns the topics asked to
// rejoin.
//
// A wave that has not started yet covers the announcement, since every
// message the other node lost was stored before it announced: while this
// node's bus is down (its busUp will start one) or while a wave waits out
// its delay, nothing more is sent. A wave already started does not cover
// it: in an outage two nodes recover from at different times, the one
// back first may have had its clients rejoin before the other stored the
// messages it then failed to publish.
func (h *Hub) resyncRequested(ctx context.Context, watermark int64, delay, spread time.Duration) int {
	now := time.Now()
	h.resyncMu.Lock()
	until := h.resyncUntil.Load()
	if until > now.UnixNano() {
		watermark = min(watermark, h.resyncFrom.Load())
	}
	h.resyncFrom.Store(watermark)
	// The announcement names a message id only: change cursors replay
	// the whole change log of their chat, paged.
	h.resyncFromSeq.Store(0)
	if until == math.MaxInt64 {
		h.heardWhileDown = true // the recovery waves (see Up)
		h.resyncMu.Unlock()
		return 0
	}
	if h.waveAt > now.UnixNano() {
		h.resyncMu.Unlock()
		return 0
	}
	h.waveUntil = max(until, now.Add(resyncWindow(delay, spread)).UnixNano())
	h.resyncUntil.Store(h.waveUntil)
	h.waveAt = now.Add(delay).UnixNano()
	h.resyncMu.Unlock()
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
