package redisbus

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/internal/logx"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/topic"
)

// Options configures a Bus. Zero fields take the documented defaults.
type Options struct {
	// URL is the Redis URL, e.g. redis://:password@host:6379/0. With
	// Sentinels, only its user, password and database are used.
	URL string
	// Sentinels, when set, are the host:port addresses of the Redis
	// Sentinels that watch the primary named MasterName: the bus follows
	// whichever server they promote.
	Sentinels  []string
	MasterName string
	// Cluster, when set, are seed host:port addresses of a Redis Cluster
	// (7 or later): fanout goes over sharded pub/sub, topics spread over
	// Partitions (default 16) hash tags, and every key of a topic sits in
	// its partition's slot. Exclusive with Sentinels.
	Cluster    []string
	Partitions int
	// Prefix is put in front of every key and channel (default "elchat:").
	Prefix string
	// NodeID names this node in the cluster (default: 8 random
	// characters). It must be unique among live nodes, at most 64 bytes,
	// without NUL. A restarted node should take a new one.
	NodeID string
	// PresenceTTL bounds how long a dead node's presence survives it
	// (default 30s). Nodes heartbeat every PresenceTTL/3.
	PresenceTTL time.Duration
	// PublishQueue bounds the frames waiting to be published (default
	// 8192). Publish drops and counts what does not fit.
	PublishQueue int
	// Logger receives state changes (default slog.Default()).
	Logger *slog.Logger
	// Liveness bounds how long the pub/sub connection may go without
	// proving itself (default 3s): the node publishes a canary to itself
	// every Liveness/4 and, when none has come back for Liveness, declares
	// the subscription dead, reports Down, and subscribes again on a new
	// connection.
	Liveness time.Duration
	// OnPublish, when set, is called after each pipelined batch of
	// PUBLISHes with its size and the lag of its oldest message (queueing
	// plus the round trip). It runs on the publishing goroutine: keep it
	// cheap.
	OnPublish func(frames int, lag time.Duration)
}

// Errors returned by Publish. The hub counts and logs them; neither is
// retried, since a cluster broadcast is at-most-once like Redis pub/sub.
var (
	ErrQueueFull   = errors.New("redisbus: publish queue full")
	ErrUnavailable = errors.New("redisbus: redis unavailable")
	ErrClosed      = errors.New("redisbus: closed")
)

// Message kinds, the first byte of every payload on a topic channel.
const (
	kindFrame    = 'F' // an encoded Phoenix message for the topic's subscribers
	kindPresence = 'P' // presence changes, for the nodes' Present mirrors
	kindResync   = 'R' // on the control channel: a node lost frames, see AnnounceResync
	kindCanary   = 'C' // on the node's canary channel: a liveness probe it sent itself
	kindTopics   = 'T' // on the control channel: presence changes of these topics were lost
)

const (
	maxBatch     = 256 // commands per pipeline round trip
	maxSubBatch  = 512 // channels per SUBSCRIBE command
	downRetry    = 200 * time.Millisecond
	maxRecvDelay = time.Second
)

// Bus is the Redis implementation of hub.Bus and, through Presence, of
// hub.Presence. It is safe for concurrent use.
type Bus struct {
	// Immutable after New.
	opts       Options
	log        *slog.Logger
	rdb        redis.UniversalClient // commands; safe for concurrent use
	keys       keyspace
	chanPrefix string // prefix + "t:"
	pubChan    string // prefix + "publish"
	ctlChan    string // prefix + "control"
	// conns are the pub/sub connections: conns[0] carries the ingress and
	// control channels and the Action Cable patterns (and, on one server,
	// every topic); on a cluster conns[1+k] carries partition k's topics.
	conns     []*subConn
	hdrFrame  []byte // kindFrame, len(NodeID), NodeID
	hdrPres   []byte // kindPresence, len(NodeID), NodeID
	pingEvery time.Duration
	ctx       context.Context // done when the Bus closes
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	pubq chan pubItem // bounded queue drained by pubLoop

	// handler is what Run was given, nil outside Run. An atomic pointer:
	// recvLoop reads it for every message.
	handler atomic.Pointer[handlerBox]
	// direct makes Publish write synchronously once Close stopped the
	// publisher, so the node's last presence leaves still go out.
	direct atomic.Bool

	mu        sync.Mutex
	topics    map[string]struct{}    // guarded by mu: topics the hub wants
	dirty     map[string]struct{}    // guarded by mu: topics whose subscription subLoop must reconcile
	patterns  map[string]*acListener // guarded by mu: PSUBSCRIBE pattern → Action Cable listener
	dirtyPats map[string]struct{}    // guarded by mu: patterns subLoop must reconcile
	closed    bool                   // guarded by mu
	subKick   chan struct{}          // cap 1: wakes subLoop
	// Subscription confirmation: topics whose Subscribe subLoop has not
	// handled yet → the channel the hub waits on (guarded by mu); each
	// subConn confirms them with its barrier PINGs.
	waiting map[string]chan struct{}

	// Health. Every subConn's subOK: its connection works; cmdOK: commands
	// work. Ready needs all. healthMu serialises transitions so that each
	// is logged once.
	cmdOK    atomic.Bool
	healthMu sync.Mutex
	healthy  bool // guarded by healthMu: last logged state
	// What the current outage lost, reported with Up (hub.Loss): lapsed
	// is set whenever a pub/sub connection goes down; lostAt is dropped +
	// failed when the last recovery was reported (guarded by healthMu).
	lapsed atomic.Bool
	lostAt uint64

	stats struct {
		published, dropped, failed, received, delivered, refused, forged, silent atomic.Uint64
	}

	pres *presence

	// Repeated refusals, logged at most once per logEvery with a count:
	// whoever can PUBLISH could otherwise flood the log.
	refusedLog, forgedLog *logx.Repeated
}

