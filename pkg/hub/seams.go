package hub

import "context"

// Conn is the hub's view of one client connection. The transport package
// implements it for both the epoll and the portable engine.
type Conn interface {
	// Send queues frame, a complete server WebSocket frame, for writing.
	// The frame may be shared by many connections and must never be
	// modified afterwards. Send never blocks; a connection whose queue is
	// over its bound closes itself and returns an error.
	Send(frame []byte) error
	// Close sends a close frame with code and reason and then tears the
	// connection down. Safe to call more than once and from any goroutine.
	Close(code int, reason string)
}

// laterSender is an optional ability of a Conn: SendLater queues a frame
// that answers what the connection's own handler is processing, to be
// written together with the others of the same turn.
type laterSender interface {
	SendLater(frame []byte) error
}

// Bus fans frames out to the other nodes of a cluster. The hub always
// delivers to its own subscribers itself; a Bus only carries frames between
// nodes, so the single-node bus does nothing and costs nothing.
type Bus interface {
	// Publish hands frame, a wire-ready broadcast frame for topic, to every
	// other node that subscribes to topic. It must not block on the network.
	Publish(topic string, frame []byte) error
	// Subscribe and Unsubscribe tell the bus whether this node has local
	// subscribers for topic. The hub calls them on the first join and the
	// last leave of a topic on this node.
	Subscribe(topic string) error
	Unsubscribe(topic string) error
	// Run delivers frames published by other nodes to deliver until ctx is
	// done. deliver may be called from any goroutine.
	Run(ctx context.Context, deliver func(topic string, frame []byte)) error
}

// Meta is one presence entry: one connection of one user in one topic.
type Meta struct {
	Ref      string `json:"phx_ref"`
	Name     string `json:"name"`
	OnlineAt int64  `json:"online_at"`
}

// Presence records who is in which topic, cluster-wide when the
// implementation is shared by several nodes.
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
