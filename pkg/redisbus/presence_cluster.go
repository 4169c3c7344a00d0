package redisbus

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/pkg/hub"
)

// On Redis Cluster a script may touch one slot only. The per-topic keys
// (presence hash, count hash) and this node's index of that partition
// carry the partition's hash tag, as does the topic's sharded channel, so
// each change stays one atomic script that SPUBLISHes itself for the
// mirrors. The node-wide keys (P {n}nodes, P {n}sweeping) share the tag
// {n}. The online counters and last_seen keep their documented names for
// other programs, so they live in other slots and are updated right after
// the script, not within it.

// trackScriptC adds one entry. KEYS: presence hash, count hash, node
// index of the partition. ARGV: field, meta JSON, key, index member,
// topic channel ("" for none), mirror message. Returns 1 if the entry is
// new.
var trackScriptC = redis.NewScript(`
redis.call('SADD', KEYS[3], ARGV[4])
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if ARGV[5] ~= '' then redis.call('SPUBLISH', ARGV[5], ARGV[6]) end
return 1
`)

// untrackScriptC removes one entry; same KEYS and ARGV (ARGV[2] unused).
var untrackScriptC = redis.NewScript(`
redis.call('SREM', KEYS[3], ARGV[4])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[3]) end
if ARGV[5] ~= '' then redis.call('SPUBLISH', ARGV[5], ARGV[6]) end
return 1
`)

// onlineScript adds ARGV[1] to a user's online counter, deleting it at 0.
var onlineScript = redis.NewScript(`
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
`)

// claimScriptC is claimScript without the index rename (the indexes are
// per partition, in other slots; the chunks move them). KEYS: nodes zset,
// sweeping zset. ARGV: node id, TTL in ms, mode.
var claimScriptC = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local old = now - tonumber(ARGV[2])
if ARGV[3] == 'dead' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score then
    if tonumber(score) >= old then return 0 end
  else
    local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
    if not s or tonumber(s) >= old then return 0 end
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return 1
`)

// touchScript records a sweep's progress (ARGV[2] '0') or its end ('1').
// KEYS: sweeping zset. ARGV: node id, done.
var touchScript = redis.NewScript(`
if ARGV[2] == '1' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
`)

// sweepChunkScriptC removes up to ARGV[3] entries of one partition of a
// claimed node; on the first chunk (ARGV[6] '1') it first moves the
// node's index of the partition into the sweep set. KEYS: the node's
// index of the partition, its sweep set. ARGV: node id, key prefix,
// count, mirror message header, partition tag. Returns {entries left,
// {topic, key, meta JSON, ...}}.
var sweepChunkScriptC = redis.NewScript(`
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('SUNIONSTORE', KEYS[2], KEYS[2], KEYS[1])
    redis.call('DEL', KEYS[1])
  else
    redis.call('RENAME', KEYS[1], KEYS[2])
  end
