package redisbus

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/topic"
)

// Options configures a Bus. Zero fields take the documented defaults.
type Options struct {
	// URL is the Redis URL, e.g. redis://:password@host:6379/0.
	URL string
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
	rdb        *redis.Client // commands; safe for concurrent use
	ps         *redis.PubSub // the node's one pub/sub connection, see subLoop and recvLoop
	chanPrefix string        // prefix + "t:"
	pubChan    string        // prefix + "publish"
	ctlChan    string        // prefix + "control"
	hdrFrame   []byte        // kindFrame, len(NodeID), NodeID
	hdrPres    []byte        // kindPresence, len(NodeID), NodeID
	pingEvery  time.Duration
	ctx        context.Context // done when the Bus closes
	cancel     context.CancelFunc
	wg         sync.WaitGroup

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
	// Subscription confirmation. waiting: topics whose Subscribe subLoop
	// has not handled yet → the channel the hub waits on. barriers: PINGs
	// sent on the pub/sub connection after SUBSCRIBEs → the channels to
	// close when the PONG comes back, which proves Redis processed every
	// command sent before it. Both guarded by mu.
	waiting  map[string]chan struct{}
	barriers map[uint64][]chan struct{}
	barrier  uint64 // guarded by mu; sequence of the last barrier PING

	// Health. subOK: the pub/sub connection works; cmdOK: commands work.
	// Ready needs both. healthMu serialises transitions so that each is
	// logged once.
	subOK    atomic.Bool
	cmdOK    atomic.Bool
	lastRecv atomic.Int64 // unix nanos of the last reply on the pub/sub connection
	healthMu sync.Mutex
	healthy  bool // guarded by healthMu: last logged state

	stats struct {
		published, dropped, failed, received, delivered, refused atomic.Uint64
	}

	pres *presence
}

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
	ro, err := redis.ParseURL(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("redisbus: %w", err)
	}
	// RESP2: pub/sub messages arrive as plain replies on the subscriber
	// connection, the mode go-redis's PubSub has handled longest.
	ro.Protocol = 2
	// No retries: a retried pipeline of PUBLISHes could deliver frames
	// twice. Everything else this package sends is idempotent and is
	// repaired by the next heartbeat instead.
	ro.MaxRetries = -1
	if ro.DialTimeout == 0 || ro.DialTimeout > 2*time.Second {
		ro.DialTimeout = 2 * time.Second
	}
	rdb := redis.NewClient(ro)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redisbus: %w", err)
	}

	b := &Bus{
		opts:       opts,
		log:        opts.Logger.With("component", "redisbus", "node", opts.NodeID),
		rdb:        rdb,
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
		barriers:   make(map[uint64][]chan struct{}),
		healthy:    true,
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.subOK.Store(true)
	b.cmdOK.Store(true)
	b.lastRecv.Store(time.Now().UnixNano())
	b.pres = newPresence(b)

	// The plain publish channel is always subscribed: it is an ingress,
	// and it gives the connection a subscription whose confirmation
	// proves the connection live even when the hub has no topics.
	b.ps = rdb.Subscribe(ctx, b.pubChan, b.ctlChan)
	if err := b.pres.heartbeat(ctx); err != nil {
		b.ps.Close()
		rdb.Close()
		return nil, fmt.Errorf("redisbus: %w", err)
	}
	b.wg.Add(4)
	go b.recvLoop()
	go b.subLoop()
	go b.pubLoop()
	go b.pres.loop()
	b.pres.startLoader()
	return b, nil
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
		return b.rdb.Publish(ctx, b.chanPrefix+topic, msg).Err()
	}
	if !b.cmdOK.Load() {
		b.stats.dropped.Add(1)
		return ErrUnavailable
	}
	msg := make([]byte, 0, len(b.hdrFrame)+len(frame))
	msg = append(append(msg, b.hdrFrame...), frame...)
	select {
	case b.pubq <- pubItem{b.chanPrefix + topic, msg, time.Now()}:
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
			pipe.Publish(ctx, it.channel, it.msg)
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
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		err := b.rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			b.setCmd(true, nil)
		}
	}
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
		if b.subOK.Load() {
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
	applied := make(map[string]struct{})     // owned by subLoop
	appliedPats := make(map[string]struct{}) // owned by subLoop
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.subKick:
		}
		b.mu.Lock()
		dirty, dirtyPats := b.dirty, b.dirtyPats
		b.dirty, b.dirtyPats = make(map[string]struct{}), make(map[string]struct{})
		var sub, unsub, psub, punsub []string
		var confirm []chan struct{}
		for t := range dirty {
			_, want := b.topics[t]
			_, have := applied[t]
			if live := b.waiting[t]; live != nil {
				delete(b.waiting, t)
				if want {
					// Whether this round sends the SUBSCRIBE or an earlier
					// one did, the barrier PING sent after this round
					// proves it.
					confirm = append(confirm, live)
				} else {
					close(live) // unsubscribed already: nobody waits for it
				}
			}
			switch {
			case want && !have:
				sub = append(sub, b.chanPrefix+t)
				applied[t] = struct{}{}
			case !want && have:
				unsub = append(unsub, b.chanPrefix+t)
				delete(applied, t)
			case want && have:
				// Unsubscribed and subscribed again before we ran: the
				// subscription never lapsed, but the mirror was dropped.
				b.pres.load(t)
			}
		}
		for p := range dirtyPats {
			_, want := b.patterns[p]
			_, have := appliedPats[p]
			switch {
			case want && !have:
				psub = append(psub, p)
				appliedPats[p] = struct{}{}
			case !want && have:
				punsub = append(punsub, p)
				delete(appliedPats, p)
			}
		}
		b.mu.Unlock()
		ctx := b.ctx
		for len(sub) > 0 {
			n := min(len(sub), maxSubBatch)
			b.logSub("subscribe", b.ps.Subscribe(ctx, sub[:n]...))
			sub = sub[n:]
		}
		for len(unsub) > 0 {
			n := min(len(unsub), maxSubBatch)
			b.logSub("unsubscribe", b.ps.Unsubscribe(ctx, unsub[:n]...))
			unsub = unsub[n:]
		}
		if len(psub) > 0 {
			b.logSub("psubscribe", b.ps.PSubscribe(ctx, psub...))
		}
		if len(punsub) > 0 {
			b.logSub("punsubscribe", b.ps.PUnsubscribe(ctx, punsub...))
		}
		if len(confirm) > 0 {
			b.sendBarrier(confirm)
		}
	}
}