const logEvery = 10 * time.Second

type pubItem struct {
	channel string
	msg     []byte
	at      time.Time // when Publish queued it, for the lag observer
}

// New connects to Redis and starts the node: its pub/sub connection, its
// publisher, its heartbeat and sweeper. It fails if Redis does not answer
// within ctx; after that, outages are survived (see the package doc).
func New(ctx context.Context, opts Options) (*Bus, error) {
	if opts.Prefix == "" {
		opts.Prefix = "elchat:"
	}
	if opts.NodeID == "" {
		var r [6]byte
		if _, err := rand.Read(r[:]); err != nil {
			return nil, err
		}
		opts.NodeID = base64.RawURLEncoding.EncodeToString(r[:])
	}
	if len(opts.NodeID) > 64 || strings.ContainsRune(opts.NodeID, 0) {
		return nil, fmt.Errorf("redisbus: invalid node id %q", opts.NodeID)
	}
	if opts.PresenceTTL <= 0 {
		opts.PresenceTTL = 30 * time.Second
	}
	if opts.PublishQueue <= 0 {
		opts.PublishQueue = 8192
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Liveness <= 0 {
		opts.Liveness = 3 * time.Second
	}
	if opts.Partitions <= 0 {
		opts.Partitions = defaultPartitions
	}
	if len(opts.Cluster) > 0 && len(opts.Sentinels) > 0 {
		return nil, errors.New("redisbus: Cluster and Sentinels are exclusive")
	}
	setClientLogger(opts.Logger)
	rdb, err := newClient(opts)
	if err != nil {
		return nil, fmt.Errorf("redisbus: %w", err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redisbus: %w", err)
	}

	b := &Bus{
		opts:       opts,
		log:        opts.Logger.With("component", "redisbus", "node", opts.NodeID),
		rdb:        rdb,
		keys:       newKeyspace(opts.Prefix, len(opts.Cluster) > 0, opts.Partitions),
		chanPrefix: opts.Prefix + "t:",
		pubChan:    opts.Prefix + "publish",
		ctlChan:    opts.Prefix + "control",
		hdrFrame:   header(kindFrame, opts.NodeID),
		hdrPres:    header(kindPresence, opts.NodeID),
		pingEvery:  min(max(opts.PresenceTTL/3, 100*time.Millisecond), 5*time.Second),
		pubq:       make(chan pubItem, opts.PublishQueue),
		topics:     make(map[string]struct{}),
		dirty:      make(map[string]struct{}),
		patterns:   make(map[string]*acListener),
		dirtyPats:  make(map[string]struct{}),
		subKick:    make(chan struct{}, 1),
		waiting:    make(map[string]chan struct{}),
		healthy:    true,
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.cmdOK.Store(true)
	// The plain publish channel is always subscribed: it is an ingress,
	// and it gives the connection a subscription whose confirmation
	// proves the connection live even when the hub has no topics. Each
	// sharded connection has its canary for that.
	c0canary := b.keys.prefix + "canary:" + opts.NodeID
	b.conns = append(b.conns, newSubConn(b, false, 0, []string{b.pubChan, b.ctlChan, c0canary}, c0canary))
	if b.keys.cluster {
		for k := range b.keys.partitions() {
			can := b.keys.canary(opts.NodeID, k)
			b.conns = append(b.conns, newSubConn(b, true, k, []string{can}, can))
		}
	}
	b.pres = newPresence(b)
	b.refusedLog = logx.NewRepeated(b.log, slog.LevelWarn, "ingress message refused; dropped", logEvery)
	b.forgedLog = logx.NewRepeated(b.log, slog.LevelWarn, "malformed node-to-node message; dropped", logEvery)

	// The plain publish channel is always subscribed: it is an ingress,
	// and it gives the connection a subscription whose confirmation
	// proves the connection live even when the hub has no topics.
	for _, c := range b.conns {
		c.ps = c.open(ctx)
	}
	if err := b.pres.heartbeat(ctx, false); err != nil {
		for _, c := range b.conns {
			c.ps.Close()
		}
		rdb.Close()
		return nil, fmt.Errorf("redisbus: %w", err)
	}
	b.wg.Add(5 + len(b.conns))
	go b.pres.sweeper()
	for _, c := range b.conns {
		go c.recvLoop()
	}
	go b.subLoop()
	go b.pubLoop()
	go b.pres.loop()
	go b.canaryLoop()
	b.pres.startLoader()
	return b, nil
}

// newClient builds the command client: one server from opts.URL, or the
// primary the Sentinels name.
func newClient(opts Options) (redis.UniversalClient, error) {
	if opts.URL == "" && (len(opts.Cluster) > 0 || len(opts.Sentinels) > 0) {
		opts.URL = "redis://" // no password, database 0
	}
	ro, err := redis.ParseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	// RESP2: pub/sub messages arrive as plain replies on the subscriber
	// connection, the mode go-redis's PubSub has handled longest.
	ro.Protocol = 2
	// No retries: a retried pipeline of PUBLISHes could deliver frames
	// twice. Everything else this package sends is idempotent and is
	// repaired by the next heartbeat instead.
	ro.MaxRetries = -1
	// Deadlines of the contexts this package passes bound the network
	// reads too, not only the wait for a connection.
	ro.ContextTimeoutEnabled = true
	if ro.DialTimeout == 0 || ro.DialTimeout > 2*time.Second {
		ro.DialTimeout = 2 * time.Second
	}
	if len(opts.Cluster) > 0 {
		// MaxRedirects follows MOVED and ASK while slots move
		// (resharding, a primary failing over); a redirected PUBLISH is
		// not a retry, Redis refused it.
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 opts.Cluster,
			Username:              ro.Username,
			Password:              ro.Password,
			Protocol:              ro.Protocol,
			MaxRetries:            ro.MaxRetries,
			MaxRedirects:          8,
			DialTimeout:           ro.DialTimeout,
			ContextTimeoutEnabled: ro.ContextTimeoutEnabled,
			TLSConfig:             ro.TLSConfig,
		}), nil
	}
	if len(opts.Sentinels) == 0 {
		return redis.NewClient(ro), nil
	}
	if opts.MasterName == "" {
		return nil, errors.New("sentinels need a master name")
	}
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            opts.MasterName,
		SentinelAddrs:         opts.Sentinels,
		Username:              ro.Username,
		Password:              ro.Password,
		DB:                    ro.DB,
		Protocol:              ro.Protocol,
		MaxRetries:            ro.MaxRetries,
		DialTimeout:           ro.DialTimeout,
		ContextTimeoutEnabled: ro.ContextTimeoutEnabled,
		TLSConfig:             ro.TLSConfig,
	}), nil
}

