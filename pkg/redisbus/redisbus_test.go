package redisbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/hub/hubtest"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// prefix returns a key prefix of the test's own: pub/sub channels are
// shared by every DB index of the test server.
func prefix(t testing.TB) string {
	var r [4]byte
	rand.Read(r[:])
	return "ec" + hex.EncodeToString(r[:]) + ":"
}

type cluster struct {
	url, prefix string
	ttl         time.Duration
}

func (c cluster) node(t testing.TB) *Bus {
	t.Helper()
	b, err := New(context.Background(), Options{
		URL: c.url, Prefix: c.prefix, PresenceTTL: c.ttl,
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.Default()
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// kill stops b like a crash: no cleanup, its presence stays in Redis.
func kill(b *Bus) {
	if b.stop() {
		b.rdb.Close()
	}
}

func TestBusContract(t *testing.T) {
	url := testenv.Redis(t)
	hubtest.RunBus(t, func(t *testing.T, nodes int) []hub.Bus {
		c := cluster{url: url, prefix: prefix(t), ttl: 30 * time.Second}
		out := make([]hub.Bus, nodes)
		for i := range out {
			out[i] = c.node(t)
		}
		return out
	})
}

func TestPresenceContract(t *testing.T) {
	url := testenv.Redis(t)
	hubtest.RunPresence(t, func(t *testing.T, nodes int) []hub.Presence {
		c := cluster{url: url, prefix: prefix(t), ttl: 30 * time.Second}
		out := make([]hub.Presence, nodes)
		for i := range out {
			out[i] = c.node(t).Presence()
		}
		return out
	})
}

// recorder collects what a Bus's Run delivers.
type recorder struct {
	mu     sync.Mutex
	frames []string // guarded by mu: "topic|frame"
}

func run(t testing.TB, b *Bus) *recorder {
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Run(ctx, func(topic string, frame []byte) {
			r.mu.Lock()
			r.frames = append(r.frames, topic+"|"+string(frame))
			r.mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// wait returns the first frame for which match holds, failing after d.
func (r *recorder) wait(t testing.TB, d time.Duration, match func(topic, frame string) bool) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, f := range r.frames {
			topic, frame, _ := strings.Cut(f, "|")
			if match(topic, frame) {
				r.mu.Unlock()
				return frame
			}
		}
		r.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no matching frame within %v", d)
	return ""
}

func (r *recorder) count(match func(topic, frame string) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, f := range r.frames {
		topic, frame, _ := strings.Cut(f, "|")
		if match(topic, frame) {
			n++
		}
	}
	return n
}

func contains(topic, sub string) func(string, string) bool {
	return func(t, f string) bool { return t == topic && strings.Contains(f, sub) }
}

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mirrored reports whether b's mirror of topic has loaded.
func mirrored(b *Bus, topic string) bool {
	b.pres.mirMu.RLock()
	defer b.pres.mirMu.RUnlock()
	m := b.pres.mirrors[topic]
	return m != nil && m.loaded
}

func commandCalls(t testing.TB, rdb *redis.Client, cmd string) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			var n int64
			for _, c := range rest {
				if c < '0' || c > '9' {
					break
				}
				n = n*10 + int64(c-'0')
			}
			return n
		}
	}
	return 0
}

// TestPresentMirror: on a subscribed topic Present follows changes made on
// other nodes without asking Redis.
func TestPresentMirror(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	a, b := c.node(t), c.node(t)
	const topic = "chat:ann:ben"
	ctx := context.Background()
	// Ben's entry exists before b subscribes: it must come from the snapshot.
	if err := a.Presence().Track(ctx, topic, "ben", hub.Meta{Ref: "b1", Name: "Ben"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe(topic); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "mirror loaded", func() bool { return mirrored(b, topic) })

	before := commandCalls(t, b.rdb, "hget")
	check := func(key string, want bool) {
		t.Helper()
		eventually(t, 2*time.Second, "Present("+key+")", func() bool {
			ok, err := b.Presence().Present(ctx, topic, key)
			return err == nil && ok == want
		})
	}
	check("ben", true)
	check("ann", false)
	if err := a.Presence().Track(ctx, topic, "ann", hub.Meta{Ref: "a1", Name: "Ann"}); err != nil {
		t.Fatal(err)
	}
	check("ann", true)
	if err := a.Presence().Untrack(ctx, topic, "ben", "b1"); err != nil {
		t.Fatal(err)
	}
	check("ben", false)
	if n := commandCalls(t, b.rdb, "hget") - before; n != 0 {
		t.Fatalf("Present on a mirrored topic made %d HGETs", n)
	}

	// Unsubscribed: the mirror goes and Present asks Redis.
	if err := b.Unsubscribe(topic); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Presence().Present(ctx, topic, "ann"); err != nil || !ok {
		t.Fatalf("Present after unsubscribe = %v, %v", ok, err)
	}
}

// TestNodeDeath: a node that dies without cleanup loses its presence within
// the TTL, and the survivors' clients get the leaves.
func TestNodeDeath(t *testing.T) {
	const ttl = 2 * time.Second
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: ttl}
	dead, live := c.node(t), c.node(t)
	rec := run(t, live)
	ctx := context.Background()
	const topic = "chat:dan:eve"
	if err := live.Subscribe(topic); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "mirror loaded", func() bool { return mirrored(live, topic) })
	dp := dead.Presence()
	must(t, dp.Track(ctx, topic, "dan", hub.Meta{Ref: "ghost1", Name: "Dan"}))
	must(t, dp.Track(ctx, "user:dan", "dan", hub.Meta{Ref: "ghost2", Name: "Dan"}))
	must(t, live.Presence().Track(ctx, topic, "eve", hub.Meta{Ref: "eve1", Name: "Eve"}))
	if n, _ := live.rdb.Get(ctx, c.prefix+"online:dan").Int(); n != 1 {
		t.Fatalf("online:dan = %d, want 1", n)
	}

	killed := time.Now()
	kill(dead)
	eventually(t, ttl+ttl/3+2*time.Second, "ghost gone", func() bool {
		l, err := live.Presence().List(ctx, topic)
		return err == nil && len(l["dan"]) == 0 && len(l["eve"]) == 1
	})
	t.Logf("presence of the dead node gone after %v (TTL %v)", time.Since(killed).Round(10*time.Millisecond), ttl)
	frame := rec.wait(t, 2*time.Second, contains(topic, `"presence_diff"`))
	want := string(encodeBroadcast(topic, "presence_diff", hub.EncodeLeaves(map[string][]hub.Meta{"dan": {{Ref: "ghost1", Name: "Dan"}}})))
	if frame != want {
		t.Fatalf("leaves frame %q, want %q", frame, want)
	}
	eventually(t, time.Second, "mirror follows", func() bool {
		ok, _ := live.Presence().Present(ctx, topic, "dan")
		return !ok
	})
	if n, err := live.rdb.Exists(ctx, c.prefix+"online:dan", c.prefix+"node:"+dead.NodeID()+":presence").Result(); err != nil || n != 0 {
		t.Fatalf("dead node's keys remain: %d, %v", n, err)
	}
	if s, _ := live.rdb.HGet(ctx, c.prefix+"last_seen", "dan").Int64(); s < killed.Unix()-1 {
		t.Fatalf("last_seen dan = %d, want about %d", s, killed.Unix())
	}
	if n, _ := live.rdb.ZScore(ctx, c.prefix+"nodes", dead.NodeID()).Result(); n != 0 {
		t.Fatal("dead node still in the nodes set")
	}
}

// TestCloseCleansUp: a graceful Close removes the node's presence at once.
func TestCloseCleansUp(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	a, b := c.node(t), c.node(t)
	rec := run(t, b)
	const topic = "chat:fay:gus"
	must(t, b.Subscribe(topic))
	eventually(t, 5*time.Second, "mirror loaded", func() bool { return mirrored(b, topic) })
	must(t, a.Presence().Track(context.Background(), topic, "fay", hub.Meta{Ref: "f1", Name: "Fay"}))
	a.Close()
	rec.wait(t, 2*time.Second, contains(topic, `"leaves":{"fay"`))
	l, err := b.Presence().List(context.Background(), topic)
	if err != nil || len(l) != 0 {
		t.Fatalf("List after Close = %v, %v", l, err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRedisRestart: Redis goes away and comes back empty; the Buses are not
// recreated, yet delivery resumes on the same subscriptions and presence is
// re-asserted.
func TestRedisRestart(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	c := cluster{url: srv.URL(), prefix: prefix(t), ttl: 2 * time.Second}
	a, b := c.node(t), c.node(t)
	rec := run(t, b)
	const topic = "chat:hal:ivy"
	ctx := context.Background()
	must(t, b.Subscribe(topic))
	must(t, a.Presence().Track(ctx, topic, "hal", hub.Meta{Ref: "h1", Name: "Hal", OnlineAt: 7}))
	must(t, a.Presence().Track(ctx, "user:hal", "hal", hub.Meta{Ref: "h2", Name: "Hal", OnlineAt: 7}))
	probe := func(body string) {
		t.Helper()
		eventually(t, 15*time.Second, "delivery of "+body, func() bool {
			_ = a.Publish(topic, hubtest.Frame(topic, "probe", body))
			time.Sleep(50 * time.Millisecond)
			return rec.count(contains(topic, body)) > 0
		})
	}
	probe("before")

	srv.Stop()
	eventually(t, 10*time.Second, "Ready reports the outage", func() bool { return a.Ready() != nil && b.Ready() != nil })
	// Publishing during the outage neither blocks nor queues without bound.
	start := time.Now()
	var failed int
	for range 20_000 {
		if a.Publish(topic, hubtest.Frame(topic, "lost", "x")) != nil {
			failed++
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("20000 Publish calls during the outage took %v", d)
	}
	if failed == 0 {
		t.Fatal("Publish reported no failure during the outage")
	}
	t.Logf("outage: 20000 Publish calls in %v, %d refused; stats %+v", time.Since(start), failed, a.Stats())

	must(t, srv.Start())
	eventually(t, 15*time.Second, "Ready after restart", func() bool { return a.Ready() == nil && b.Ready() == nil })
	probe("after") // b's subscription was restored by itself
	eventually(t, 10*time.Second, "presence re-asserted", func() bool {
		l, err := b.Presence().List(ctx, topic)
		return err == nil && len(l["hal"]) == 1 && l["hal"][0].Ref == "h1"
	})
	if n, _ := b.rdb.Get(ctx, c.prefix+"online:hal").Int(); n != 1 {
		t.Fatalf("online:hal = %d after re-assert, want 1", n)
	}
	// No joins frame is asserted here: it may be published before b's
	// subscription is back, and b's clients never saw hal leave anyway.
	// TestSweptWhileAlive covers it.
	eventually(t, 5*time.Second, "mirror reloaded", func() bool {
		ok, _ := b.Presence().Present(ctx, topic, "hal")
		return mirrored(b, topic) && ok
	})
}

// TestSweptWhileAlive: a node swept as dead while it still runs (a long
// pause) notices at its next heartbeat, restores its presence and
// announces it again.
func TestSweptWhileAlive(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 2 * time.Second}
	a, b := c.node(t), c.node(t)
	rec := run(t, b)
	const topic = "chat:kim:lee"
	ctx := context.Background()
	must(t, b.Subscribe(topic))
	eventually(t, 5*time.Second, "mirror loaded", func() bool { return mirrored(b, topic) })
	must(t, a.Presence().Track(ctx, topic, "kim", hub.Meta{Ref: "k1", Name: "Kim", OnlineAt: 3}))
	// Make a look expired and sweep it as b's sweeper would.
	must(t, b.rdb.ZAdd(ctx, c.prefix+"nodes", redis.Z{Score: 0, Member: a.NodeID()}).Err())
	must(t, b.pres.sweep(ctx, a.NodeID(), false))
	rec.wait(t, time.Second, contains(topic, `"leaves":{"kim"`))
	rec.wait(t, 5*time.Second, contains(topic, `"joins":{"kim":{"metas":[{"phx_ref":"k1"`))
	eventually(t, 2*time.Second, "present again", func() bool {
		ok, _ := b.Presence().Present(ctx, topic, "kim")
		return ok
	})
}

func TestActionCable(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	a, b := c.node(t), c.node(t)
	recA, recB := run(t, a), run(t, b)
	ac := "app" + strings.TrimSuffix(c.prefix, ":") // channels are global: our own
	ctx := context.Background()
	must(t, a.ListenActionCable(ctx, ac, nil))
	must(t, b.ListenActionCable(ctx, ac, nil))
	must(t, b.Subscribe("user:42"))
	must(t, b.Subscribe("chat:4:5"))
	pub := redis.NewClient(&redis.Options{Addr: a.rdb.Options().Addr})
	defer pub.Close()

	send := func(channel, msg string) { must(t, pub.Publish(ctx, channel, msg).Err()) }
	// The pattern subscription is asynchronous: repeat until it is live.
	eventually(t, 5*time.Second, "pattern live", func() bool {
		send(ac+":user:42", `{"event":"warmup","payload":{}}`)
		time.Sleep(20 * time.Millisecond)
		return recB.count(contains("user:42", "warmup")) > 0
	})
	send(ac+":user:42", `{"event":"x","payload":{"a": 1}}`)
	send(ac+":chat:4:5", `{"kind":"raw","n":2}`)                    // no event: the whole object
	send(ac+":user:42", `"just a string"`)                          // dropped
	send(ac+":user:42", `{"event":"bad","payload":[1]}`)            // dropped
	send(ac+":user:42", `{"event":"phx_close","payload":{}}`)       // dropped
	send(ac+":other:42", `{"event":"x","payload":{}}`)              // not a pattern we listen to
	send(ac+":user:42", `{"event":"last","payload":{"done":true}}`) // ordering fence

	recB.wait(t, 2*time.Second, contains("user:42", `"last"`))
	if got := recB.wait(t, time.Second, contains("user:42", `"x"`)); got != string(encodeBroadcast("user:42", "x", []byte(`{"a":1}`))) {
		t.Fatalf("frame %q", got)
	}
	if got := recB.wait(t, time.Second, contains("chat:4:5", `"broadcast"`)); got != string(encodeBroadcast("chat:4:5", "broadcast", []byte(`{"kind":"raw","n":2}`))) {
		t.Fatalf("frame %q", got)
	}
	for _, bad := range []string{"just a string", `"bad"`, "phx_close"} {
		if recB.count(contains("user:42", bad)) != 0 {
			t.Fatalf("%s was delivered", bad)
		}
	}
	// Exactly once cluster-wide: a has no subscriber, b delivered once.
	if n := recB.count(contains("user:42", `"x"`)); n != 1 {
		t.Fatalf("delivered %d times on b", n)
	}
	if n := recA.count(func(string, string) bool { return true }); n != 0 {
		t.Fatalf("a delivered %d frames without subscribers", n)
	}

	// An explicit deliver function gets the parsed message.
	got := make(chan string, 1)
	ctx2, cancel := context.WithCancel(ctx)
	must(t, a.ListenActionCable(ctx2, ac+"2", func(topic, event string, payload []byte) {
		select {
		case got <- topic + " " + event + " " + string(payload):
		default:
		}
	}))
	eventually(t, 5*time.Second, "explicit deliver", func() bool {
		send(ac+"2:chat:1:2", `{"event":"y","payload":{"b":2}}`)
		select {
		case g := <-got:
			if g != `chat:1:2 y {"b":2}` {
				t.Fatalf("deliver got %q", g)
			}
			return true
		case <-time.After(20 * time.Millisecond):
			return false
		}
	})
	cancel()
	if err := a.ListenActionCable(ctx, ac, nil); err == nil {
		t.Fatal("listening twice to one prefix succeeded")
	}
}

func TestPlainPublish(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	a, b := c.node(t), c.node(t)
	recA, recB := run(t, a), run(t, b)
	must(t, a.Subscribe("chat:7:8"))
	must(t, b.Subscribe("chat:7:8"))
	ctx := context.Background()
	// The ingress channel is subscribed in New; wait until the topic is
	// (deliver is local-only and skips topics without subscribers). A chat,
	// whose mirror loading tells when the subscription is confirmed.
	eventually(t, 5*time.Second, "subscribed", func() bool { return mirrored(a, "chat:7:8") && mirrored(b, "chat:7:8") })
	must(t, a.rdb.Publish(ctx, c.prefix+"publish", `{"topic":"chat:7:8","event":"note","payload":{"x":"y"}}`).Err())
	must(t, a.rdb.Publish(ctx, c.prefix+"publish", `{"topic":"room:7","event":"note","payload":{}}`).Err())
	must(t, a.rdb.Publish(ctx, c.prefix+"publish", `{"topic":"chat:7:8","event":"fence","payload":{}}`).Err())
	want := string(encodeBroadcast("chat:7:8", "note", []byte(`{"x":"y"}`)))
	for _, r := range []*recorder{recA, recB} {
		r.wait(t, 2*time.Second, contains("chat:7:8", "fence"))
		if n := r.count(func(_, f string) bool { return f == want }); n != 1 {
			t.Fatalf("note delivered %d times on a node, want 1", n)
		}
		if n := r.count(contains("room:7", "")); n != 0 {
			t.Fatal("room:7 accepted")
		}
	}
}

// TestKeyPrefix: everything this package writes is under the prefix, and
// the documented keys are readable with plain commands.
func TestKeyPrefix(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	a := c.node(t)
	ctx := context.Background()
	must(t, a.Subscribe("chat:j:k"))
	must(t, a.Presence().Track(ctx, "chat:j:k", "j", hub.Meta{Ref: "r1", Name: "J"}))
	must(t, a.Presence().Track(ctx, "user:j", "j", hub.Meta{Ref: "r2", Name: "J"}))
	must(t, a.Presence().Track(ctx, "user:j", "j", hub.Meta{Ref: "r3", Name: "J"}))
	must(t, a.Publish("chat:j:k", []byte("frame")))
	keys, err := a.rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatal("no keys")
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, c.prefix) {
			t.Errorf("key %q outside prefix %q", k, c.prefix)
		}
	}
	t.Logf("keys: %q", keys)
	if n, _ := a.rdb.Get(ctx, c.prefix+"online:j").Int(); n != 2 {
		t.Fatalf("online:j = %d, want 2", n)
	}
	if s, _ := a.rdb.HGet(ctx, c.prefix+"last_seen", "j").Int64(); s < time.Now().Unix()-5 {
		t.Fatalf("last_seen j = %d", s)
	}
	must(t, a.Presence().Untrack(ctx, "user:j", "j", "r2"))
	must(t, a.Presence().Untrack(ctx, "user:j", "j", "r3"))
	if n, _ := a.rdb.Exists(ctx, c.prefix+"online:j").Result(); n != 0 {
		t.Fatal("online:j remains at 0 connections")
	}
}

// TestSubscribeDoesNotBlock: Subscribe and Unsubscribe only queue work.
func TestSubscribeDoesNotBlock(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	c := cluster{url: srv.URL(), prefix: prefix(t), ttl: 30 * time.Second}
	a := c.node(t)
	srv.Stop()
	start := time.Now()
	for i := range 1000 {
		topic := "chat:s:" + string(rune('a'+i%26))
		must(t, a.Subscribe(topic))
		must(t, a.Unsubscribe(topic))
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("1000 Subscribe/Unsubscribe pairs with Redis down took %v", d)
	}
}

// TestAnnounceResync: a node's announcement reaches the other nodes with
// its watermark, and not the node itself.
func TestAnnounceResync(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	mk := func(heard chan string) *Bus {
		b, err := New(context.Background(), Options{
			URL: c.url, Prefix: c.prefix, PresenceTTL: c.ttl, Logger: testLogger(t),
			OnResync: func(w int64, node string) { heard <- fmt.Sprint(w, " from ", node) },
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	heardA, heardB := make(chan string, 100), make(chan string, 100)
	a := mk(heardA)
	mk(heardB)
	// The control channel is subscribed in New but confirmed
	// asynchronously: announce until the other node hears it.
	want := fmt.Sprint(42, " from ", a.NodeID())
	deadline := time.Now().Add(5 * time.Second)
	for got := ""; got == ""; {
		must(t, a.AnnounceResync(context.Background(), 42))
		select {
		case got = <-heardB:
			if got != want {
				t.Fatalf("b heard %q, want %q", got, want)
			}
		case <-time.After(100 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("announcement never arrived")
			}
		}
	}
	select {
	case got := <-heardA:
		t.Fatalf("the announcing node heard itself: %q", got)
	case <-time.After(200 * time.Millisecond):
	}
}