// barrierPrefix marks the PINGs whose PONG confirms subscriptions.
const barrierPrefix = "elchat-barrier:"

// sendBarrier PINGs the pub/sub connection; the PONG closes confirm. If
// the PING fails, the connection is broken and setSub(false) releases
// every barrier.
func (b *Bus) sendBarrier(confirm []chan struct{}) {
	b.mu.Lock()
	if !b.subOK.Load() {
		b.mu.Unlock()
		for _, ch := range confirm {
			close(ch)
		}
		return
	}
	b.barrier++
	seq := b.barrier
	b.barriers[seq] = confirm
	b.mu.Unlock()
	b.logSub("ping", b.ps.Ping(b.ctx, barrierPrefix+strconv.FormatUint(seq, 10)))
}

// confirmed closes the channels of every barrier up to seq: replies on the
// connection come in order, so the earlier ones are done too.
func (b *Bus) confirmed(seq uint64) {
	b.mu.Lock()
	for s, chans := range b.barriers {
		if s <= seq {
			for _, ch := range chans {
				close(ch)
			}
			delete(b.barriers, s)
		}
	}
	b.mu.Unlock()
}

// releaseWaiters closes every pending confirmation: the connection is
// down, and the hub resyncs once it is back.
func (b *Bus) releaseWaiters() {
	b.mu.Lock()
	for s, chans := range b.barriers {
		for _, ch := range chans {
			close(ch)
		}
		delete(b.barriers, s)
	}
	for t, ch := range b.waiting {
		close(ch)
		delete(b.waiting, t)
	}
	b.mu.Unlock()
}

func (b *Bus) logSub(op string, err error) {
	if err != nil && b.ctx.Err() == nil {
		b.log.Debug("pubsub "+op+" failed; go-redis resubscribes on reconnect", "err", err)
	}
}