var clientLoggerOnce sync.Once

// setClientLogger routes go-redis's own log lines (reconnects, Sentinel
// switches) through slog, each kind at most once a minute with a count.
// go-redis has one logger per process: the first Bus sets it.
func setClientLogger(l *slog.Logger) {
	clientLoggerOnce.Do(func() {
		redis.SetLogger(logx.NewPrintf(l.With("component", "go-redis"), time.Minute))
	})
}

func header(kind byte, id string) []byte {
	return append([]byte{kind, byte(len(id))}, id...)
}

var _ hub.Bus = (*Bus)(nil)

// NodeID returns this node's id.
func (b *Bus) NodeID() string { return b.opts.NodeID }

// Presence returns the cluster-wide presence backed by the same Redis.
func (b *Bus) Presence() hub.Presence { return b.pres }

// Publish queues msg for the other nodes subscribed to topic. It never
// blocks: with the queue full or Redis known down it drops the message and
// returns an error. The message is copied once, behind the origin header.
// Once Close has stopped the publisher it writes synchronously instead, so
// the node's last presence leaves still reach the others.
func (b *Bus) Publish(topic string, frame []byte) error {
	if b.direct.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		msg := append(append([]byte(nil), b.hdrFrame...), frame...)
		if b.keys.cluster {
			return b.rdb.SPublish(ctx, b.keys.topicChan(topic), msg).Err()
		}
		return b.rdb.Publish(ctx, b.keys.topicChan(topic), msg).Err()
	}
	if !b.cmdOK.Load() {
		b.stats.dropped.Add(1)
		return ErrUnavailable
	}
	msg := make([]byte, 0, len(b.hdrFrame)+len(frame))
	msg = append(append(msg, b.hdrFrame...), frame...)
	select {
	case b.pubq <- pubItem{b.keys.topicChan(topic), msg, time.Now()}:
		return nil
	default:
		b.stats.dropped.Add(1)
		return ErrQueueFull
	}
}

