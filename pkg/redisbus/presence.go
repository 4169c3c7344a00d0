package redisbus

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/topic"
)

// The scripts keep each change atomic: the entry, its count, the node
// index, the online counters and the PUBLISH of the change for the
// mirrors happen together or not at all, so a mirror replaying changes on
// top of a snapshot (see presence.load) never sees half of one.

// trackScript adds one entry. KEYS: presence hash, count hash, node index,
// nodes zset, online counter, last_seen hash. ARGV: field, meta JSON, key,
// index member, topic channel ("" for none: the topic is not mirrored),
// mirror message, node id, lobby user ("" if the topic is not a lobby).
// Returns 1 if the entry is new.
var trackScript = redis.NewScript(`
redis.call('SADD', KEYS[3], ARGV[4])
if not redis.call('ZSCORE', KEYS[4], ARGV[7]) then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[4], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[7])
end
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if ARGV[8] ~= '' then
  redis.call('INCR', KEYS[5])
  redis.call('HSET', KEYS[6], ARGV[8], redis.call('TIME')[1])
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
`)

// untrackScript removes one entry; same KEYS and ARGV as trackScript
// (ARGV[2] unused). Returns 1 if the entry existed.
var untrackScript = redis.NewScript(`
redis.call('SREM', KEYS[3], ARGV[4])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[3]) end
if ARGV[8] ~= '' then
  if redis.call('DECR', KEYS[5]) <= 0 then redis.call('DEL', KEYS[5]) end
  redis.call('HSET', KEYS[6], ARGV[8], redis.call('TIME')[1])
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
`)

// heartbeatScript marks the node alive with Redis's clock (so node clocks
// may disagree) and returns {1 if the node was missing, dead node ids,
// node ids whose sweep stalled}. KEYS: nodes zset, sweeping zset. ARGV:
// node id, TTL in ms.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local limit = '(' .. (now - tonumber(ARGV[2]))
return {added, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', limit), redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', limit)}
`)

// claimScript makes the caller the sweeper of a node's entries. In 'dead'
// mode the node must still be expired in the nodes set, or its sweep must
// have stalled (no chunk for a TTL: its sweeper died); of several
// sweepers only the first gets past this. The node leaves the nodes set,
// its index moves to the sweep set (merged with a stalled sweep's left
// overs), and the sweeping zset records the claim. KEYS: nodes zset,
// node index, sweep set, sweeping zset. ARGV: node id, TTL in ms, mode
// ('dead' or 'self'). Returns 1 when claimed.
var claimScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local old = now - tonumber(ARGV[2])
if ARGV[3] == 'dead' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score then
    if tonumber(score) >= old then return 0 end
  else
    local s = redis.call('ZSCORE', KEYS[4], ARGV[1])
    if not s or tonumber(s) >= old then return 0 end
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('SUNIONSTORE', KEYS[3], KEYS[3], KEYS[2])
    redis.call('DEL', KEYS[2])
  else
    redis.call('RENAME', KEYS[2], KEYS[3])
  end
end
redis.call('ZADD', KEYS[4], now, ARGV[1])
return 1
`)

// sweepChunkScript removes up to ARGV[3] entries of a claimed sweep set,
// so a node with many entries never holds Redis for long. An entry the
// node has tracked again meanwhile (it was swept while alive and
// re-asserted itself into its index) is left alone. KEYS: sweep set,
// sweeping zset, the node's index. ARGV: node id, key prefix, count,
// mirror message header. Returns {entries left, {topic, key, meta JSON,
// ...}} of the removed entries.
var sweepChunkScript = redis.NewScript(`
local p = ARGV[2]
local secs = redis.call('TIME')[1]
local out = {}
for _, m in ipairs(redis.call('SPOP', KEYS[1], tonumber(ARGV[3]))) do
  local i = string.find(m, '\0', 1, true)
  local j = i and string.find(m, '\0', i + 1, true)
  if j and redis.call('SISMEMBER', KEYS[3], m) == 0 then
    local topic, key, ref = string.sub(m, 1, i - 1), string.sub(m, i + 1, j - 1), string.sub(m, j + 1)
    local field = key .. '\0' .. ref
    local hk = p .. 'presence:' .. topic
    local meta = redis.call('HGET', hk, field)
    if meta then
      redis.call('HDEL', hk, field)
      local ck = p .. 'pcount:' .. topic
      if redis.call('HINCRBY', ck, key, -1) <= 0 then redis.call('HDEL', ck, key) end
      if string.sub(topic, 1, 5) == 'user:' then
        local user = string.sub(topic, 6)
        local ok = p .. 'online:' .. user
        if redis.call('DECR', ok) <= 0 then redis.call('DEL', ok) end
        redis.call('HSET', p .. 'last_seen', user, secs)
      end
      redis.call('PUBLISH', p .. 't:' .. topic, ARGV[4] .. '-' .. key .. '\0' .. ref .. '\0')
      out[#out + 1] = topic
      out[#out + 1] = key
      out[#out + 1] = meta
    end
  end
end
local left = redis.call('SCARD', KEYS[1])
if left == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], 'XX', t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
end
return {left, out}
`)