// recvLoop reads the pub/sub connection. go-redis reconnects it inside
// Receive after an error and resubscribes every channel and pattern it
// has recorded; each resubscription is confirmed by a subscribe reply,
// which is where the Present mirrors are reloaded (they may have missed
// changes while the connection was down).
func (b *Bus) recvLoop() {
	defer b.wg.Done()
	delay := 50 * time.Millisecond
	pingSent := false
	for {
		msg, err := b.ps.ReceiveTimeout(b.ctx, b.pingEvery)
		if b.ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet connection: ping it, so that Ready can tell a
				// quiet connection from a dead one.
				if !pingSent {
					pingSent = true
					_ = b.ps.Ping(b.ctx)
					continue
				}
			}
			b.setSub(false, err)
			pingSent = false
			select {
			case <-b.ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, maxRecvDelay)
			continue
		}
		delay = 50 * time.Millisecond
		pingSent = false
		b.lastRecv.Store(time.Now().UnixNano())
		switch m := msg.(type) {
		case *redis.Subscription:
			b.setSub(true, nil)
			if m.Kind == "subscribe" {
				if t, ok := strings.CutPrefix(m.Channel, b.chanPrefix); ok {
					b.pres.load(t)
				}
			}
		case *redis.Pong:
			b.setSub(true, nil)
			if seq, ok := strings.CutPrefix(m.Payload, barrierPrefix); ok {
				if n, err := strconv.ParseUint(seq, 10, 64); err == nil {
					b.confirmed(n)
				}
			}
		case *redis.Message:
			b.setSub(true, nil)
			b.handle(m)
		}
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
		topic, ok := strings.CutPrefix(m.Channel, b.chanPrefix)
		p := m.Payload
		if !ok || len(p) < 2 || len(p) < 2+int(p[1]) {
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
			b.pres.apply(topic, body)
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

func (b *Bus) handleControl(p string) {
	if len(p) < 2 || len(p) < 2+int(p[1]) || p[0] != kindResync {
		return
	}
	node, body := p[2:2+int(p[1])], p[2+int(p[1]):]
	h := b.handler.Load()
	if node == b.opts.NodeID || h == nil {
		return
	}
	w, err := strconv.ParseInt(body, 10, 64)
	if err != nil {
		b.log.Warn("malformed resync announcement", "from", node)
		return
	}
	b.log.Info("node announced lost frames; resyncing clients", "from", node, "watermark", w)
	h.ResyncRequested(w, node)
}

// handlerBox lets an interface live in an atomic.Pointer.
type handlerBox struct{ hub.BusHandler }

// Run reports to h (messages from other nodes and host apps, presence
// changes, outages) until ctx is done or the Bus is closed. The Bus's
// goroutines run from New; what they learn before Run is only logged,
// except an outage, which h hears about as soon as Run starts.
func (b *Bus) Run(ctx context.Context, h hub.BusHandler) error {
	b.handler.Store(&handlerBox{h})
	b.healthMu.Lock()
	down := !b.healthy
	b.healthMu.Unlock()
	if down {
		h.Down()
	}
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
	case !b.subOK.Load():
		return fmt.Errorf("%w: pub/sub connection down", ErrUnavailable)
	case time.Since(time.Unix(0, b.lastRecv.Load())) > 3*b.pingEvery:
		return fmt.Errorf("%w: pub/sub connection silent", ErrUnavailable)
	}
	return nil
}

func (b *Bus) setSub(ok bool, err error) {
	if b.subOK.Load() != ok {
		b.subOK.Store(ok)
		if !ok {
			b.releaseWaiters()
		}
		b.healthChanged(err)
	}
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
	now := b.subOK.Load() && b.cmdOK.Load()
	if now == b.healthy {
		return
	}
	b.healthy = now
	if now {
		b.log.Info("redis connection recovered")
		b.pres.recovered()
		if h := b.handler.Load(); h != nil {
			h.Up()
		}
	} else {
		b.log.Warn("redis connection lost; publishing is dropped until it returns", "err", err)
		if h := b.handler.Load(); h != nil {
			h.Down()
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
	b.ps.Close()
	b.wg.Wait()
	b.pres.stopLoader()
	return true
}
