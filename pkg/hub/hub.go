// Package hub is the heart of ElChat: it owns the local connections, the
// channels they joined (lobbies and chats), presence and the routing of
// every frame. It speaks to the rest of the system through small seams
// (Conn, Bus, Presence, store.Store) and never knows which implementation
// sits behind them.
package hub

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"hash/maphash"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elchat/elchat/internal/pace"
	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/transport"
)

// Config holds the hub's dependencies and limits. Zero limits take the
// documented defaults.
type Config struct {
	Store    store.Store
	Bus      Bus      // nil: single node
	Presence Presence // nil: in-process presence
	Logger   *slog.Logger
	Metrics  Metrics // nil: no metrics

	MaxChannels  int           // channels per connection (default 100)
	MaxBodyBytes int           // message body limit in bytes (default 4096)
	HistoryLimit int           // messages in a join reply and per history page (default 50)
	CatchUpLimit int           // messages after last_id in a join reply (default 1000)
	StoreTimeout time.Duration // deadline for one store call (default 5s)
	PushRate     float64       // channel events per second per connection (default 20)
	PushBurst    int           // burst above PushRate (default 40)
}

func (c *Config) setDefaults() {
	if c.MaxChannels <= 0 {
		c.MaxChannels = 100
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 4096
	}
	if c.HistoryLimit <= 0 {
		c.HistoryLimit = 50
	}
	if c.CatchUpLimit <= 0 {
		c.CatchUpLimit = 1000
	}
	if c.PushRate <= 0 {
		c.PushRate = 20
	}
	if c.PushBurst <= 0 {
		c.PushBurst = 40
	}
	if c.StoreTimeout <= 0 {
		c.StoreTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Bus == nil {
		c.Bus = NewLocalBus().Node()
	}
	if c.Presence == nil {
		c.Presence = NewMemoryPresence()
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
}

const shardCount = 64

// Hub routes frames between the connections of this node and, through the
// Bus, the other nodes of the cluster.
type Hub struct {
	cfg     Config            // immutable after New
	seed    maphash.Seed      // immutable: picks a topic's shard
	shards  [shardCount]shard // each guarded by its own lock
	refBase [4]byte           // immutable: random per node, keeps phx_refs unique across nodes
	refSeq  atomic.Uint32     // counter part of phx_refs
	clients atomic.Int64      // connected clients on this node

	// Catch-up after lost fanout (see BusDown). All atomic.
	safeID      atomic.Int64 // a store LastID sample at least one sampling period old
	resyncFrom  atomic.Int64 // joins with a later last_id catch up from here instead
	resyncUntil atomic.Int64 // unix nanoseconds; math.MaxInt64 while the bus is down
}

// shard holds the local subscribers of the topics that hash to it. Holding
// the read lock while sending is fine: Conn.Send never blocks.
type shard struct {
	mu     sync.RWMutex
	topics map[string][]*Client // guarded by mu
}

// New returns a hub ready to accept clients. Call Run to receive frames
// from other nodes.
func New(cfg Config) *Hub {
	cfg.setDefaults()
	h := &Hub{cfg: cfg, seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].topics = make(map[string][]*Client)
	}
	if _, err := rand.Read(h.refBase[:]); err != nil {
		panic(err)
	}
	return h
}

// Run delivers frames from the other nodes until ctx is done.
func (h *Hub) Run(ctx context.Context) error {
	return h.cfg.Bus.Run(ctx, func(topic string, frame []byte) {
		h.cfg.Metrics.BusDelivered()
		h.deliverLocal(topic, frame, nil)
	})
}

// Clients reports how many clients are connected to this node.
func (h *Hub) Clients() int64 { return h.clients.Load() }

// Presence exposes the presence table (for the HTTP API).
func (h *Hub) Presence() Presence { return h.cfg.Presence }

// Store exposes the store (for the HTTP API).
func (h *Hub) Store() store.Store { return h.cfg.Store }

func (h *Hub) shard(topic string) *shard {
	return &h.shards[maphash.String(h.seed, topic)%shardCount]
}

// subscribe adds c to topic's local subscribers and tells the bus when c
// is the first one on this node.
func (h *Hub) subscribe(topic string, c *Client) {
	s := h.shard(topic)
	s.mu.Lock()
	subs := s.topics[topic]
	first := len(subs) == 0
	s.topics[topic] = append(subs, c)
	s.mu.Unlock()
	if first {
		if err := h.cfg.Bus.Subscribe(topic); err != nil {
			h.cfg.Logger.Warn("bus subscribe failed", "topic", topic, "err", err)
		}
	}
}

func (h *Hub) unsubscribe(topic string, c *Client) {
	s := h.shard(topic)
	s.mu.Lock()
	subs := s.topics[topic]
	for i, o := range subs {
		if o == c {
			last := len(subs) - 1
			subs[i] = subs[last]
			subs[last] = nil
			subs = subs[:last]
			break
		}
	}
	empty := len(subs) == 0
	if empty {
		delete(s.topics, topic)
	} else {
		s.topics[topic] = subs
	}
	s.mu.Unlock()
	if empty {
		if err := h.cfg.Bus.Unsubscribe(topic); err != nil {
			h.cfg.Logger.Warn("bus unsubscribe failed", "topic", topic, "err", err)
		}
	}
}

// deliverLocal sends frame to every local subscriber of topic except
// except. It allocates nothing per recipient.
func (h *Hub) deliverLocal(topic string, frame []byte, except *Client) int {
	return h.deliverFrom(topic, frame, nil, except)
}

// deliverFrom is deliverLocal for a frame caused by origin's request:
// origin's copy joins the frames of its handler's turn (see sendOwn).
func (h *Hub) deliverFrom(topic string, frame []byte, origin, except *Client) int {
	s := h.shard(topic)
	s.mu.RLock()
	n := 0
	for _, c := range s.topics[topic] {
		switch c {
		case except:
			continue
		case origin:
			c.sendOwn(frame)
		default:
			_ = c.conn.Send(frame)
		}
		n++
	}
	s.mu.RUnlock()
	h.cfg.Metrics.FramesOut(n)
	return n
}

// Broadcast sends event with payload (a JSON object) to every subscriber
// of topic on every node, encoding the frame once.
func (h *Hub) Broadcast(topic, event string, payload []byte) {
	h.broadcast(topic, event, payload, nil)
}

// TrackWatermark samples the store's last message id every period until
// ctx ends. A node whose bus can lose frames runs it, so that BusDown knows
// an id that every frame published before the outage is older than.
func (h *Hub) TrackWatermark(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	var prev int64
	for {
		c, cancel := h.ctx()
		id, err := h.cfg.Store.LastID(c)
		cancel()
		if err == nil {
			// Publish the previous sample: it is at least one period old, so
			// messages up to it were published before any outage that
			// starts now.
			h.safeID.Store(prev)
			prev = id
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// BusDown records that cross-node frames are being lost from about now:
// until the resync after BusUp ends, a chat join whose last_id is newer
// than the last safe watermark catches up from the watermark instead, so
// a rejoin fills the gap even though the client saw later messages.
func (h *Hub) BusDown() {
	prev := h.resyncUntil.Swap(math.MaxInt64)
	if prev == math.MaxInt64 {
		return // already down
	}
	w := h.safeID.Load()
	if prev > time.Now().UnixNano() {
		// A resync is still under way: keep the older of the watermarks.
		w = min(w, h.resyncFrom.Load())
	}
	h.resyncFrom.Store(w)
}

// BusUp ends an outage: after delay (other nodes reconnect too), every
// local client is asked to rejoin (Resync over spread), and joins keep
// catching up from the watermark for a while longer.
func (h *Hub) BusUp(ctx context.Context, delay, spread time.Duration) int {
	h.resyncUntil.Store(time.Now().Add(delay + spread + 2*time.Minute).UnixNano())
	select {
	case <-ctx.Done():
		return 0
	case <-time.After(delay):
	}
	return h.Resync(ctx, spread)
}

// Watermark returns the id from which this node's clients catch up after
// its last bus outage (see BusDown); other nodes use it when the node
// announces that its frames were lost.
func (h *Hub) Watermark() int64 { return h.resyncFrom.Load() }

// ResyncRequested handles another node's announcement that frames it
// published since watermark were lost: unless this node is resyncing
// already (a shared outage, where its own watermark serves just as well),
// its clients rejoin and catch up from watermark, after delay and spread
// over spread like BusUp.
func (h *Hub) ResyncRequested(ctx context.Context, watermark int64, delay, spread time.Duration) int {
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
	select {
	case <-ctx.Done():
		return 0
	case <-time.After(delay):
	}
	return h.Resync(ctx, spread)
}

// catchUpFrom returns where a join asking for messages after lastID must
// start: lastID itself, or the watermark while fanout may have lost frames.
func (h *Hub) catchUpFrom(lastID int64) int64 {
	if time.Now().UnixNano() < h.resyncUntil.Load() {
		if from := h.resyncFrom.Load(); from < lastID {
			return from
		}
	}
	return lastID
}

// Resync makes every client of this node rejoin its channels, spread over
// spread: each local topic gets a phx_error broadcast (null join_ref, so
// phoenix.js applies it to the current join), and phoenix.js rejoins after
// its rejoin backoff with its join params, whose last_id fetches whatever
// the client missed. The node calls it when the bus may have lost frames.
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

// BroadcastLocal sends event to the subscribers of topic on this node
// only. It serves messages every node receives anyway, such as host-app
// publishes read from Redis by each node.
func (h *Hub) BroadcastLocal(topic, event string, payload []byte) {
	buf := transport.Begin(make([]byte, 0, transport.MaxHeaderSize+len(topic)+len(event)+len(payload)+24))
	h.deliverLocal(topic, transport.Finish(phx.AppendBroadcast(buf, topic, event, payload)), nil)
}

func (h *Hub) broadcast(topic, event string, payload []byte, except *Client) {
	h.broadcastFrom(topic, event, payload, nil, except)
}

// broadcastFrom is broadcast for an event caused by origin's request.
func (h *Hub) broadcastFrom(topic, event string, payload []byte, origin, except *Client) {
	buf := transport.Begin(make([]byte, 0, transport.MaxHeaderSize+len(topic)+len(event)+len(payload)+24))
	frame := transport.Finish(phx.AppendBroadcast(buf, topic, event, payload))
	h.deliverFrom(topic, frame, origin, except)
	if err := h.cfg.Bus.Publish(topic, frame); err != nil {
		h.cfg.Metrics.BusError()
		h.cfg.Logger.Warn("bus publish failed", "topic", topic, "err", err)
	}
}

// newRef returns a phx_ref unique across the cluster: 8 bytes of time, 4
// random bytes per node mixed with a counter, url-safe base64 without
// padding (16 characters), as Phoenix does.
func (h *Hub) newRef() string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixNano()))
	binary.BigEndian.PutUint32(b[8:], binary.BigEndian.Uint32(h.refBase[:])^h.refSeq.Add(1))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (h *Hub) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), h.cfg.StoreTimeout)
}

// Metrics receives the hub's counters. Implementations must be cheap and
// lock-free: they run on the per-message path.
type Metrics interface {
	Join(kind string)
	MessageIn()
	FramesOut(n int)
	BusDelivered()
	BusError()
}

type nopMetrics struct{}

func (nopMetrics) Join(string)   {}
func (nopMetrics) MessageIn()    {}
func (nopMetrics) FramesOut(int) {}
func (nopMetrics) BusDelivered() {}
func (nopMetrics) BusError()     {}
