package redisbus

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/hub"
)

// hubLike is a BusHandler that does with presence changes what the hub
// does: it delivers the leaves to its own subscribers and publishes them
// for the other nodes' (one frame per topic, "leave <topic> <n>"). It
// records, per topic, that its subscribers saw the leaves.
type hubLike struct {
	recorder
	bus *Bus

	mu   sync.Mutex
	seen map[string]time.Time // guarded by mu: topic → when its leaves arrived
}

func newHubLike(b *Bus) *hubLike { return &hubLike{bus: b, seen: map[string]time.Time{}} }

func (h *hubLike) note(topic string) {
	h.mu.Lock()
	if _, ok := h.seen[topic]; !ok {
		h.seen[topic] = time.Now()
	}
	h.mu.Unlock()
}

func (h *hubLike) PresenceChanged(topic string, joins, leaves map[string][]hub.Meta) {
	if len(leaves) == 0 {
		return
	}
	h.note(topic)
	if err := h.bus.Publish(topic, fmt.Appendf(nil, "leave %s %d", topic, len(leaves))); err != nil {
		h.add(call{kind: kRefused, topic: topic, err: err})
	}
}

func (h *hubLike) Deliver(topic string, msg []byte) {
	if strings.HasPrefix(string(msg), "leave ") {
		h.note(topic)
	}
}

func (h *hubLike) seenCount() (int, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var last time.Time
	for _, at := range h.seen {
		if at.After(last) {
			last = at
		}
	}
	return len(h.seen), last
}

func runHandler(t testing.TB, b *Bus, h hub.BusHandler) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx, h)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// trackMany adds n chat presences to b in pipelines, as n connections in
// n chats would (Track one by one costs a round trip each).
func trackMany(t testing.TB, b *Bus, topics []string) {
	t.Helper()
	ctx := context.Background()
	for _, s := range scripts {
		must(t, s.Load(ctx, b.rdb).Err())
	}
	p := b.pres
	for len(topics) > 0 {
		n := min(len(topics), 1000)
		pipe := b.rdb.Pipeline()
		for _, topic := range topics[:n] {
			key := strings.Split(topic, ":")[1]
			e := entry{topic: topic, key: key, ref: "ref-" + key, meta: []byte(`{"phx_ref":"ref-` + key + `","name":"N","online_at":1}`)}
			trackScript.EvalSha(ctx, pipe, p.keys(topic, ""), p.args(e, true)...)
		}
		_, err := pipe.Exec(ctx)
		must(t, err)
		topics = topics[n:]
	}
}