var scripts = []*redis.Script{trackScript, untrackScript, heartbeatScript, claimScript, sweepChunkScript}

// entry is one of this node's presence entries.
type entry struct {
	topic, key, ref string
	meta            []byte // JSON
}

func (e entry) member() string { return e.topic + "\x00" + e.key + "\x00" + e.ref }

// mirror is the local copy of one subscribed topic's presence, enough to
// answer Present without Redis: key → set of refs.
type mirror struct {
	gen     uint64                         // load generation; a load applies only if unchanged
	loaded  bool                           // keys holds a snapshot (possibly a little stale while reloading)
	loading bool                           // a snapshot is being read; changes go to pending too
	keys    map[string]map[string]struct{} // key → refs
	pending []op                           // changes seen since the snapshot request
	// gone holds refs this node removed (applyOwn) whose removal has not
	// come back from Redis yet: the echo of their earlier add, still on
	// its way, must not bring them back.
	gone map[string]struct{}
}

type op struct {
	add      bool
	key, ref string
}

const maxPending = 4096

type presence struct {
	b      *Bus
	prefix string // immutable

	// mirMu guards mirrors, loadReq and every mirror's fields. Present
	// takes it for reading, which is all the per-message path costs.
	mirMu    sync.RWMutex
	mirrors  map[string]*mirror // guarded by mirMu: one per subscribed topic
	loadReq  map[string]uint64  // guarded by mirMu: topic → generation to load
	loadKick chan struct{}      // cap 1: wakes loadLoop
	loadWG   sync.WaitGroup
	loadStop chan struct{}

	// ownMu guards own, this node's entries: the truth that reconcile
	// restores in Redis after an outage. Track and Untrack update it
	// before Redis, so a failed call is repaired by the next reconcile.
	ownMu sync.Mutex
	own   map[string]entry // guarded by ownMu: member → entry

	// reconcileMu: Track and Untrack hold it shared for their Redis call,
	// reconcile holds it exclusively, so reconcile's read of the node index
	// and of own describe the same moment.
	reconcileMu sync.RWMutex

	dirty    atomic.Bool   // a Track/Untrack failed, or Redis came back: reconcile
	beatKick chan struct{} // cap 1: wakes loop early

	sweepq   chan string     // dead nodes for sweeper
	sweepMu  sync.Mutex      // guards sweepSet
	sweepSet map[string]bool // ids queued or being swept
}

func newPresence(b *Bus) *presence {
	return &presence{
		b:        b,
		prefix:   b.opts.Prefix,
		mirrors:  make(map[string]*mirror),
		loadReq:  make(map[string]uint64),
		loadKick: make(chan struct{}, 1),
		loadStop: make(chan struct{}),
		own:      make(map[string]entry),
		beatKick: make(chan struct{}, 1),
		sweepq:   make(chan string, 256),
		sweepSet: make(map[string]bool),
	}
}

var _ hub.Presence = (*presence)(nil)

func (p *presence) keys(topic, lobbyUser string) []string {
	return []string{
		p.prefix + "presence:" + topic,
		p.prefix + "pcount:" + topic,
		p.prefix + "node:" + p.b.opts.NodeID + ":presence",
		p.prefix + "nodes",
		p.prefix + "online:" + lobbyUser,
		p.prefix + "last_seen",
	}
}

