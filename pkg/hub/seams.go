package hub

import (
	"context"
	"time"
)

// Conn is the hub's view of one client connection. The transport package
// implements it for every WebSocket engine, and pkg/longpoll for a
// long-poll session (its mailbox is the outbound queue, its POSTs the
// reads).
//
// Every method is safe from any goroutine, never blocks and never calls
// back into the hub synchronously, so the hub may call them while holding
// its own locks (the lock order is hub locks, then the connection's).
type Conn interface {
	// Send queues msg, one encoded Phoenix message, for writing; the
	// transport turns it into a wire frame. msg may be shared by many
	// connections and must never be modified afterwards. A connection
	// whose queue is over its bound closes itself and returns an error.
	Send(msg []byte) error
	// Close sends a close frame with code and reason and then tears the
	// connection down. Safe to call more than once.
	Close(code int, reason string)
	// PauseReads stops reading the connection's frames until ResumeReads;
	// writes go on. The hub pauses a connection whose requests queue up
	// behind the store, instead of buffering them without bound.
	PauseReads()
	ResumeReads()
}

// laterSender is an optional ability of a Conn: SendLater queues a message
// that answers what the connection's own handler is processing, to be
// written together with the others of the same turn.
type laterSender interface {
	SendLater(msg []byte) error
}

// holder is an optional ability of a Conn: between Hold and Release,
// SendLater only queues, so the messages one request causes on its own
// connection leave in one write (see Client.runOne).
type holder interface {
	Hold()
	Release()
}

// Bus carries messages between the nodes of a cluster. The hub always
// delivers to its own subscribers itself; a Bus only carries messages
// between nodes, so the single-node bus does nothing and costs nothing.
// A Bus never builds Phoenix messages: it carries the hub's bytes and
// reports what it learns to the BusHandler given to Run.
type Bus interface {
	// Publish hands msg, an encoded Phoenix broadcast for topic, to every
	// other node that subscribes to topic. It must not block.
	Publish(topic string, msg []byte) error
	// Subscribe records that this node has local subscribers for topic
	// and returns a channel that is closed once the subscription is live:
	// every message published on topic after that reaches this node. The
	// hub calls Subscribe and Unsubscribe for a topic with that topic's
	// lock held, so the calls for one topic arrive in the order the hub
	// decided them; neither may block. A bus that cannot confirm (its
	// server is down) closes the channel anyway: the hub resyncs its
	// clients when the bus recovers.
	Subscribe(topic string) (live <-chan struct{}, err error)
	// Unsubscribe records that this node has no subscribers left for topic.
	Unsubscribe(topic string) error
	// Run reports to h until ctx is done. h's methods may be called from
	// any goroutine, concurrently.
	Run(ctx context.Context, h BusHandler) error
}

// BusHandler receives what a Bus learns. The Hub implements it; its
// methods never block on the network.
type BusHandler interface {
	// Deliver hands msg, published by another node on topic, to this
	// node's subscribers of topic.
	Deliver(topic string, msg []byte)
	// Ingress delivers an event a host application published (Action
	// Cable, plain PUBLISH) to this node's subscribers of topic only:
	// every node receives it. The hub validates it first.
	Ingress(source, topic, event string, payload []byte) error
	// PresenceChanged reports presence entries the bus added or removed
	// on behalf of nodes (a dead node swept, entries restored after an
	// outage). The hub broadcasts them to the topic's clients cluster-wide.
	PresenceChanged(topic string, joins, leaves map[string][]Meta)
	// Down reports that messages between nodes may have been lost since
	// lastAlive, the last moment the bus knew they flowed (a silent
	// subscriber is noticed seconds after it died); Up that they flow
	// again, and what the outage lost (clients catch up from that).
	Down(lastAlive time.Time)
	Up(lost Loss)
	// ResyncRequested reports that node announced that the messages it
	// published since watermark (a message id) may have been lost.
	ResyncRequested(watermark int64, node string)
	// ResyncTopics reports that node could not carry presence changes of
	// these topics to the cluster (a dead node's sweep overflowed the
	// bus): their clients must rejoin, which gives them a fresh
	// presence_state.
	ResyncTopics(topics []string, node string)
}

// Loss is what a bus outage may have cost this node, so that recovery
// does only the work it needs: a command that timed out on a node starved
// of CPU loses nothing, and making every client of the cluster rejoin for
// it would add load exactly when the box has none to spare.
type Loss struct {
	// Received: the subscription lapsed, so this node may have missed
	// what other nodes published; its clients rejoin.
	Received bool
	// Published: frames this node published were dropped or failed; the
	// other nodes' clients rejoin (see resyncAnnouncer).
	Published bool
}

// resyncAnnouncer is an optional ability of a Bus: tell the other nodes
// that this node's messages since watermark may have been lost.
type resyncAnnouncer interface {
	AnnounceResync(ctx context.Context, watermark int64) error
}

// localPresence is an optional ability of a Presence: answer Present from
// memory alone, known false when that would need the network. The event
// loop may ask it; it never asks Present.
type localPresence interface {
	PresentLocal(topic, key string) (present, known bool)
}

// presenceNow is an optional ability of a Presence kept in this process:
// TrackNow and UntrackNow are Track and Untrack without waiting, so the
// event loop may call them (see Client.joinNowLocked and dropLocked). They
// run with Client.mu held.
type presenceNow interface {
	TrackNow(topic, key string, meta Meta)
	UntrackNow(topic, key, ref string)
}

// unreadNow is an optional ability of a store.Store: NothingUnread reports
// true only when the store knows from memory, without waiting, that user
// has no unread chat, as of a moment after the call started; false means
// ask Unread. The event loop may call it.
type unreadNow interface {
	NothingUnread(user string) bool
}

// Meta is one presence entry: one connection of one user in one topic.
type Meta struct {
	Ref      string `json:"phx_ref"`
	Name     string `json:"name"`
	OnlineAt int64  `json:"online_at"`
}

// Presence records who is in which topic, cluster-wide when the
// implementation is shared by several nodes. Its calls may wait on the
// network, so the hub makes them only from its request stage.
type Presence interface {
	// Track adds meta for key (a user id) to topic.
	Track(ctx context.Context, topic, key string, meta Meta) error
	// Untrack removes the meta with ref from key in topic.
	Untrack(ctx context.Context, topic, key, ref string) error
	// List returns the presence state of topic: key to metas.
	List(ctx context.Context, topic string) (map[string][]Meta, error)
	// Present reports whether key has at least one meta in topic.
	Present(ctx context.Context, topic, key string) (bool, error)
}
