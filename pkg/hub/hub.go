// Package hub is the heart of ElChat: it owns the local connections, the
// channels they joined (lobbies and chats), presence and the routing of
// every message. It speaks to the rest of the system through small seams
// (Conn, Bus, Presence, store.Store) and never knows which implementation
// sits behind them. It produces Phoenix messages; only the transport turns
// them into wire frames.
//
// # Where work runs
//
// The transport calls a Client's HandleText on its event loop, which must
// never wait. HandleText answers at once what needs no I/O (heartbeats,
// protocol errors, leaves, typing, refusals, and a lobby join that the
// store and presence can answer from memory) and hands the rest (joins,
// messages, read marks, history, presence) to the request stage: a fixed
// pool of goroutines that runs each client's requests in arrival order
// (stage.go). A client whose requests pile up stops being read until they
// drain.
//
// # Lock order
//
//	Client.mu → shard.mu → Bus and Presence internals → Conn internals
//
// rules.mu (blocks, bans, opened chats) and userShard.mu are leaves: taken
// under any of these, with nothing called while they are held.
//
// A lobby join answered on the event loop (Client.joinNowLocked) calls
// the store's NothingUnread and the in-process presence's TrackNow with
// Client.mu held; both take only leaf locks of their own.
//
// stage.mu is taken with Client.mu held (to schedule), never the other
// way round. No lock is held across a store, presence or bus call that
// may wait on the network; Bus.Subscribe and Unsubscribe never wait, which
// is why they may run under shard.mu.
package hub

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"github.com/elchat/elchat/internal/logx"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
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
	StoreTimeout time.Duration // deadline for one store or presence call (default 5s)
	PushRate     float64       // channel events per second per connection (default 20)
	PushBurst    int           // burst above PushRate (default 40)
	// MaxReplyBytes bounds one join, history or lobby reply (default 256
	// KiB). Keep it well below the transport's outbound queue bound: a
	// longer page is cut and marked has_more, so the client pages instead
	// of being dropped as a slow consumer.
	MaxReplyBytes int
	// Workers is the request stage's pool: how many store and presence
	// calls the node makes at once (default 256). A message waits for its
	// group commit holding a worker, so the pool also caps how many
	// messages one commit can carry: too small a pool lowers throughput.
	Workers int
	// MailboxSize is how many requests of one connection may wait for the
	// stage before its reads pause (default 16).
	MailboxSize int
	// ResyncDelay and ResyncSpread pace the rejoin of every client after
	// the bus lost messages (defaults 2s and 5s).
	ResyncDelay, ResyncSpread time.Duration
	// NotifyAfter, when positive, asks the store for a message.unread
	// webhook event for every message whose recipient is not in the chat
	// when it is saved, due NotifyAfter later (store.NewMessage). The
	// event row commits in the message's own transaction, so the hub
	// adds no goroutine and no call to the receiver per message: only a
	// presence lookup before the save, answered from memory like the one
	// in deliver.
	NotifyAfter time.Duration
	// WatermarkPeriod is how often a clustered node samples the store's
	// last id, the point clients catch up from after lost fanout
	// (default 5s).
	WatermarkPeriod time.Duration
	// EditWindow is how long after sending an author may edit or delete a
	// message (default 15 minutes; negative: no limit).
	EditWindow time.Duration
	// Grants, when set, is the "granted" chat policy: a chat join needs a
	// grant it accepts, or a chat opened by one before (rules.go).
	Grants GrantVerifier
}

// Defaults of Config, also used by the node's configuration.
const (
	DefaultMaxChannels   = 100
	DefaultMaxBodyBytes  = 4096
	DefaultMaxReplyBytes = 256 << 10
	DefaultWorkers       = 256
	DefaultMailboxSize   = 16
	// MaxRefLen bounds join_ref and ref: phoenix.js sends short counters,
	// and both are kept per channel and echoed in every reply.
	MaxRefLen = 64
)