func lobbyUser(name string) string {
	u, _ := topic.LobbyUser(name)
	return u
}

func (p *presence) mirrorMsg(add bool, key, ref string) []byte {
	c := byte('-')
	if add {
		c = '+'
	}
	m := append([]byte(nil), p.b.hdrPres...)
	m = append(m, c)
	m = append(append(m, key...), 0)
	return append(append(m, ref...), 0)
}

func (p *presence) args(e entry, add bool) []any {
	// Only chats are mirrored (see mirrorable): the change of a lobby
	// entry is published to nobody, saving Redis a PUBLISH and the
	// user's node a message it would drop, on every connect.
	var channel string
	var msg []byte
	if mirrorable(e.topic) {
		channel, msg = p.b.chanPrefix+e.topic, p.mirrorMsg(add, e.key, e.ref)
	}
	return []any{
		e.key + "\x00" + e.ref, e.meta, e.key, e.member(),
		channel, msg,
		p.b.opts.NodeID, lobbyUser(e.topic),
	}
}

var errNUL = errors.New("redisbus: NUL byte in presence topic, key or ref")

// Track adds meta: one EVALSHA round trip.
func (p *presence) Track(ctx context.Context, topic, key string, meta hub.Meta) error {
	if strings.ContainsRune(topic+key+meta.Ref, 0) {
		return errNUL
	}
	mj, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	e := entry{topic, key, meta.Ref, mj}
	p.reconcileMu.RLock()
	defer p.reconcileMu.RUnlock()
	p.ownMu.Lock()
	p.own[e.member()] = e
	p.ownMu.Unlock()
	if err := p.runChange(ctx, e, true); err != nil {
		p.dirty.Store(true)
		return err
	}
	return nil
}

// Untrack removes the meta with ref: one EVALSHA round trip.
func (p *presence) Untrack(ctx context.Context, topic, key, ref string) error {
	if strings.ContainsRune(topic+key+ref, 0) {
		return nil // could never have been tracked
	}
	e := entry{topic: topic, key: key, ref: ref}
	p.reconcileMu.RLock()
	defer p.reconcileMu.RUnlock()
	p.ownMu.Lock()
	delete(p.own, e.member())
	p.ownMu.Unlock()
	if err := p.runChange(ctx, e, false); err != nil {
		p.dirty.Store(true)
		return err
	}
	return nil
}

// List reads the topic's hash: one HGETALL. Metas of a key are ordered by
// online_at, then ref.
func (p *presence) List(ctx context.Context, topic string) (map[string][]hub.Meta, error) {
	all, err := p.b.rdb.HGetAll(ctx, p.b.keys.presence(topic)).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string][]hub.Meta, len(all))
	for field, mj := range all {
		key, _, ok := strings.Cut(field, "\x00")
		if !ok {
			continue
		}
		var m hub.Meta
		if err := json.Unmarshal([]byte(mj), &m); err != nil {
			p.b.log.Warn("bad presence meta in redis", "topic", topic, "err", err)
			continue
		}
		out[key] = append(out[key], m)
	}
	for _, metas := range out {
		slices.SortFunc(metas, func(a, b hub.Meta) int {
			if a.OnlineAt != b.OnlineAt {
				return int(a.OnlineAt - b.OnlineAt)
			}
			return strings.Compare(a.Ref, b.Ref)
		})
	}
	return out, nil
}

// Present answers from the mirror of a topic this node subscribes to (a
// map lookup under a read lock); for other topics, and while a mirror's
// first snapshot loads, it costs one HGET.
func (p *presence) Present(ctx context.Context, topic, key string) (bool, error) {
	p.mirMu.RLock()
	if m := p.mirrors[topic]; m != nil && m.loaded {
		ok := len(m.keys[key]) > 0
		p.mirMu.RUnlock()
		return ok, nil
	}
	p.mirMu.RUnlock()
	n, err := p.b.rdb.HGet(ctx, p.b.keys.pcount(topic), key).Int64()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return n > 0, err
}