// pubLoop drains the publish queue, up to maxBatch PUBLISHes per round
// trip. One goroutine and one pipeline at a time keep each publisher's
// frames in order.
func (b *Bus) pubLoop() {
	defer b.wg.Done()
	batch := make([]pubItem, 0, maxBatch)
	for {
		select {
		case <-b.ctx.Done():
			return
		case it := <-b.pubq:
			batch = append(batch[:0], it)
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case it := <-b.pubq:
				batch = append(batch, it)
			default:
				break fill
			}
		}
		if !b.cmdOK.Load() { // went down while these waited
			b.stats.dropped.Add(uint64(len(batch)))
			continue
		}
		ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
		pipe := b.rdb.Pipeline()
		for _, it := range batch {
			if b.keys.cluster {
				pipe.SPublish(ctx, it.channel, it.msg)
			} else {
				pipe.Publish(ctx, it.channel, it.msg)
			}
		}
		_, err := pipe.Exec(ctx)
		cancel()
		if err == nil && b.opts.OnPublish != nil {
			b.opts.OnPublish(len(batch), time.Since(batch[0].at))
		}
		clear(batch) // let the frames go
		if err != nil {
			if b.ctx.Err() != nil {
				return
			}
			b.stats.failed.Add(uint64(len(batch)))
			b.setCmd(false, err)
			b.waitCmd()
			continue
		}
		b.stats.published.Add(uint64(len(batch)))
	}
}

// waitCmd, called when commands fail, drops whatever is queued and probes
// Redis until it answers, so that Publish fails fast meanwhile instead of
// queueing frames that would be stale when Redis returns.
func (b *Bus) waitCmd() {
	t := time.NewTicker(downRetry)
	defer t.Stop()
	for !b.cmdOK.Load() {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
	drain:
		for {
			select {
			case <-b.pubq:
				b.stats.dropped.Add(1)
			default:
				break drain
			}
		}
		b.refreshSlots()
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		err := b.probe(ctx)
		cancel()
		if err == nil {
			b.setCmd(true, nil)
		}
	}
}

// refreshSlots makes a cluster client reload its slot map (in the
// background): after a primary failed over or slots moved, commands and
// sharded subscriptions must go to the new owners. A no-op on one server.
func (b *Bus) refreshSlots() {
	if cc, ok := b.rdb.(*redis.ClusterClient); ok {
		cc.ReloadState(b.ctx)
	}
}

// probe checks that commands work again: PING, on a cluster to every
// primary (a PING answered by one says nothing of the others).
func (b *Bus) probe(ctx context.Context) error {
	if cc, ok := b.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() })
	}
	return b.rdb.Ping(ctx).Err()
}

// Subscribe records that this node has subscribers for topic. The
// SUBSCRIBE itself is sent by subLoop, followed by a PING: the returned
// channel is closed when its PONG arrives, which proves Redis has
// processed the SUBSCRIBE. The caller never waits on Redis here. While the
// pub/sub connection is down the channel is closed at once: the hub
// resyncs its clients when Redis is back, so waiting would gain nothing.
func (b *Bus) Subscribe(topic string) (<-chan struct{}, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	b.topics[topic] = struct{}{}
	b.dirty[topic] = struct{}{}
	live := b.waiting[topic]
	if live == nil {
		live = make(chan struct{})
		if b.connOf(topic).subOK.Load() {
			b.waiting[topic] = live
		} else {
			close(live)
		}
	}
	b.mu.Unlock()
	if mirrorable(topic) {
		b.pres.mirror(topic)
	}
	b.kick()
	return live, nil
}

// mirrorable reports whether Present on topic is answered from memory. Only
// chats: the hub asks Present of a chat on every message, while a lobby is
// asked about only by the HTTP API, and every connected user has one, so a
// lobby mirror would be idle memory per connection and a Redis read per
// connect for nothing.
func mirrorable(name string) bool { return topic.IsChat(name) }

