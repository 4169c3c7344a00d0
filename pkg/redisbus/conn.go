package redisbus

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// subConn is one pub/sub connection and what is subscribed on it. On one
// server a node has one, carrying every channel. On a cluster it has one
// classic connection (the ingress and control channels, the Action Cable
// patterns) and one sharded connection per partition, each carrying the
// topics of its partition (SSUBSCRIBE on the partition's primary), so a
// node holds 1 + partitions connections however many topics it has.
type subConn struct {
	b       *Bus     // immutable
	sharded bool     // immutable: SSUBSCRIBE and SPUBLISH
	part    int      // immutable: the partition, sharded only
	base    []string // immutable: channels always subscribed here
	canary  string   // immutable: this connection's canary channel

	// mu guards ps (the liveness check replaces it when it falls silent)
	// and what has been subscribed on it; subRound holds it while it
	// sends, so a replacement subscribes exactly what was applied.
	mu          sync.Mutex
	ps          *redis.PubSub       // guarded by mu
	applied     map[string]struct{} // guarded by mu: topics subscribed
	appliedPats map[string]struct{} // guarded by mu: patterns subscribed

	// Barriers: PINGs sent after SUBSCRIBEs → the channels to close when
	// the PONG comes back, which proves Redis processed every command sent
	// before it on this connection. Guarded by barMu.
	barMu    sync.Mutex
	barrier  uint64
	barriers map[uint64][]chan struct{}

	subOK    atomic.Bool
	lastRecv atomic.Int64 // unix nanos of the last reply
	// lastAlive is the unix nanos at which the last canary that came back
	// was sent: every message Redis handled before then has arrived. What
	// was lost in an outage was published after it.
	lastAlive  atomic.Int64
	lastCanary atomic.Int64 // unix nanos at which the last canary came back
	// unanswered is the send time (unix nanos) of the oldest canary Redis
	// accepted (its PUBLISH was answered) while none had come back since;
	// no later than lastAlive once one has. Written only by canaryLoop,
	// one PUBLISH per connection at a time.
	unanswered atomic.Int64
	// resubAt is when canaryLoop last replaced the connection (unix
	// nanos): a canary sent before it proves nothing about the new one.
	resubAt atomic.Int64
}

// silent reports whether the connection is deaf although no error says
// so: no canary has come back for liveness, and one Redis accepted has
// been out for longer than a canary's round trip (every). A canary that
// Redis never answered for proves nothing: while commands fail (a
// failover under way) the subscription may well be fine.
func (c *subConn) silent(now time.Time, liveness, every time.Duration) bool {
	if now.Sub(time.Unix(0, c.lastCanary.Load())) <= liveness {
		return false
	}
	u := c.unanswered.Load()
	return u > max(c.lastAlive.Load(), c.resubAt.Load()) && now.Sub(time.Unix(0, u)) > every
}

// canarySent records a canary sent at sent whose PUBLISH Redis answered.
func (c *subConn) canarySent(sent int64) {
	if c.unanswered.Load() <= max(c.lastAlive.Load(), c.resubAt.Load()) {
		c.unanswered.Store(sent)
	}
}

func newSubConn(b *Bus, sharded bool, part int, base []string, canary string) *subConn {
	c := &subConn{b: b, sharded: sharded, part: part, base: base, canary: canary,
		applied: make(map[string]struct{}), appliedPats: make(map[string]struct{}),
		barriers: make(map[uint64][]chan struct{})}
	now := time.Now().UnixNano()
	c.subOK.Store(true)
	c.lastRecv.Store(now)
	c.lastAlive.Store(now)
	c.lastCanary.Store(now)
	return c
}

// open subscribes the base channels on a new connection.
func (c *subConn) open(ctx context.Context) *redis.PubSub {
	if c.sharded {
		return c.b.rdb.SSubscribe(ctx, c.base...)
	}
	return c.b.rdb.Subscribe(ctx, c.base...)
}

func (c *subConn) subscribe(ctx context.Context, ps *redis.PubSub, chans ...string) error {
	if c.sharded {
		return ps.SSubscribe(ctx, chans...)
	}
	return ps.Subscribe(ctx, chans...)
}

func (c *subConn) unsubscribe(ctx context.Context, ps *redis.PubSub, chans ...string) error {
	if c.sharded {
		return ps.SUnsubscribe(ctx, chans...)
	}
	return ps.Unsubscribe(ctx, chans...)
}

// pubsub returns the current connection.
func (c *subConn) pubsub() *redis.PubSub {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ps
}

// resubscribe replaces the connection with a new one subscribed to
// everything the old one was: the liveness check calls it when the old
// one fell silent without an error (a dead peer behind a NAT or a proxy,
// a stuck server), which go-redis cannot notice by itself; and a sharded
// connection whose slot moved to another primary (resharding, failover)
// needs it too. The old one is closed, which also ends a receive blocked
// on it.
func (c *subConn) resubscribe() {
	b := c.b
	c.mu.Lock()
	if b.ctx.Err() != nil { // closing: stop closes c.ps
		c.mu.Unlock()
		return
	}
	old := c.ps
	chans := append([]string(nil), c.base...)
	for t := range c.applied {
		chans = append(chans, b.keys.topicChan(t))
	}
	pats := make([]string, 0, len(c.appliedPats))
	for p := range c.appliedPats {
		pats = append(pats, p)
	}
	// go-redis records the channels even when the commands fail (the
	// server is unreachable) and sends them again on its reconnect.
	ps := c.open(b.ctx)
	chans = chans[len(c.base):]
	for len(chans) > 0 {
		n := min(len(chans), maxSubBatch)
		b.logSub("subscribe", c.subscribe(b.ctx, ps, chans[:n]...))
		chans = chans[n:]
	}
	if len(pats) > 0 {
		b.logSub("psubscribe", ps.PSubscribe(b.ctx, pats...))
	}
	c.ps = ps
	c.mu.Unlock()
	old.Close()
}