// PresentLocal answers from the mirror of a subscribed topic; known is
// false when Present would have to ask Redis.
func (p *presence) PresentLocal(topic, key string) (present, known bool) {
	p.mirMu.RLock()
	defer p.mirMu.RUnlock()
	if m := p.mirrors[topic]; m != nil && m.loaded {
		return len(m.keys[key]) > 0, true
	}
	return false, false
}

// mirror starts a mirror for topic. It stays unloaded (Present asks Redis)
// until the subscription is confirmed and load has read a snapshot.
func (p *presence) mirror(topic string) {
	p.mirMu.Lock()
	if p.mirrors[topic] == nil {
		p.mirrors[topic] = &mirror{keys: make(map[string]map[string]struct{})}
	}
	p.mirMu.Unlock()
}

func (p *presence) unmirror(topic string) {
	p.mirMu.Lock()
	delete(p.mirrors, topic)
	delete(p.loadReq, topic)
	p.mirMu.Unlock()
}

// load asks for a fresh snapshot of topic's presence. It must be called
// only once the topic's subscription is live (on its subscribe
// confirmation): every change after that point reaches apply, and the
// snapshot, read later, is then completed by replaying them. Replaying a
// change the snapshot already contains is harmless: per ref the last
// change wins, and the replay ends with the latest.
func (p *presence) load(topic string) {
	p.mirMu.Lock()
	m := p.mirrors[topic]
	if m == nil {
		p.mirMu.Unlock()
		return
	}
	m.gen++
	m.loading = true
	m.pending = m.pending[:0]
	p.loadReq[topic] = m.gen
	p.mirMu.Unlock()
	select {
	case p.loadKick <- struct{}{}:
	default:
	}
}

// applyOwn records a change this node made in topic's mirror, if it has
// one, as apply does for a change read from Redis.
func (p *presence) applyOwn(topic string, add bool, key, ref string) {
	p.applyOps(topic, []op{{add, key, ref}}, true, true)
}

// apply records the changes in a mirror message read from Redis,
// "+key\0ref\0" or "-key\0ref\0" repeated; own says this node published
// it (the echo of a change applyOwn applied already).
func (p *presence) apply(topic, body string, own bool) {
	var ops []op
	for len(body) > 1 {
		add := body[0] == '+'
		key, rest, ok1 := strings.Cut(body[1:], "\x00")
		ref, rest, ok2 := strings.Cut(rest, "\x00")
		if !ok1 || !ok2 {
			return
		}
		ops = append(ops, op{add, key, ref})
		body = rest
	}
	p.applyOps(topic, ops, own, false)
}

// applyOps applies ops to topic's mirror; local ones come from applyOwn.
func (p *presence) applyOps(topic string, ops []op, own, local bool) {
	p.mirMu.Lock()
	defer p.mirMu.Unlock()
	m := p.mirrors[topic]
	if m == nil {
		return
	}
	kept := ops[:0]
	for _, o := range ops {
		switch {
		case local && !o.add:
			if m.gone == nil || len(m.gone) >= maxPending {
				m.gone = make(map[string]struct{})
			}
			m.gone[o.ref] = struct{}{}
		case own && !local && o.add:
			if _, ok := m.gone[o.ref]; ok {
				continue // a late echo of an add this node has undone
			}
		case own && !local:
			delete(m.gone, o.ref)
		}
		m.do(o)
		kept = append(kept, o)
	}
	ops = kept
	if m.loading {
		if len(m.pending)+len(ops) > maxPending {
			// A storm while loading: start over rather than grow.
			m.gen++
			m.pending = m.pending[:0]
			p.loadReq[topic] = m.gen
			select {
			case p.loadKick <- struct{}{}:
			default:
			}
			return
		}
		m.pending = append(m.pending, ops...)
	}
}

func (m *mirror) do(o op) {
	refs := m.keys[o.key]
	if o.add {
		if refs == nil {
			refs = make(map[string]struct{}, 1)
			m.keys[o.key] = refs
		}
		refs[o.ref] = struct{}{}
		return
	}
	delete(refs, o.ref)
	if len(refs) == 0 {
		delete(m.keys, o.key)
	}
}

func (p *presence) startLoader() {
	p.loadWG.Add(1)
	go p.loadLoop()
}

func (p *presence) stopLoader() {
	close(p.loadStop)
	p.loadWG.Wait()
}