// Unsubscribe records that this node has no subscribers left for topic.
func (b *Bus) Unsubscribe(topic string) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	delete(b.topics, topic)
	b.dirty[topic] = struct{}{}
	b.mu.Unlock()
	b.pres.unmirror(topic)
	b.kick()
	return nil
}

func (b *Bus) kick() {
	select {
	case b.subKick <- struct{}{}:
	default:
	}
}

func (b *Bus) subscribed(topic string) bool {
	b.mu.Lock()
	_, ok := b.topics[topic]
	b.mu.Unlock()
	return ok
}

// subLoop owns SUBSCRIBE and UNSUBSCRIBE on the pub/sub connection. It
// compares what the hub wants (topics) with what it has sent (applied)
// for the topics marked dirty, so a burst of joins becomes a few
// multi-channel commands and a subscribe/unsubscribe flap costs nothing.
// go-redis records every channel passed to PubSub.Subscribe, even when
// the command fails, and resubscribes all of them on reconnect, so a
// failure here needs no retry.
func (b *Bus) subLoop() {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.subKick:
		}
		b.subRound()
	}
}

// connOf returns the connection that carries topic.
func (b *Bus) connOf(topic string) *subConn {
	if !b.keys.cluster {
		return b.conns[0]
	}
	return b.conns[1+b.keys.partition(topic)]
}

// subRound is one round of subLoop.
func (b *Bus) subRound() {
	type work struct {
		sub, unsub, psub, punsub []string
		confirm                  []chan struct{}
	}
	for _, c := range b.conns {
		c.mu.Lock()
	}
	defer func() {
		for _, c := range b.conns {
			c.mu.Unlock()
		}
	}()
	todo := make(map[*subConn]*work)
	get := func(c *subConn) *work {
		w := todo[c]
		if w == nil {
			w = &work{}
			todo[c] = w
		}
		return w
	}
	b.mu.Lock()
	dirty, dirtyPats := b.dirty, b.dirtyPats
	b.dirty, b.dirtyPats = make(map[string]struct{}), make(map[string]struct{})
	for t := range dirty {
		c := b.connOf(t)
		_, want := b.topics[t]
		_, have := c.applied[t]
		if live := b.waiting[t]; live != nil {
			delete(b.waiting, t)
			if want {
				// Whether this round sends the SUBSCRIBE or an earlier
				// one did, the barrier PING sent after this round proves
				// it.
				get(c).confirm = append(get(c).confirm, live)
			} else {
				close(live) // unsubscribed already: nobody waits for it
			}
		}
		switch {
		case want && !have:
			get(c).sub = append(get(c).sub, b.keys.topicChan(t))
			c.applied[t] = struct{}{}
		case !want && have:
			get(c).unsub = append(get(c).unsub, b.keys.topicChan(t))
			delete(c.applied, t)
		case want && have:
			// Unsubscribed and subscribed again before we ran: the
			// subscription never lapsed, but the mirror was dropped.
			b.pres.load(t)
		}
	}
	c0 := b.conns[0]
	for p := range dirtyPats {
		_, want := b.patterns[p]
		_, have := c0.appliedPats[p]
		switch {
		case want && !have:
			get(c0).psub = append(get(c0).psub, p)
			c0.appliedPats[p] = struct{}{}
		case !want && have:
			get(c0).punsub = append(get(c0).punsub, p)
			delete(c0.appliedPats, p)
		}
	}
	b.mu.Unlock()
	ctx := b.ctx
	for c, w := range todo {
		ps := c.ps
		for len(w.sub) > 0 {
			n := min(len(w.sub), maxSubBatch)
			b.logSub("subscribe", c.subscribe(ctx, ps, w.sub[:n]...))
			w.sub = w.sub[n:]
		}
		for len(w.unsub) > 0 {
			n := min(len(w.unsub), maxSubBatch)
			b.logSub("unsubscribe", c.unsubscribe(ctx, ps, w.unsub[:n]...))
			w.unsub = w.unsub[n:]
		}
		if len(w.psub) > 0 {
			b.logSub("psubscribe", ps.PSubscribe(ctx, w.psub...))
		}
		if len(w.punsub) > 0 {
			b.logSub("punsubscribe", ps.PUnsubscribe(ctx, w.punsub...))
		}
		if len(w.confirm) > 0 {
			c.sendBarrier(ps, w.confirm)
		}
	}
}

