// Package redisbus lets many ElChat nodes behind a load balancer behave as
// one service: it implements hub.Bus (fanout of broadcast frames between
// nodes) and hub.Presence (who is in which topic, cluster-wide) on one
// Redis server, a Sentinel-managed primary, or a Redis Cluster.
//
// # Redis keys and channels
//
// P is Options.Prefix ("elchat:" by default). Nothing is written outside P.
//
// Channels:
//
//	P t:<topic>      fanout of <topic>. Each message is a header and a body.
//	                 Header: 1 kind byte, 1 length byte n, n bytes of origin
//	                 node id (10 bytes with the default 8-character ids).
//	                 Kind 'F': body is the wire-ready WebSocket frame the hub
//	                 built (encoded once, copied once behind the header);
//	                 every subscribed node but the origin hands it to its
//	                 local subscribers. Kind 'P': body is presence changes,
//	                 "+key\0ref\0" or "-key\0ref\0" repeated, published by
//	                 the presence scripts for the Present mirrors.
//	P publish        plain ingress for host apps (see below).
//	P control        node to node: kind 'R' (header as above), body a
//	                 decimal message id. A node that lost its link to Redis
//	                 alone announces with it that the frames it published
//	                 since that id may be lost (AnnounceResync); the others
//	                 resync their clients from it (ResyncRequested). Kind
//	                 'T', body topics separated by newlines: presence
//	                 changes of those topics were lost (ResyncTopics).
//	P canary:<id>    the node's liveness probe: kind 'C' (header as above),
//	                 body the decimal unix nanoseconds it was sent at.
//	                 Published by the node to itself, see "Liveness".
//	<AC prefix>:user:*, <AC prefix>:chat:*
//	                 Action Cable ingress, pattern-subscribed by
//	                 ListenActionCable.
//
// Keys:
//
//	P presence:<topic>       hash "<key>\0<ref>" → meta JSON
//	                         {"phx_ref","name","online_at"}: the topic's
//	                         presence, one field per connection.
//	P pcount:<topic>         hash key → number of metas (Present in O(1)).
//	P node:<id>:presence     set of "<topic>\0<key>\0<ref>": the entries node
//	                         id owns, removed with it.
//	P nodes                  sorted set node id → last heartbeat (unix ms,
//	                         Redis clock).
//	P sweep:<id>             set: the entries of dead node id still to
//	                         remove (its node index, renamed when a sweeper
//	                         claimed it).
//	P sweeping               sorted set node id → last progress of its
//	                         sweep (unix ms); a sweep without progress for
//	                         PresenceTTL is taken over by another node.
//	P online:<user>          integer: connections of user across the cluster
//	                         (lobby "user:<user>" joins); absent when 0.
//	                         Readable by other programs: GET P online:42.
//	P last_seen              hash user → unix seconds of the user's last
//	                         lobby join or leave (or sweep of a dead node).
//
// Scripts (EVALSHA) keep each presence change atomic, including its
// PUBLISH on P t:<topic> for the mirrors.
//
// # Fanout
//
// A node has one pub/sub connection (a go-redis PubSub) on which it
// subscribes P t:<topic> for every topic with local subscribers. Subscribe
// and Unsubscribe only record the wish; one goroutine turns the changes
// into batched SUBSCRIBE/UNSUBSCRIBE commands. Publish copies the frame
// behind the header into a bounded queue (Options.PublishQueue) and
// returns; one goroutine pipelines up to 256 PUBLISHes per round trip,
// which also keeps each publisher's frames in order. A node ignores the
// 'F' messages it published itself: the hub delivered them locally.
//
// Per broadcast, Redis receives one PUBLISH of len(frame)+2+len(node id)
// bytes (plus about 40 bytes of RESP framing and the channel name), and
// each subscribed node receives it once.
//
// # Presence
//
// Track and Untrack are one EVALSHA each (one round trip); List is one
// HGETALL. Present, called for every chat message, is answered from a
// local mirror (key → refs) of each topic this node subscribes to: loaded
// with HKEYS when the subscription is confirmed and kept current by the
// 'P' messages. Consistency window: a change made on any node reaches the
// mirror one pub/sub hop after its script ran (well under a millisecond on
// a LAN); after a pub/sub reconnect the mirror is reloaded and may be stale
// for that round trip. For topics this node does not subscribe, and until
// a mirror's first snapshot arrives, Present costs one HGET.
//
// Every node heartbeats every PresenceTTL/3 in P nodes; the same script
// returns the nodes silent for longer than PresenceTTL (and sweeps that
// stalled). Sweeping starts only once Run has a handler, so the leaves
// have a hub to broadcast them and a publisher to carry them. One
// goroutine per node sweeps, off the heartbeat. A claim script makes one
// node the sweeper (it takes the dead node out of P nodes and renames its
// index to P sweep:<id>); the sweeper then removes the entries 500 at a
// time, one short script per chunk, and reports each chunk's leaves to
// its hub, which broadcasts a presence_diff to each affected chat topic.
// Before each chunk it waits for room in the publish queue, so leaves are
// delayed rather than dropped; if frames were lost anyway (Redis failing
// meanwhile), it asks every node to resync the affected topics' clients
// (kind 'T' on P control). A sweeper that dies mid-sweep leaves its claim
// in P sweeping; after PresenceTTL without progress another node takes
// it over. A dead node's presence therefore disappears within
// PresenceTTL plus one heartbeat interval plus the sweep itself (about a
// second for 30,000 entries). An entry that its node tracked again
// meanwhile (it was swept while alive) is left alone. Close removes the
// node's entries at once.
//
// A node also keeps its own entries in memory. When its heartbeat finds
// its P nodes entry gone (it was swept during a long pause, or Redis
// restarted empty), when Redis recovers from an outage, or after a failed
// Track or Untrack, it reconciles P node:<id>:presence with that list:
// missing entries are tracked again (and announced as presence_diff joins
// in chat topics), left-over ones untracked.
//
// # Sentinel and Redis Cluster
//
// With Options.Sentinels the command client is go-redis's failover client:
// it asks the Sentinels for the primary and follows their switches; the
// pub/sub connection reconnects through it. Everything else is as on one
// server.
//
// With Options.Cluster (Redis 7+) the names carry hash tags (see
// keyspace): P t:{tag}<topic> is a sharded channel, P presence:{tag}<topic>,
// P pcount:{tag}<topic> and P node:<id>:presence:{tag} share the slot of
// the topic's partition tag, P {n}nodes and P {n}sweeping share {n}. Topics
// hash (FNV-1a) onto Options.Partitions partitions, whose tags are chosen
// so their slots fall in evenly spaced ranges. A node holds one classic
// pub/sub connection (P publish, P control, the Action Cable patterns, its
// classic canary) and one sharded connection per partition (SSUBSCRIBE on
// the slot's primary, with its own canary P canary:{tag}<id>), each with
// its own barriers and liveness check. The scripts SPUBLISH their mirror
// messages within their slot; the online counters and last_seen, which
// keep their names for other programs, are updated right after. A sharded
// subscription that Redis drops (its slot moved) or a connection that
// fails makes the bus reload the slot map and subscribe again on the
// owner, reporting an outage in between so the hub resyncs.
//
// # Trust
//
// P t:*, P control and P canary:* are node to node and fully trusted:
// frames on P t:* are handed to clients as they are, and a resync
// announcement makes every node's clients rejoin. Whoever may PUBLISH
// there (or write P's keys) is as trusted as a node. Messages without the
// header above, of an unknown kind, or with a malformed watermark are
// dropped and counted (Stats.Forged). Host apps get the ingress channels
// only (P publish, the Action Cable patterns); the README shows the
// Redis ACL for that.
//
// # Liveness
//
// A pub/sub connection can stop delivering without an error. Every
// Options.Liveness/4 the node PUBLISHes the time on P canary:<id>
// through its command connection; recvLoop notes each that comes back.
// None back for Liveness: the bus reports Down, passing the send time of
// the last canary that came back (everything Redis handled before it has
// arrived, so any loss is later), and subscribes everything again on a
// new pub/sub connection; the subscribe replies on it report Up.
//
// # Outages
//
// If Redis restarts or becomes unreachable the node keeps serving its own
// clients. Publish returns ErrUnavailable (or ErrQueueFull) at once and
// the frame is dropped and counted (Stats); nothing blocks and memory stays
// bounded by the queue. go-redis's PubSub reconnects inside Receive and
// resubscribes every recorded channel and pattern; the receive loop retries
// with backoff up to 1s; the liveness check covers a connection that
// fails silently. The loss is logged at Warn, the recovery at Info;
// Ready returns an error in between. On recovery the node re-asserts its
// presence (see above) and reloads its mirrors. Frames published during
// the outage are lost: cluster fanout is at-most-once, like Redis pub/sub,
// and clients recover missed messages with last_id on rejoin.
//
// # Publishing from host applications
//
// Messages from host apps are delivered by every node to its LOCAL
// subscribers only: each node receives the Redis message, so local
// delivery is what makes it reach each subscriber exactly once
// cluster-wide. Only topics starting with "user:" or "chat:" are accepted,
// payloads must be JSON objects, and events starting with "phx_" are
// refused; anything else is logged and dropped.
//
// Action Cable: a Rails app using the Redis adapter with
// channel_prefix: P2 calls
//
//	ActionCable.server.broadcast("user:42", {event: "x", payload: {a: 1}})
//
// which publishes {"event":"x","payload":{"a":1}} on channel
// "P2:user:42" (Action Cable joins prefix and broadcasting with ':').
// ListenActionCable(ctx, "P2", nil) makes the nodes deliver it as event
// "x" on topic "user:42". A message without "event" is delivered as event
// "broadcast" with the whole object as payload.
//
// Any other app: PUBLISH P publish '{"topic":"user:42","event":"x","payload":{"a":1}}'.
package redisbus