// loadLoop reads requested snapshots, maxBatch HKEYS per round trip (a
// reconnect with thousands of topics reloads them in a few round trips).
func (p *presence) loadLoop() {
	defer p.loadWG.Done()
	for {
		select {
		case <-p.loadStop:
			return
		case <-p.loadKick:
		}
		p.mirMu.Lock()
		reqs := p.loadReq
		p.loadReq = make(map[string]uint64)
		p.mirMu.Unlock()
		topics := make([]string, 0, len(reqs))
		for t := range reqs {
			topics = append(topics, t)
		}
		for len(topics) > 0 {
			n := min(len(topics), maxBatch)
			if err := p.loadBatch(topics[:n], reqs); err != nil {
				// Keep the requests for the next attempt; a later
				// subscribe confirmation may supersede them.
				p.mirMu.Lock()
				for _, t := range topics {
					if m := p.mirrors[t]; m != nil && m.gen == reqs[t] {
						if _, newer := p.loadReq[t]; !newer {
							p.loadReq[t] = reqs[t]
						}
					}
				}
				p.mirMu.Unlock()
				select {
				case <-p.loadStop:
					return
				case <-time.After(downRetry):
				}
				select {
				case p.loadKick <- struct{}{}:
				default:
				}
				break
			}
			topics = topics[n:]
		}
	}
}

func (p *presence) loadBatch(topics []string, gens map[string]uint64) error {
	ctx, cancel := context.WithTimeout(p.b.ctx, 2*time.Second)
	defer cancel()
	pipe := p.b.rdb.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(topics))
	for i, t := range topics {
		cmds[i] = pipe.HKeys(ctx, p.b.keys.presence(t))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	p.mirMu.Lock()
	defer p.mirMu.Unlock()
	for i, t := range topics {
		m := p.mirrors[t]
		if m == nil || m.gen != gens[t] {
			continue // unsubscribed, or a newer load is on its way
		}
		m.keys = make(map[string]map[string]struct{})
		for _, f := range cmds[i].Val() {
			if key, ref, ok := strings.Cut(f, "\x00"); ok {
				m.do(op{true, key, ref})
			}
		}
		for _, o := range m.pending {
			m.do(o)
		}
		m.pending = nil
		m.loaded, m.loading = true, false
	}
	return nil
}

// recovered is called when Redis comes back: reconcile soon.
func (p *presence) recovered() {
	p.dirty.Store(true)
	p.kick()
}

// kick makes the heartbeat run now.
func (p *presence) kick() {
	select {
	case p.beatKick <- struct{}{}:
	default:
	}
}

// loop heartbeats every PresenceTTL/3, reconciles this node's entries when
// needed and hands dead nodes to the sweeper.
func (p *presence) loop() {
	defer p.b.wg.Done()
	t := time.NewTicker(p.b.opts.PresenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-p.b.ctx.Done():
			return
		case <-t.C:
		case <-p.beatKick:
		}
		ctx, cancel := context.WithTimeout(p.b.ctx, p.b.opts.PresenceTTL/3)
		err := p.heartbeat(ctx, true)
		cancel()
		if err != nil && p.b.ctx.Err() == nil {
			p.b.refreshSlots()
			p.b.setCmd(false, err)
		}
	}
}

// heartbeat runs one round: beat, reconcile if our node entry had vanished
// (we were swept while alive, or Redis lost its data) or something failed,
// then, with sweep, queue the dead nodes (and stalled sweeps) for the
// sweeper. Sweeping waits for Run: the leaves are broadcast by the hub,
// and published with the publisher, so before both run they would be
// lost and leave ghosts on the other nodes' clients.
func (p *presence) heartbeat(ctx context.Context, sweep bool) error {
	ttl := p.b.opts.PresenceTTL.Milliseconds()
	res, err := heartbeatScript.Run(ctx, p.b.rdb, []string{p.b.keys.nodes(), p.b.keys.sweeping()}, p.b.opts.NodeID, ttl).Slice()
	if err != nil {
		return err
	}
	p.b.setCmd(true, nil)
	if added, _ := res[0].(int64); added == 1 {
		p.dirty.Store(true)
	}
	if p.dirty.Swap(false) {
		if err := p.reconcile(ctx); err != nil {
			p.dirty.Store(true)
			return err
		}
	}
	if !sweep || p.b.handler.Load() == nil {
		return nil
	}
	for _, list := range res[1:] {
		ids, _ := list.([]any)
		for _, d := range ids {
			if id, _ := d.(string); id != "" && id != p.b.opts.NodeID {
				p.queueSweep(id)
			}
		}
	}
	return nil
}