// releaseWaiters closes the pending confirmations of c's topics: the
// connection is down, and the hub resyncs once it is back.
func (b *Bus) releaseWaiters(c *subConn) {
	b.mu.Lock()
	for t, ch := range b.waiting {
		if b.connOf(t) == c {
			close(ch)
			delete(b.waiting, t)
		}
	}
	b.mu.Unlock()
}

func (b *Bus) logSub(op string, err error) {
	if err != nil && b.ctx.Err() == nil {
		b.log.Debug("pubsub "+op+" failed; go-redis resubscribes on reconnect", "err", err)
	}
}

func (b *Bus) handle(m *redis.Message) {
	b.stats.received.Add(1)
	switch {
	case m.Pattern != "":
		b.handleActionCable(m)
	case m.Channel == b.pubChan:
		b.handlePlain(m.Payload)
	case m.Channel == b.ctlChan:
		b.handleControl(m.Payload)
	default:
		// Only channels this node subscribed arrive here, and it
		// subscribes only topics the hub validated. What a message on
		// them carries is trusted: nodes publish ElChat's own events
		// there, so whoever can PUBLISH on P t:* is as trusted as a node
		// (see the package doc). Malformed messages are counted.
		topic, ok := b.keys.topicOf(m.Channel)
		p := m.Payload
		if !ok || len(p) < 2 || len(p) < 2+int(p[1]) || (p[0] != kindFrame && p[0] != kindPresence) {
			b.stats.forged.Add(1)
			return
		}
		body := p[2+int(p[1]):]
		switch p[0] {
		case kindFrame:
			if p[2:2+int(p[1])] == b.opts.NodeID {
				return // the hub delivered it locally already
			}
			if h := b.handler.Load(); h != nil {
				b.stats.delivered.Add(1)
				h.Deliver(topic, []byte(body))
			}
		case kindPresence:
			b.pres.apply(topic, body, p[2:2+int(p[1])] == b.opts.NodeID)
		}
	}
}

// errSilent is what the liveness check reports for a pub/sub connection
// whose canaries stopped coming back.
var errSilent = errors.New("redisbus: pub/sub connection silent: canaries not coming back")

// canaryLoop proves the subscription path end to end: every Liveness/4 it
// PUBLISHes the time on this node's canary channel through the command
// connection, and recvLoop notes when each comes back (handleCanary).
// When none has come back for Liveness although one reached Redis (see
// subConn.silent), the pub/sub connection is dead or stuck although no
// error says so: the bus reports Down (with the send time of the last
// canary that came back as the last sign of life), and subscribes again
// on a new connection; the hub resyncs its clients once the new one
// answers. Detection therefore takes between Liveness and 1.25 ×
// Liveness. A PUBLISH refused outright (Redis down, a failover under
// way) sends no canary, so a subscription back before the commands is
// not replaced a second time for want of canaries.
func (b *Bus) canaryLoop() {
	defer b.wg.Done()
	every := b.opts.Liveness / 4
	t := time.NewTicker(every)
	defer t.Stop()
	lastFix := make([]time.Time, len(b.conns))
	for i := range lastFix {
		lastFix[i] = time.Now()
	}
	sending := make([]atomic.Bool, len(b.conns))
	var sendWG sync.WaitGroup
	defer sendWG.Wait()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		for i, c := range b.conns {
			if c.silent(now, b.opts.Liveness, every) && now.Sub(lastFix[i]) > b.opts.Liveness {
				lastFix[i] = now
				c.resubAt.Store(now.UnixNano())
				b.stats.silent.Add(1)
				c.setSub(false, errSilent)
				b.refreshSlots()
				c.resubscribe()
			}
			// The PUBLISH must not hold up the check: a stuck command
			// connection blocks it until its deadline.
			if sending[i].Swap(true) {
				continue
			}
			msg := append(header(kindCanary, b.opts.NodeID), strconv.FormatInt(now.UnixNano(), 10)...)
			sendWG.Add(1)
			go func() {
				defer sendWG.Done()
				defer sending[i].Store(false)
				ctx, cancel := context.WithTimeout(b.ctx, every)
				var err error
				if c.sharded {
					err = b.rdb.SPublish(ctx, c.canary, msg).Err()
				} else {
					err = b.rdb.Publish(ctx, c.canary, msg).Err()
				}
				cancel()
				// Only a PUBLISH Redis answered proves the canary was
				// fanned out. One that timed out may have been stuck in
				// a dial to a dead primary as well as on a frozen
				// connection; go-redis drops that connection, and the
				// next canary goes out on a fresh one.
				if err == nil {
					c.canarySent(now.UnixNano())
				}
				if err != nil && b.ctx.Err() == nil {
					b.log.Debug("canary publish failed", "err", err)
				}
			}()
		}
	}
}