end
local p, tag = ARGV[2], ARGV[5]
local out = {}
for _, m in ipairs(redis.call('SPOP', KEYS[2], tonumber(ARGV[3]))) do
  local i = string.find(m, '\0', 1, true)
  local j = i and string.find(m, '\0', i + 1, true)
  if j and redis.call('SISMEMBER', KEYS[1], m) == 0 then
    local topic, key, ref = string.sub(m, 1, i - 1), string.sub(m, i + 1, j - 1), string.sub(m, j + 1)
    local field = key .. '\0' .. ref
    local hk = p .. 'presence:' .. tag .. topic
    local meta = redis.call('HGET', hk, field)
    if meta then
      redis.call('HDEL', hk, field)
      local ck = p .. 'pcount:' .. tag .. topic
      if redis.call('HINCRBY', ck, key, -1) <= 0 then redis.call('HDEL', ck, key) end
      redis.call('SPUBLISH', p .. 't:' .. tag .. topic, ARGV[4] .. '-' .. key .. '\0' .. ref .. '\0')
      out[#out + 1] = topic
      out[#out + 1] = key
      out[#out + 1] = meta
    end
  end
end
return {redis.call('SCARD', KEYS[2]), out}
`)

var clusterScripts = []*redis.Script{trackScriptC, untrackScriptC, onlineScript, claimScriptC, touchScript, sweepChunkScriptC}

// change returns the script, keys and arguments that add or remove e.
func (p *presence) change(e entry, add bool) (*redis.Script, []string, []any) {
	k := &p.b.keys
	if !k.cluster {
		s := untrackScript
		if add {
			s = trackScript
		}
		return s, p.keys(e.topic, lobbyUser(e.topic)), p.args(e, add)
	}
	s := untrackScriptC
	if add {
		s = trackScriptC
	}
	return s, []string{k.presence(e.topic), k.pcount(e.topic), k.nodeIndex(p.b.opts.NodeID, k.partition(e.topic))},
		[]any{e.key + "\x00" + e.ref, e.meta, e.key, e.member(), k.topicChan(e.topic), p.mirrorMsg(add, e.key, e.ref)}
}

// lobbyChanged updates the online counter and last_seen of the lobby
// entries that a cluster script added (delta 1) or removed (delta -1).
// On a single server the scripts do it themselves.
func (p *presence) lobbyChanged(ctx context.Context, users []string, delta int) error {
	if !p.b.keys.cluster || len(users) == 0 {
		return nil
	}
	now := strconv.FormatInt(time.Now().Unix(), 10)
	pipe := p.b.rdb.Pipeline()
	for _, u := range users {
		onlineScript.Eval(ctx, pipe, []string{p.b.keys.online(u)}, delta) // EVALSHA in a pipeline does not fall back
		pipe.HSet(ctx, p.b.keys.lastSeen(), u, now)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// runChange runs the change of e and, on a cluster, its lobby effects.
func (p *presence) runChange(ctx context.Context, e entry, add bool) error {
	s, keys, args := p.change(e, add)
	n, err := s.Run(ctx, p.b.rdb, keys, args...).Int64()
	if err != nil || n != 1 {
		return err
	}
	// The mirror learns this node's own change now, not when Redis
	// echoes it: the hub tells local clients at once (a leave's
	// presence_diff), and a message sent right after must not find the
	// leaver still present. The echo applies it again, harmlessly.
	p.applyOwn(e.topic, add, e.key, e.ref)
	if u := lobbyUser(e.topic); u != "" {
		delta := -1
		if add {
			delta = 1
		}
		return p.lobbyChanged(ctx, []string{u}, delta)
	}
	return nil
}

// sweepCluster is sweep on Redis Cluster: the claim in the {n} slot, then
// each partition's entries in chunks within that partition's slot.
// report gets each chunk's removed entries (flat topic, key, meta).
func (p *presence) sweepCluster(ctx context.Context, id, mode string, wait bool, report func([]any)) (bool, error) {
	k := &p.b.keys
	claimed, err := claimScriptC.Run(ctx, p.b.rdb, []string{k.nodes(), k.sweeping()},
		id, p.b.opts.PresenceTTL.Milliseconds(), mode).Int()
	if err != nil || claimed != 1 {
		return false, err
	}
	for part := range k.partitions() {
		first := "1"
		for range 1 << 20 { // bounded: each round removes entries or ends
			if wait {
				if err := p.b.waitQueue(ctx, sweepChunk); err != nil {
					return true, err
				}
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			res, err := sweepChunkScriptC.Run(cctx, p.b.rdb, []string{k.nodeIndex(id, part), k.sweepSet(id, part)},
				id, p.prefix, sweepChunk, p.b.hdrPres, k.tags[part], first).Slice()
			cancel()
			if err != nil {
				return true, err
			}
			first = "0"
			left, _ := res[0].(int64)
			flat, _ := res[1].([]any)
			var users []string
			for i := 0; i+2 < len(flat); i += 3 {
				if u := lobbyUser(flat[i].(string)); u != "" {
					users = append(users, u)
				}
			}
			if err := p.lobbyChanged(ctx, users, -1); err != nil {
				return true, err
			}
			report(flat)
			if err := touchScript.Run(ctx, p.b.rdb, []string{k.sweeping()}, id, "0").Err(); err != nil {
				return true, err
			}
			if left == 0 {
				break
			}
		}
	}
	return true, touchScript.Run(ctx, p.b.rdb, []string{k.sweeping()}, id, "1").Err()
}

// leavesOf groups a chunk's removed chat entries by topic.
func leavesOf(flat []any, affected map[string]struct{}) map[string]map[string][]hub.Meta {
	leaves := map[string]map[string][]hub.Meta{}
	for i := 0; i+2 < len(flat); i += 3 {
		topic, _ := flat[i].(string)
		key, _ := flat[i+1].(string)
		mj, _ := flat[i+2].(string)
		if !mirrorable(topic) {
			continue // only chats carry presence to clients
		}
		var m hub.Meta
		if err := json.Unmarshal([]byte(mj), &m); err != nil {
			continue
		}
		if leaves[topic] == nil {
			leaves[topic] = map[string][]hub.Meta{}
		}
		leaves[topic][key] = append(leaves[topic][key], m)
		affected[topic] = struct{}{}
	}
	return leaves
}