func (c *Config) setDefaults() {
	if c.MaxChannels <= 0 {
		c.MaxChannels = DefaultMaxChannels
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
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
	if c.MaxReplyBytes <= 0 {
		c.MaxReplyBytes = DefaultMaxReplyBytes
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.MailboxSize <= 0 {
		c.MailboxSize = DefaultMailboxSize
	}
	if c.ResyncDelay <= 0 {
		c.ResyncDelay = 2 * time.Second
	}
	if c.ResyncSpread <= 0 {
		c.ResyncSpread = 5 * time.Second
	}
	if c.WatermarkPeriod <= 0 {
		c.WatermarkPeriod = 5 * time.Second
	}
	if c.EditWindow == 0 {
		c.EditWindow = DefaultEditWindow
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Presence == nil {
		c.Presence = NewMemoryPresence()
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
}

const shardCount = 64

// Hub routes messages between the connections of this node and, through
// the Bus, the other nodes of the cluster.
type Hub struct {
	cfg       Config            // immutable after New
	clustered bool              // immutable: a Bus was configured, so fanout can be lost
	seed      maphash.Seed      // immutable: picks a topic's shard
	shards    [shardCount]shard // each guarded by its own lock
	refBase   [4]byte           // immutable: random per node, keeps phx_refs unique across nodes
	refSeq    atomic.Uint32     // counter part of phx_refs
	clients   atomic.Int64      // connected clients on this node
	stage     *stage            // immutable
	closeOnce sync.Once

	// The store's and presence's answers without waiting, when they have
	// them (nil otherwise); immutable. With both, a lobby join runs on the
	// event loop.
	nowUnread   unreadNow
	nowPresence presenceNow

	rules rules                 // blocks, bans and opened chats (rules.go)
	users [shardCount]userShard // local clients by user, for bans

	// Catch-up after lost fanout (resync.go). Joins load the atomics
	// without a lock; busDown, busUp and resyncRequested change them
	// holding resyncMu, so that their read-modify-writes do not interleave.
	resyncMu   sync.Mutex
	resyncFrom atomic.Int64 // joins with a later last_id catch up from here instead
	// The same for change cursors: joins with a later since_seq catch up
	// from here.
	resyncFromSeq atomic.Int64
	resyncUntil   atomic.Int64 // unix nanoseconds; math.MaxInt64 while the bus is down
	waveAt        int64        // guarded by resyncMu: unix nanoseconds the newest rejoin wave starts at
	waveUntil     int64        // guarded by resyncMu: unix nanoseconds that wave's catch-up window ends at
	// heardWhileDown: another node announced a loss while the bus was
	// down; the recovery must wave. Guarded by resyncMu.
	heardWhileDown bool
	marks          watermarks // store LastID and LastSeq samples, see resync.go

	logs hubLogs // immutable after New

	msgDeadline atomic.Pointer[sharedDeadline] // see messageCtx
}

// logEvery bounds how often one kind of repeated failure is logged: an
// outage fails every publish and presence call, and a line for each would
// bury everything else.
const logEvery = 10 * time.Second

// hubLogs are the hub's repeated-failure lines, each at most once per
// logEvery with a count.
type hubLogs struct {
	publish, subscribe, unsubscribe *logx.Repeated
	track, untrack, list, present   *logx.Repeated
}

func newHubLogs(l *slog.Logger) hubLogs {
	w := func(msg string) *logx.Repeated { return logx.NewRepeated(l, slog.LevelWarn, msg, logEvery) }
	return hubLogs{
		publish: w("bus publish failed"), subscribe: w("bus subscribe failed"), unsubscribe: w("bus unsubscribe failed"),
		track: w("presence track failed"), untrack: w("presence untrack failed"), list: w("presence list failed"),
		present: w("presence lookup failed; notifying lobby"),
	}
}

// shard holds the local subscribers of the topics that hash to it. Holding
// the read lock while sending is fine: Conn.Send never blocks.
type shard struct {
	mu     sync.RWMutex
	topics map[string]*subscribers // guarded by mu
}

// subscribers are one topic's local clients and the bus subscription
// they share.
type subscribers struct {
	clients []*Client       // guarded by the shard's mu
	live    <-chan struct{} // immutable: closed once the bus subscription is confirmed
}

// New returns a hub ready to accept clients. Call Run to connect it to the
// bus, and Close when the node stops.
func New(cfg Config) *Hub {
	h := &Hub{clustered: cfg.Bus != nil, seed: maphash.MakeSeed()}
	if cfg.Bus == nil {
		cfg.Bus = NewLocalBus().Node()
	}
	cfg.setDefaults()
	h.cfg = cfg
	h.logs = newHubLogs(cfg.Logger)
	for i := range h.shards {
		h.shards[i].topics = make(map[string]*subscribers)
	}
	h.rules.init()
	h.nowUnread, _ = cfg.Store.(unreadNow)
	h.nowPresence, _ = cfg.Presence.(presenceNow)
	if _, err := rand.Read(h.refBase[:]); err != nil {
		panic(err)
	}
	h.stage = newStage(cfg.Workers, func(v any) {
		h.cfg.Logger.Error("hub: request panicked", "panic", fmt.Sprint(v))
	})
	return h
}

// Run connects the hub to its bus until ctx is done: messages from other
// nodes are delivered, and on a clustered node the store's watermark is
// sampled so that lost fanout can be healed (resync.go).
func (h *Hub) Run(ctx context.Context) error {
	go h.refreshBans(ctx, DefaultBanRefresh)
	if h.clustered {
		go h.trackWatermark(ctx, h.cfg.WatermarkPeriod)
		if _, err := h.cfg.Bus.Subscribe(controlTopic); err != nil {
			h.cfg.Logger.Warn("bus subscribe failed", "topic", controlTopic, "err", err)
		}
	}
	return h.cfg.Bus.Run(ctx, (*busHandler)(h))
}

// Drain waits until every request handed to the stage is done (the
// presence of closed connections withdrawn, say), or ctx ends.
func (h *Hub) Drain(ctx context.Context) error { return h.stage.wait(ctx) }

// Close finishes the queued requests and stops the request stage. Clients
// must be gone first (the transport shut down).
func (h *Hub) Close() { h.closeOnce.Do(h.stage.close) }

// Clients reports how many clients are connected to this node.
func (h *Hub) Clients() int64 { return h.clients.Load() }

// Presence exposes the presence table (for the HTTP API).
func (h *Hub) Presence() Presence { return h.cfg.Presence }

// Store exposes the store (for the HTTP API).
func (h *Hub) Store() store.Store { return h.cfg.Store }

func (h *Hub) shard(topic string) *shard {
	return &h.shards[h.shardIndex(topic)]
}

func (h *Hub) shardIndex(key string) uint64 { return maphash.String(h.seed, key) % shardCount }

// subscribe adds c to topic's local subscribers; the first one subscribes
// the node on the bus. The returned channel is closed once the bus
// subscription is live. The bus call happens under the shard lock so that
// a last leave and the next first join reach the bus in their order.
func (h *Hub) subscribe(topic string, c *Client) <-chan struct{} {
	s := h.shard(topic)
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.topics[topic]
	if subs == nil {
		live, err := h.cfg.Bus.Subscribe(topic)
		if err != nil {
			h.logs.subscribe.Log("topic", topic, "err", err)
			live = closedChan
		}
		subs = &subscribers{live: live}
		s.topics[topic] = subs
	}
	subs.clients = append(subs.clients, c)
	return subs.live
}

var closedChan = func() <-chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// unsubscribe removes c from topic's local subscribers; the last one
// unsubscribes the node on the bus.
func (h *Hub) unsubscribe(topic string, c *Client) {
	s := h.shard(topic)
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.topics[topic]
	if subs == nil {
		return
	}
	for i, o := range subs.clients {
		if o == c {
			last := len(subs.clients) - 1
			subs.clients[i] = subs.clients[last]
			subs.clients[last] = nil
			subs.clients = subs.clients[:last]
			break
		}
	}
	if len(subs.clients) > 0 {
		return
	}
	delete(s.topics, topic)
	if err := h.cfg.Bus.Unsubscribe(topic); err != nil {
		h.logs.unsubscribe.Log("topic", topic, "err", err)
	}
}

// deliverLocal sends msg to every local subscriber of topic. It allocates
// nothing per recipient.
func (h *Hub) deliverLocal(topic string, msg []byte) int {
	return h.deliverFrom(topic, msg, nil, nil)
}

// deliverFrom is deliverLocal for a message caused by origin's request:
// origin's copy joins the messages of its handler's turn (see sendOwn).
func (h *Hub) deliverFrom(topic string, msg []byte, origin, except *Client) int {
	s := h.shard(topic)
	s.mu.RLock()
	n := 0
	if subs := s.topics[topic]; subs != nil {
		for _, c := range subs.clients {
			switch c {
			case except:
				continue
			case origin:
				c.sendOwn(msg)
			default:
				_ = c.conn.Send(msg)
			}
			n++
		}
	}
	s.mu.RUnlock()
	h.cfg.Metrics.FramesOut(n)
	return n
}

// encodeBroadcast builds the one message every subscriber of topic gets.
func encodeBroadcast(topic, event string, payload []byte) []byte {
	return phx.AppendBroadcast(make([]byte, 0, len(topic)+len(event)+len(payload)+24), topic, event, payload)
}

// Broadcast sends event with payload (a JSON object) to every subscriber
// of topic on every node, encoding the message once.
func (h *Hub) Broadcast(topic, event string, payload []byte) {
	h.broadcastFrom(topic, event, payload, nil, nil)
}

// BroadcastLocal sends event to the subscribers of topic on this node
// only. It serves messages every node receives anyway, such as host-app
// publishes read from Redis by each node.
func (h *Hub) BroadcastLocal(topic, event string, payload []byte) {
	h.deliverLocal(topic, encodeBroadcast(topic, event, payload))
}

// broadcastFrom sends an event caused by origin's request (nil: by none)
// to every subscriber of topic but except, here and on the other nodes.
func (h *Hub) broadcastFrom(topic, event string, payload []byte, origin, except *Client) {
	msg := encodeBroadcast(topic, event, payload)
	h.deliverFrom(topic, msg, origin, except)
	if err := h.cfg.Bus.Publish(topic, msg); err != nil {
		h.cfg.Metrics.BusError()
		h.logs.publish.Log("topic", topic, "err", err)
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

// sharedDeadline is a store deadline that the messages of a short window
// share, made once per window instead of once per message.
type sharedDeadline struct {
	ctx    context.Context
	cancel context.CancelFunc // kept, not called: ctx ends by itself at its deadline
	renew  int64              // unix nanoseconds after which a new one is made
}

// deadlineWindows is how many windows one StoreTimeout spans: a message
// gets between 98 % and 100 % of StoreTimeout.
const deadlineWindows = 50

// messageCtx is the deadline for one message's save. A context with its
// own timer per message was the largest allocation of the message path
// after the message itself (the context, its timer, its done channel, and
// a timer-heap insert and delete); the store calls of a window of
// StoreTimeout/50 now share one, which ends by itself, so at most 50 live
// at a time. Two callers racing past a window's end may each make one;
// the extra one just expires.
func (h *Hub) messageCtx() context.Context {
	now := time.Now()
	if d := h.msgDeadline.Load(); d != nil && now.UnixNano() < d.renew {
		return d.ctx
	}
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(h.cfg.StoreTimeout))
	h.msgDeadline.Store(&sharedDeadline{ctx: ctx, cancel: cancel,
		renew: now.Add(h.cfg.StoreTimeout / deadlineWindows).UnixNano()})
	return ctx
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