// AnnounceResync tells every other node that frames this node published
// may have been lost and that their clients must catch up from watermark,
// a message id older than the loss. A node whose own link to Redis broke
// while the others' did not calls it once it is back: the others saw no
// outage and would not otherwise know.
func (b *Bus) AnnounceResync(ctx context.Context, watermark int64) error {
	msg := append(header(kindResync, b.opts.NodeID), strconv.FormatInt(watermark, 10)...)
	return b.rdb.Publish(ctx, b.ctlChan, msg).Err()
}

// lost counts the frames that did not reach Redis.
func (b *Bus) lost() uint64 { return b.stats.dropped.Load() + b.stats.failed.Load() }

// waitQueue waits until the publish queue has room for n more frames, or
// ctx ends. The sweeper uses it to publish a dead node's leaves with
// back-pressure rather than have Publish drop them.
func (b *Bus) waitQueue(ctx context.Context, n int) error {
	room := max(cap(b.pubq)-n, cap(b.pubq)/2)
	for i := 0; len(b.pubq) > room; i++ {
		if i > 100000 { // bounded: 200 s
			return ErrQueueFull
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// announceTopics asks every node to resync the clients of topics (kind
// 'T' on the control channel, topics separated by newlines, in messages
// of at most 1000 topics).
func (b *Bus) announceTopics(ctx context.Context, topics []string) error {
	for len(topics) > 0 {
		n := min(len(topics), 1000)
		msg := append(header(kindTopics, b.opts.NodeID), strings.Join(topics[:n], "\n")...)
		if err := b.rdb.Publish(ctx, b.ctlChan, msg).Err(); err != nil {
			return err
		}
		topics = topics[n:]
	}
	return nil
}

func (b *Bus) handleControl(p string) {
	if len(p) >= 3 && len(p) >= 2+int(p[1]) && p[1] != 0 && p[0] == kindTopics {
		b.handleTopics(p[2:2+int(p[1])], p[2+int(p[1]):])
		return
	}
	if len(p) < 3 || len(p) < 2+int(p[1]) || p[1] == 0 || p[0] != kindResync {
		b.stats.forged.Add(1)
		b.forgedLog.Log("channel", b.ctlChan)
		return
	}
	node, body := p[2:2+int(p[1])], p[2+int(p[1]):]
	h := b.handler.Load()
	if node == b.opts.NodeID || h == nil {
		return
	}
	w, err := strconv.ParseInt(body, 10, 64)
	if err != nil || w < 0 {
		b.stats.forged.Add(1)
		b.forgedLog.Log("channel", b.ctlChan, "from", node)
		return
	}
	b.log.Info("node announced lost frames; resyncing clients", "from", node, "watermark", w)
	h.ResyncRequested(w, node)
}

// handleTopics serves a kind 'T' announcement: the clients of those
// topics that are valid and subscribed here rejoin.
func (b *Bus) handleTopics(node, body string) {
	h := b.handler.Load()
	if node == b.opts.NodeID || h == nil {
		return
	}
	var topics []string
	for _, t := range strings.Split(body, "\n") {
		if _, err := topic.Parse(t); err != nil {
			b.stats.forged.Add(1)
			continue
		}
		if b.subscribed(t) {
			topics = append(topics, t)
		}
	}
	if len(topics) > 0 {
		h.ResyncTopics(topics, node)
	}
}

// handlerBox lets an interface live in an atomic.Pointer.
type handlerBox struct{ hub.BusHandler }

// Run reports to h (messages from other nodes and host apps, presence
// changes, outages) until ctx is done or the Bus is closed. The Bus's
// goroutines run from New; what they learn before Run is only logged,
// except an outage, which h hears about as soon as Run starts.
func (b *Bus) Run(ctx context.Context, h hub.BusHandler) error {
	// Under healthMu, like healthChanged: a recovery cannot slip between
	// attaching h and telling it of an outage under way (h would stay
	// down until the next outage).
	b.healthMu.Lock()
	b.handler.Store(&handlerBox{h})
	if !b.healthy {
		h.Down(b.lastAlive())
	}
	b.healthMu.Unlock()
	b.pres.kick() // heartbeat now: sweeps waited for a handler
	select {
	case <-ctx.Done():
	case <-b.ctx.Done():
	}
	b.handler.Store(nil)
	return nil
}

// Ready reports whether Redis answers and the subscription is live: nil
// when both hold, otherwise why not. For /readyz.
func (b *Bus) Ready() error {
	switch {
	case b.ctx.Err() != nil:
		return ErrClosed
	case !b.cmdOK.Load():
		return fmt.Errorf("%w: commands failing", ErrUnavailable)
	}
	for _, c := range b.conns {
		switch {
		case !c.subOK.Load():
			return fmt.Errorf("%w: pub/sub connection down", ErrUnavailable)
		case time.Since(time.Unix(0, c.lastRecv.Load())) > 3*b.pingEvery,
			c.silent(time.Now(), b.opts.Liveness, b.opts.Liveness/4):
			return fmt.Errorf("%w: pub/sub connection silent", ErrUnavailable)
		}
	}
	return nil
}

// subsOK reports whether every pub/sub connection works.
func (b *Bus) subsOK() bool {
	for _, c := range b.conns {
		if !c.subOK.Load() {
			return false
		}
	}
	return true
}

// lastAlive is the oldest last sign of life of the pub/sub connections:
// anything lost was published after it.
func (b *Bus) lastAlive() time.Time {
	t := int64(math.MaxInt64)
	for _, c := range b.conns {
		t = min(t, c.lastAlive.Load())
	}
	return time.Unix(0, t)
}

func (b *Bus) setCmd(ok bool, err error) {
	if b.cmdOK.Load() != ok {
		b.cmdOK.Store(ok)
		b.healthChanged(err)
	}
}

// healthChanged logs each loss and recovery once and, on recovery, makes
// the heartbeat re-assert this node's presence: a restarted Redis without
// persistence lost it.
func (b *Bus) healthChanged(err error) {
	b.healthMu.Lock()
	defer b.healthMu.Unlock()
	now := b.subsOK() && b.cmdOK.Load()
	if now == b.healthy {
		return
	}
	b.healthy = now
	if now {
		lost := b.stats.dropped.Load() + b.stats.failed.Load()
		h := b.handler.Load()
		loss := hub.Loss{Published: lost != b.lostAt}
		if h != nil {
			// Swap: a lapse racing with this recovery stays reported,
			// by this Up or by the next one.
			loss.Received = b.lapsed.Swap(false)
			b.lostAt = lost
		} else {
			loss.Received = b.lapsed.Load()
		}
		b.log.Info("redis connection recovered", "subscription_lapsed", loss.Received, "frames_lost", loss.Published)
		b.pres.recovered()
		if h != nil {
			h.Up(loss)
		}
	} else {
		b.log.Warn("redis connection lost; publishing is dropped until it returns", "err", err)
		if h := b.handler.Load(); h != nil {
			h.Down(b.lastAlive())
		}
	}
}

// Stats are the Bus's counters since New.
type Stats struct {
	Published uint64 // frames sent to Redis
	Dropped   uint64 // frames refused by Publish or discarded during an outage
	Failed    uint64 // frames whose PUBLISH failed
	Received  uint64 // pub/sub messages read, all kinds
	Delivered uint64 // messages handed to Run's handler
	Refused   uint64 // host-app messages refused at the ingress
	Forged    uint64 // node-to-node messages refused: malformed, or for no valid topic
	Silent    uint64 // times the pub/sub connection was found silent and replaced
}

// Stats returns the counters.
func (b *Bus) Stats() Stats {
	return Stats{
		Published: b.stats.published.Load(),
		Dropped:   b.stats.dropped.Load(),
		Failed:    b.stats.failed.Load(),
		Received:  b.stats.received.Load(),
		Delivered: b.stats.delivered.Load(),
		Refused:   b.stats.refused.Load(),
		Forged:    b.stats.forged.Load(),
		Silent:    b.stats.silent.Load(),
	}
}

// Close stops the node and removes its presence from Redis, publishing the
// leaves, as the sweeper would do after PresenceTTL.
func (b *Bus) Close() {
	h := b.handler.Load() // before stop: Run forgets it when it returns
	if !b.stop() {
		return
	}
	b.direct.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := b.pres.sweep(ctx, b.opts.NodeID, h); err != nil {
		b.log.Warn("presence cleanup on close failed; the sweeper will do it", "err", err)
	}
	b.rdb.Close()
}

// stop ends the goroutines; it reports false if the Bus was closed already.
func (b *Bus) stop() bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false
	}
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	// ReceiveTimeout does not watch ctx while it reads: closing the
	// pub/sub connection is what unblocks the receive loop. go-redis
	// makes Close safe against a concurrent Receive or Subscribe.
	for _, c := range b.conns {
		c.mu.Lock() // resubscribe swaps it only while ctx is live
		c.ps.Close()
		c.mu.Unlock()
	}
	b.wg.Wait()
	b.pres.stopLoader()
	return true
}
