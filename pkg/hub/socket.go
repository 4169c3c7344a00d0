package hub

import (
	"bytes"
	"strconv"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/topic"
)

// Client is one authenticated connection and the channels it joined.
type Client struct {
	hub  *Hub
	conn Conn
	user string // immutable
	name string // immutable

	// mu guards everything below. The transport's handler (HandleText,
	// Closed) and the request stage both take it, never across a call
	// that waits on the network. The state is small on purpose: an idle
	// connection is this struct and its channels.
	mu sync.Mutex
	// channels is a slice, not a map: a connection holds a handful of
	// channels and idle memory matters.
	channels []channel
	closed   bool
	// bucket meters joins and channel events; inline (16 bytes) rather
	// than a *rate.Limiter, which would be a separate allocation with its
	// own mutex on every connection, idle ones included.
	bucket tokenBucket
	// mbox holds the requests waiting for the stage, oldest first; sched
	// is set while the client is in the stage's run queue or being run,
	// and then every new request queues behind the others.
	mbox   []task
	sched  bool
	paused bool // reads paused because mbox is full
	// suspended is set while a request continues without a goroutine (a
	// message waiting for its group commit): the client stays busy, out of
	// the run queue, until resume.
	suspended bool
}

type channel struct {
	name    string
	topic   topic.Topic
	joinRef string
	metaRef string // presence meta of this connection in the topic
}

// Connect registers an authenticated connection for user (display name
// name) and returns the session the transport feeds its frames to.
func (h *Hub) Connect(conn Conn, user, name string) *Client {
	h.clients.Add(1)
	c := &Client{hub: h, conn: conn, user: user, name: name}
	h.addUser(c)
	if reason, banned := h.Banned(user); banned {
		// Banned during its handshake.
		conn.Close(closecode.Banned, reason)
	}
	return c
}

// User returns the connection's user id.
func (c *Client) User() string { return c.user }

func (c *Client) findLocked(name string) int {
	for i := range c.channels {
		if c.channels[i].name == name {
			return i
		}
	}
	return -1
}

// sendOwn writes a message caused by this connection's own request: on the
// transport's handler it waits for the end of the turn, so a reply and the
// broadcasts it caused leave in one write.
func (c *Client) sendOwn(msg []byte) {
	if l, ok := c.conn.(laterSender); ok {
		_ = l.SendLater(msg)
		return
	}
	_ = c.conn.Send(msg)
}

func (c *Client) reply(joinRef, ref, topicName, status string, response []byte) {
	c.sendOwn(phx.AppendReply(make([]byte, 0, 64+len(topicName)+len(response)), joinRef, ref, topicName, status, response))
}

func (c *Client) replyError(joinRef, ref, topicName, reason string) {
	c.sendOwn(phx.AppendErrorReply(make([]byte, 0, 96+len(topicName)), joinRef, ref, topicName, reason))
}

func (c *Client) push(joinRef, topicName, event string, payload []byte) {
	c.sendOwn(phx.AppendPush(make([]byte, 0, 64+len(topicName)+len(payload)), joinRef, topicName, event, payload))
}

// pushClose tells phoenix.js that the join joinRef of topicName is over.
func (c *Client) pushClose(joinRef, topicName string) {
	c.sendOwn(phx.AppendMessage(make([]byte, 0, 64+len(topicName)), joinRef, joinRef, topicName, phx.EventClose, nil))
}

// HandleBinary rejects binary frames: ElChat's events are JSON.
func (c *Client) HandleBinary([]byte) {
	c.conn.Close(closecode.Unsupported, "binary frames are not supported")
}