// TestSweepNoGhosts: a node killed with 30,000 chat presences is swept in
// chunks, and every leave reaches every other node's subscribers, within
// the presence TTL plus a heartbeat period (plus noise), although the
// sweeping nodes' publish queue holds only 1,024 frames.
func TestSweepNoGhosts(t *testing.T) {
	if testing.Short() {
		t.Skip("30,000 presences")
	}
	const n = 30000
	const ttl = 3 * time.Second
	srv := testenv.StartRedisServer(t)
	pfx := prefix(t)
	mk := func() *Bus {
		b, err := New(context.Background(), Options{URL: srv.URL(), Prefix: pfx, PresenceTTL: ttl,
			PublishQueue: 1024, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	dead, a, b := mk(), mk(), mk()
	topics := make([]string, n)
	for i := range topics {
		topics[i] = fmt.Sprintf("chat:%d:%d", 2*i+1000000, 2*i+1000001)
	}
	ha, hb := newHubLike(a), newHubLike(b)
	runHandler(t, a, ha)
	runHandler(t, b, hb)
	var lives []<-chan struct{}
	for _, topic := range topics {
		lives = append(lives, subscribe(t, a, topic), subscribe(t, b, topic))
	}
	for _, l := range lives {
		confirmed(t, l, 60*time.Second)
	}
	trackMany(t, dead, topics)
	ctx := context.Background()
	if c, _ := a.rdb.SCard(ctx, pfx+"node:"+dead.NodeID()+":presence").Result(); c != n {
		t.Fatalf("dead node owns %d entries, want %d", c, n)
	}

	killed := time.Now()
	kill(dead)
	bound := ttl + ttl/3
	eventually(t, bound+30*time.Second, "every leave on both nodes", func() bool {
		na, _ := ha.seenCount()
		nb, _ := hb.seenCount()
		return na == n && nb == n
	})
	_, lastA := ha.seenCount()
	_, lastB := hb.seenCount()
	last := max(lastA.Sub(killed), lastB.Sub(killed))
	t.Logf("kill -9 with %d presences: last leave on the other nodes %v after the kill (TTL %v + heartbeat %v = %v); publish drops a %d b %d",
		n, last.Round(time.Millisecond), ttl, ttl/3, bound, a.Stats().Dropped, b.Stats().Dropped)
	// A shared 2-core box adds noise: allow 3 s over the bound (10 s
	// under the race detector, which the same code on this box takes
	// 5 to 7.2 s through).
	slack := 3 * time.Second
	if raceDetector {
		slack = 10 * time.Second
	}
	if last > bound+slack {
		t.Errorf("last leave %v after the kill, want within %v", last, bound)
	}
	if k, err := a.rdb.Keys(ctx, pfx+"presence:*").Result(); err != nil || len(k) != 0 {
		t.Errorf("%d presence hashes left (%v)", len(k), err)
	}
	if k, _ := a.rdb.Exists(ctx, pfx+"sweep:"+dead.NodeID()).Result(); k != 0 {
		t.Errorf("sweep set left behind")
	}
	if z, _ := a.rdb.ZCard(ctx, pfx+"sweeping").Result(); z != 0 {
		t.Errorf("sweeping zset not empty")
	}
	if r := ha.count(kindIs(kRefused)) + hb.count(kindIs(kRefused)); r != 0 {
		t.Errorf("%d leaves refused by Publish", r)
	}
}

// TestSweepWaitsForRun: a node started while a dead node's presence is
// expired does not sweep it before Run (the leaves would have nowhere to
// go, and clients would keep the ghosts); once Run starts, it does and
// reports the leaves.
func TestSweepWaitsForRun(t *testing.T) {
	const ttl = time.Second
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: ttl}
	dead := c.node(t)
	ctx := context.Background()
	must(t, dead.Presence().Track(ctx, "chat:1:2", "1", hub.Meta{Ref: "g", Name: "G"}))
	kill(dead)
	time.Sleep(ttl + 200*time.Millisecond)
	late := c.node(t)
	time.Sleep(ttl) // heartbeats run, without a handler
	if l, _ := late.Presence().List(ctx, "chat:1:2"); len(l["1"]) != 1 {
		t.Fatalf("swept before Run: %v", l)
	}
	rec := run(t, late)
	got := rec.wait(t, 5*time.Second, "leaves after Run", presenceOn("chat:1:2"))
	if len(got.leaves["1"]) != 1 {
		t.Fatalf("leaves %v", got.leaves)
	}
}

// TestStalledSweepTakenOver: a sweeper that dies in the middle of a sweep
// leaves the rest of the entries in the sweep set; another node takes the
// sweep over once it has stalled for a TTL, so no ghost stays.
func TestStalledSweepTakenOver(t *testing.T) {
	const ttl = time.Second
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: ttl}
	dead := c.node(t)
	ctx := context.Background()
	topics := make([]string, 3*sweepChunk)
	for i := range topics {
		topics[i] = fmt.Sprintf("chat:%d:%d", 2*i+10, 2*i+11)
	}
	trackMany(t, dead, topics)
	kill(dead)
	time.Sleep(ttl + 100*time.Millisecond)
	// A sweeper claims and removes one chunk, then dies.
	s := c.node(t)
	sweepKey := c.prefix + "sweep:" + dead.NodeID()
	claimed, err := claimScript.Run(ctx, s.rdb,
		[]string{c.prefix + "nodes", c.prefix + "node:" + dead.NodeID() + ":presence", sweepKey, c.prefix + "sweeping"},
		dead.NodeID(), ttl.Milliseconds(), "dead").Int()
	if err != nil || claimed != 1 {
		t.Fatalf("claim %d %v", claimed, err)
	}
	must(t, sweepChunkScript.Run(ctx, s.rdb, []string{sweepKey, c.prefix + "sweeping", c.prefix + "node:" + dead.NodeID() + ":presence"},
		dead.NodeID(), c.prefix, sweepChunk, s.hdrPres).Err())
	kill(s)
	if left, _ := c.node(t).rdb.SCard(ctx, sweepKey).Result(); left != int64(2*sweepChunk) {
		t.Fatalf("%d entries left in the sweep set, want %d", left, 2*sweepChunk)
	}
	other := c.node(t)
	rec := run(t, other)
	eventually(t, 3*ttl+5*time.Second, "stalled sweep finished", func() bool {
		n, _ := other.rdb.Exists(ctx, sweepKey).Result()
		return n == 0 && rec.count(kindIs(kPresence)) == 2*sweepChunk
	})
}

// TestAnnounceTopics: the announcement a sweeper makes when leaves were
// lost reaches the other nodes as ResyncTopics, limited to valid topics
// they subscribe; the announcer itself ignores it.
func TestAnnounceTopics(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	a, b := c.node(t), c.node(t)
	recA, recB := run(t, a), run(t, b)
	confirmed(t, subscribe(t, b, "chat:1:2"), 5*time.Second)
	// Run attaches the handlers asynchronously: announce until b has one.
	for i := 0; i < 25 && recB.count(kindIs(kTopics)) == 0; i++ {
		must(t, a.announceTopics(context.Background(), []string{"chat:1:2", "chat:3:4", "room:x"}))
		time.Sleep(200 * time.Millisecond)
	}
	got := recB.wait(t, 5*time.Second, "ResyncTopics", kindIs(kTopics))
	if got.data != "chat:1:2" || got.node != a.NodeID() {
		t.Fatalf("ResyncTopics(%q, %q), want (chat:1:2, %q)", got.data, got.node, a.NodeID())
	}
	time.Sleep(100 * time.Millisecond)
	if n := recA.count(kindIs(kTopics)); n != 0 {
		t.Fatalf("the announcer heard itself %d times", n)
	}
}