// queueSweep hands id to the sweeper unless it is queued or being swept.
// A full queue drops it: the next heartbeat lists it again.
func (p *presence) queueSweep(id string) {
	p.sweepMu.Lock()
	defer p.sweepMu.Unlock()
	if p.sweepSet[id] {
		return
	}
	select {
	case p.sweepq <- id:
		p.sweepSet[id] = true
	default:
	}
}

// sweeper sweeps the queued dead nodes one at a time, off the heartbeat
// loop: a big sweep must not delay this node's own heartbeat.
func (p *presence) sweeper() {
	defer p.b.wg.Done()
	for {
		select {
		case <-p.b.ctx.Done():
			return
		case id := <-p.sweepq:
			if err := p.sweep(p.b.ctx, id, nil); err != nil && p.b.ctx.Err() == nil {
				p.b.log.Warn("sweep of a dead node failed; retried on a later heartbeat", "dead", id, "err", err)
			}
			p.sweepMu.Lock()
			delete(p.sweepSet, id)
			p.sweepMu.Unlock()
		}
	}
}

// reconcile makes Redis hold exactly this node's entries: those missing
// are tracked again (and announced to chat clients as joins), those left
// over are untracked.
func (p *presence) reconcile(ctx context.Context) error {
	p.reconcileMu.Lock()
	defer p.reconcileMu.Unlock()
	k := &p.b.keys
	ipipe := p.b.rdb.Pipeline()
	icmds := make([]*redis.StringSliceCmd, k.partitions())
	for part := range icmds {
		icmds[part] = ipipe.SMembers(ctx, k.nodeIndex(p.b.opts.NodeID, part))
	}
	if _, err := ipipe.Exec(ctx); err != nil {
		return err
	}
	have := make(map[string]bool)
	for _, c := range icmds {
		for _, m := range c.Val() {
			have[m] = true
		}
	}
	p.ownMu.Lock()
	var add []entry
	for m, e := range p.own {
		if !have[m] {
			add = append(add, e)
		}
		delete(have, m)
	}
	p.ownMu.Unlock()
	if len(add) == 0 && len(have) == 0 {
		return nil
	}
	// EVALSHA in a pipeline does not fall back to EVAL: make sure a
	// restarted Redis has the scripts.
	all := scripts
	if k.cluster {
		all = clusterScripts
	}
	for _, s := range all {
		if err := s.Load(ctx, p.b.rdb).Err(); err != nil {
			return err
		}
	}
	pipe := p.b.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(add))
	for i, e := range add {
		s, keys, args := p.change(e, true)
		cmds[i] = s.EvalSha(ctx, pipe, keys, args...)
	}
	var gone []entry
	var gcmds []*redis.Cmd
	for m := range have {
		parts := strings.SplitN(m, "\x00", 3)
		if len(parts) != 3 {
			for part := range k.partitions() {
				pipe.SRem(ctx, k.nodeIndex(p.b.opts.NodeID, part), m)
			}
			continue
		}
		e := entry{topic: parts[0], key: parts[1], ref: parts[2]}
		s, keys, args := p.change(e, false)
		gone = append(gone, e)
		gcmds = append(gcmds, s.EvalSha(ctx, pipe, keys, args...))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	var online, offline []string
	for i, e := range add {
		if n, _ := cmds[i].Int64(); n == 1 && lobbyUser(e.topic) != "" {
			online = append(online, lobbyUser(e.topic))
		}
	}
	for i, e := range gone {
		if n, _ := gcmds[i].Int64(); n == 1 && lobbyUser(e.topic) != "" {
			offline = append(offline, lobbyUser(e.topic))
		}
	}
	if err := p.lobbyChanged(ctx, online, 1); err != nil {
		return err
	}
	if err := p.lobbyChanged(ctx, offline, -1); err != nil {
		return err
	}
	joins := map[string]map[string][]hub.Meta{} // topic → key → metas
	for i, e := range add {
		var m hub.Meta
		if n, _ := cmds[i].Int64(); n != 1 || !mirrorable(e.topic) || json.Unmarshal(e.meta, &m) != nil {
			continue
		}
		if joins[e.topic] == nil {
			joins[e.topic] = map[string][]hub.Meta{}
		}
		joins[e.topic][e.key] = append(joins[e.topic][e.key], m)
	}
	if h := p.b.handler.Load(); h != nil {
		for topic, keys := range joins {
			h.PresenceChanged(topic, keys, nil)
		}
	}
	p.b.log.Info("presence re-asserted", "restored", len(add), "removed", len(have))
	return nil
}