// HandleText processes one Phoenix message. It runs on the transport's
// event loop and never waits: what needs the store or presence goes to
// the request stage, behind whatever this client queued before.
func (c *Client) HandleText(data []byte) {
	f, err := phx.Decode(data)
	if err != nil {
		// The transport cuts the reason to what a close frame holds.
		c.conn.Close(closecode.InvalidData, "malformed frame: "+err.Error())
		return
	}
	if len(f.Ref) > MaxRefLen || len(f.JoinRef) > MaxRefLen {
		c.conn.Close(closecode.Policy, "ref or join_ref longer than "+strconv.Itoa(MaxRefLen)+" bytes")
		return
	}
	if f.Topic == phx.TopicPhoenix {
		// Heartbeats are answered at once, even behind queued requests:
		// they only prove the connection alive.
		if f.Event == phx.EventHeartbeat {
			c.reply("", f.Ref, f.Topic, "ok", nil)
		} else {
			c.replyError("", f.Ref, f.Topic, "unmatched topic")
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	fast, slow := c.routeLocked(&f)
	switch {
	case fast == nil && slow == nil:
		// answered already
	case fast != nil && !c.sched:
		fast(c, &f)
	default:
		f.Payload = bytes.Clone(f.Payload) // data is valid only during this call
		if len(c.mbox) >= 4*c.hub.cfg.MailboxSize {
			// Reads pause long before this; only frames already read in
			// the same turn get here. Refuse rather than grow.
			c.replyError(f.JoinRef, f.Ref, f.Topic, "too many requests in flight")
			return
		}
		if fast != nil {
			c.enqueueLocked(func(c *Client) {
				c.mu.Lock()
				defer c.mu.Unlock()
				if !c.closed {
					fast(c, &f)
				}
			}, false)
			return
		}
		c.enqueueLocked(func(c *Client) { slow(c, &f) }, false)
	}
}

// A handler of one message. A fast one runs with c.mu held and does no
// I/O; a slow one runs on the request stage and takes c.mu itself.
type handler func(c *Client, f *phx.Frame)

// routeLocked picks the handler of f, after the checks that are answered
// at arrival (rate limits). It returns nil, nil when f was answered.
func (c *Client) routeLocked(f *phx.Frame) (fast, slow handler) {
	switch f.Event {
	case phx.EventJoin:
		// Joins read the store, so they draw on the same bucket as events.
		if !c.allowLocked() {
			c.replyError(f.JoinRef, f.Ref, f.Topic, "rate limited")
			return nil, nil
		}
		if c.joinNowLocked(f) {
			return nil, nil
		}
		return nil, (*Client).join
	case phx.EventLeave:
		return (*Client).leaveLocked, nil
	}
	c.hub.cfg.Metrics.MessageIn()
	if !c.allowLocked() {
		c.replyError(f.JoinRef, f.Ref, f.Topic, "rate limited")
		return nil, nil
	}
	switch f.Event {
	case "new_message":
		if _, ok := c.hub.cfg.Store.(store.AsyncSaver); ok {
			return (*Client).newMessageLocked, nil
		}
		return nil, (*Client).newMessage
	case "read":
		return nil, (*Client).read
	case "history":
		return nil, (*Client).historyPage
	case "typing":
		return (*Client).typingLocked, nil
	case "edit_message":
		return nil, (*Client).editMessage
	case "delete_message":
		return nil, (*Client).deleteMessage
	case "block", "unblock":
		return nil, (*Client).blockEvent
	}
	return (*Client).unknownLocked, nil
}

// allowLocked takes a token from the connection's bucket.
func (c *Client) allowLocked() bool {
	return c.bucket.allow(time.Now(), c.hub.cfg.PushRate, c.hub.cfg.PushBurst)
}

// channelLocked returns the channel f is for, or false after answering
// f (unmatched topic) or dropping it (a frame for an earlier join).
func (c *Client) channelLocked(f *phx.Frame) (channel, bool) {
	i := c.findLocked(f.Topic)
	if i < 0 {
		c.replyError("", f.Ref, f.Topic, "unmatched topic")
		return channel{}, false
	}
	ch := c.channels[i]
	if f.JoinRef != "" && f.JoinRef != ch.joinRef {
		return channel{}, false // a frame for an earlier join of this topic: Phoenix drops it
	}
	return ch, true
}

// channel is channelLocked for slow handlers.
func (c *Client) channel(f *phx.Frame) (channel, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return channel{}, false
	}
	return c.channelLocked(f)
}

func (c *Client) unknownLocked(f *phx.Frame) {
	if ch, ok := c.channelLocked(f); ok {
		c.replyError(ch.joinRef, f.Ref, f.Topic, "unknown event")
	}
}

// enqueueLocked appends a request to the mailbox and schedules the client.
// A cleanup request survives the connection's close; the others die with
// it (a sender retries with its client_id).
func (c *Client) enqueueLocked(run func(*Client), cleanup bool) {
	c.mbox = append(c.mbox, task{run: run, cleanup: cleanup})
	if !c.sched {
		c.sched = true
		c.hub.stage.schedule(c)
	}
	if !c.paused && !c.closed && len(c.mbox) >= c.hub.cfg.MailboxSize {
		c.paused = true
		c.conn.PauseReads()
	}
}

// runOne runs the client's oldest request and reports whether more wait.
func (c *Client) runOne(panics func(any)) bool {
	c.mu.Lock()
	if len(c.mbox) == 0 {
		c.sched = false
		c.mu.Unlock()
		return false
	}
	t := c.mbox[0]
	c.mbox[0] = task{}
	c.mbox = c.mbox[1:]
	c.mu.Unlock()

	func() {
		if h, ok := c.conn.(holder); ok {
			h.Hold()
			defer h.Release()
		}
		defer func() {
			if v := recover(); v != nil {
				panics(v)
			}
		}()
		t.run(c)
	}()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.suspended {
		return false // resume reschedules the client
	}
	if c.paused && len(c.mbox) <= c.hub.cfg.MailboxSize/2 {
		c.paused = false
		if !c.closed {
			c.conn.ResumeReads()
		}
	}
	if len(c.mbox) == 0 {
		c.mbox = nil // an idle client keeps no mailbox storage
		c.sched = false
		return false
	}
	return true
}

// suspendLocked marks the client busy with a request that goes on without
// a goroutine; resume hands its continuation to the stage, ahead of what
// queued meanwhile.
func (c *Client) suspendLocked() {
	c.sched, c.suspended = true, true
	c.hub.stage.park()
}

func (c *Client) resume(then func(*Client)) {
	c.mu.Lock()
	c.mbox = append(c.mbox, task{})
	copy(c.mbox[1:], c.mbox)
	c.mbox[0] = task{run: then, cleanup: true} // a stored message is delivered even if the sender left
	c.suspended = false
	c.hub.stage.unpark(c)
	c.mu.Unlock()
}

// leaveLocked answers phx_leave at once; the presence change follows on
// the stage.
func (c *Client) leaveLocked(f *phx.Frame) {
	i := c.findLocked(f.Topic)
	if i >= 0 && f.JoinRef != "" && f.JoinRef != c.channels[i].joinRef {
		return // the client raced a server close; Phoenix ignores it
	}
	c.reply(f.JoinRef, f.Ref, f.Topic, "ok", nil)
	if i < 0 {
		return
	}
	ch := c.dropLocked(i)
	c.pushClose(ch.joinRef, f.Topic)
}

// dropLocked removes channel i: no more messages at once, presence left on
// the stage. A lobby's presence in process is left at once when nothing of
// the client's is queued or running, since then its track is done: that
// spares every close of a single node's socket a trip through the stage.
// A chat's leave is broadcast, which stays off the event loop.
func (c *Client) dropLocked(i int) channel {
	ch := c.channels[i]
	c.channels = append(c.channels[:i], c.channels[i+1:]...)
	c.hub.unsubscribe(ch.name, c)
	if p := c.hub.nowPresence; p != nil && ch.topic.Kind == topic.Lobby && !c.sched {
		p.UntrackNow(ch.name, c.user, ch.metaRef)
		return ch
	}
	c.enqueueLocked(func(c *Client) { c.untrack(ch) }, true)
	return ch
}

// Closed releases everything the connection held. Its requests still
// queued are dropped; the presence it leaves is withdrawn on the stage.
func (c *Client) Closed() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	kept := c.mbox[:0]
	for _, t := range c.mbox {
		if t.cleanup {
			kept = append(kept, t)
		}
	}
	clear(c.mbox[len(kept):])
	c.mbox = kept
	for len(c.channels) > 0 {
		c.dropLocked(len(c.channels) - 1)
	}
	c.mu.Unlock()
	c.hub.removeUser(c)
	c.hub.clients.Add(-1)
}