// barrierPrefix marks the PINGs whose PONG confirms subscriptions.
const barrierPrefix = "elchat-barrier:"

// sendBarrier PINGs the connection; the PONG closes confirm. If the PING
// fails, the connection is broken and setSub(false) releases every
// barrier.
func (c *subConn) sendBarrier(ps *redis.PubSub, confirm []chan struct{}) {
	c.barMu.Lock()
	if !c.subOK.Load() {
		c.barMu.Unlock()
		for _, ch := range confirm {
			close(ch)
		}
		return
	}
	c.barrier++
	seq := c.barrier
	c.barriers[seq] = confirm
	c.barMu.Unlock()
	c.b.logSub("ping", ps.Ping(c.b.ctx, barrierPrefix+strconv.FormatUint(seq, 10)))
}

// confirmed closes the channels of every barrier up to seq: replies on the
// connection come in order, so the earlier ones are done too.
func (c *subConn) confirmed(seq uint64) {
	c.barMu.Lock()
	for s, chans := range c.barriers {
		if s <= seq {
			for _, ch := range chans {
				close(ch)
			}
			delete(c.barriers, s)
		}
	}
	c.barMu.Unlock()
}

// releaseBarriers closes every pending confirmation: the connection is
// down, and the hub resyncs once it is back.
func (c *subConn) releaseBarriers() {
	c.barMu.Lock()
	for s, chans := range c.barriers {
		for _, ch := range chans {
			close(ch)
		}
		delete(c.barriers, s)
	}
	c.barMu.Unlock()
}

func (c *subConn) setSub(ok bool, err error) {
	if c.subOK.Load() != ok {
		c.subOK.Store(ok)
		if !ok {
			c.b.lapsed.Store(true)
			c.releaseBarriers()
			c.b.releaseWaiters(c)
		}
		c.b.healthChanged(err)
	}
}

// recvLoop reads the connection. go-redis reconnects it inside Receive
// after an error and resubscribes every channel and pattern it has
// recorded (a sharded one on the slot's current primary); each
// resubscription is confirmed by a subscribe reply, which is where the
// Present mirrors are reloaded (they may have missed changes while the
// connection was down).
func (c *subConn) recvLoop() {
	b := c.b
	defer b.wg.Done()
	delay := 50 * time.Millisecond
	pingSent := false
	for {
		ps := c.pubsub()
		msg, err := ps.ReceiveTimeout(b.ctx, b.pingEvery)
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
					_ = ps.Ping(b.ctx)
					continue
				}
			}
			c.setSub(false, err)
			if c.sharded {
				b.refreshSlots() // its primary may have failed over
			}
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
		c.lastRecv.Store(time.Now().UnixNano())
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "sunsubscribe" && c.wants(m.Channel) {
				// Redis dropped a sharded subscription we still want: its
				// slot moved to another primary (resharding). Subscribe
				// again there, and heal as after an outage.
				c.setSub(false, errors.New("redisbus: sharded subscription moved"))
				go c.resubscribe()
				continue
			}
			c.setSub(true, nil)
			if m.Kind == "subscribe" || m.Kind == "ssubscribe" {
				if t, ok := b.keys.topicOf(m.Channel); ok {
					b.pres.load(t)
				}
			}
		case *redis.Pong:
			c.setSub(true, nil)
			if seq, ok := strings.CutPrefix(m.Payload, barrierPrefix); ok {
				if n, err := strconv.ParseUint(seq, 10, 64); err == nil {
					c.confirmed(n)
				}
			}
		case *redis.Message:
			c.setSub(true, nil)
			if m.Channel == c.canary {
				c.handleCanary(m.Payload)
				continue
			}
			b.handle(m)
		}
	}
}

// wants reports whether channel is one this connection should hold.
func (c *subConn) wants(channel string) bool {
	for _, ch := range c.base {
		if ch == channel {
			return true
		}
	}
	t, ok := c.b.keys.topicOf(channel)
	if !ok {
		return false
	}
	c.mu.Lock()
	_, ok = c.applied[t]
	c.mu.Unlock()
	return ok
}

// handleCanary notes a canary that came back: the subscription path works,
// and everything Redis handled before the canary was sent has arrived.
func (c *subConn) handleCanary(p string) {
	b := c.b
	if len(p) < 2 || len(p) < 2+int(p[1]) || p[0] != kindCanary || p[2:2+int(p[1])] != b.opts.NodeID {
		b.stats.forged.Add(1)
		return
	}
	sent, err := strconv.ParseInt(p[2+int(p[1]):], 10, 64)
	if err != nil {
		b.stats.forged.Add(1)
		return
	}
	c.lastCanary.Store(time.Now().UnixNano())
	if sent > c.lastAlive.Load() {
		c.lastAlive.Store(sent) // only recvLoop writes it after New
	}
}