// sweepChunk is how many entries one sweep script removes: a few
// milliseconds of Redis time, so a dead node with 30,000 entries never
// blocks Redis for long.
const sweepChunk = 500

// sweep removes every entry of node id: a dead node's (only if it is
// still expired, or its earlier sweep stalled), or this node's own when
// it closes (self is the handler Run had). The winner of the claim
// removes the entries sweepChunk at a time and reports each chunk's
// leaves to its hub, which broadcasts them to chat clients everywhere.
// Before each chunk it waits until the publish queue has room for the
// chunk's leaves (back-pressure instead of dropping them); if leaves were
// lost anyway (Redis failing meanwhile), the other nodes are asked to
// resync the affected topics' clients.
func (p *presence) sweep(ctx context.Context, id string, self *handlerBox) error {
	mode := "dead"
	h := p.b.handler.Load()
	if self != nil {
		mode, h = "self", self
	}
	start := time.Now()
	lost0 := p.b.lost()
	affected := map[string]struct{}{}
	entries := 0
	report := func(flat []any) {
		entries += len(flat) / 3
		if h == nil {
			leavesOf(flat, affected)
			return
		}
		for topic, left := range leavesOf(flat, affected) {
			h.PresenceChanged(topic, nil, left)
		}
	}
	var claimed bool
	var err error
	if p.b.keys.cluster {
		claimed, err = p.sweepCluster(ctx, id, mode, self == nil, report)
	} else {
		claimed, err = p.sweepOne(ctx, id, mode, self == nil, report)
	}
	if err != nil || !claimed {
		return err
	}
	if self == nil {
		p.b.log.Info("swept dead node's presence", "dead", id, "entries", entries, "topics", len(affected),
			"took", time.Since(start).Round(time.Millisecond).String())
	}
	if lost := p.b.lost() - lost0; lost > 0 && len(affected) > 0 {
		topics := make([]string, 0, len(affected))
		for t := range affected {
			topics = append(topics, t)
		}
		p.b.log.Warn("leaves of a swept node may be lost; asking the nodes to resync those topics", "dead", id, "frames_lost", lost, "topics", len(topics))
		if err := p.b.announceTopics(ctx, topics); err != nil {
			return err
		}
	}
	return nil
}

// sweepOne is sweep on one server: claim (which renames the node's index
// to its sweep set), then chunks until the set is empty.
func (p *presence) sweepOne(ctx context.Context, id, mode string, wait bool, report func([]any)) (bool, error) {
	k := &p.b.keys
	sweepKey := k.sweepSet(id, 0)
	claimed, err := claimScript.Run(ctx, p.b.rdb,
		[]string{k.nodes(), k.nodeIndex(id, 0), sweepKey, k.sweeping()},
		id, p.b.opts.PresenceTTL.Milliseconds(), mode).Int()
	if err != nil || claimed != 1 {
		return false, err
	}
	for range 1 << 20 { // bounded: each round removes entries or ends
		if wait {
			if err := p.b.waitQueue(ctx, sweepChunk); err != nil {
				return true, err
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := sweepChunkScript.Run(cctx, p.b.rdb,
			[]string{sweepKey, k.sweeping(), k.nodeIndex(id, 0)},
			id, p.prefix, sweepChunk, p.b.hdrPres).Slice()
		cancel()
		if err != nil {
			return true, err
		}
		left, _ := res[0].(int64)
		flat, _ := res[1].([]any)
		report(flat)
		if left == 0 {
			break
		}
	}
	return true, nil
}
