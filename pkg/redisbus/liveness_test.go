package redisbus

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/testenv"
)

// publishing publishes a numbered frame on topic from b every 10 ms until
// the test ends.
func publishing(t *testing.T, b *Bus, topic string) *atomic.Int64 {
	var n atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 100000; i++ { // bounded: 1000 s at most
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if b.Publish(topic, []byte("frame-"+strconv.Itoa(i))) == nil {
				n.Store(int64(i))
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return &n
}

// TestSilentSubscriber: a pub/sub connection that stops carrying anything
// without an error (here: a proxy that swallows the bytes of the
// connections open at that moment) is found by the canary within 5 s,
// reported Down with a last sign of life from before the cut, replaced,
// and reported Up; messages flow again afterwards.
func TestSilentSubscriber(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	proxy := testenv.StartProxy(t, srv.Addr())
	pfx := prefix(t)
	via := cluster{url: "redis://" + proxy.Addr() + "/0", prefix: pfx, ttl: 30 * time.Second}
	direct := cluster{url: srv.URL(), prefix: pfx, ttl: 30 * time.Second}
	a, b := via.node(t), direct.node(t)
	recA := run(t, a)
	run(t, b)
	const topic = "chat:1:2"
	confirmed(t, subscribe(t, a, topic), 5*time.Second)
	sent := publishing(t, b, topic)
	recA.wait(t, 5*time.Second, "first delivery", kindIs(kDeliver))

	cut := time.Now()
	proxy.Freeze()
	down := recA.wait(t, 6*time.Second, "down", kindIs(kDown))
	detect := time.Since(cut)
	t.Logf("silent subscriber detected after %v (last sign of life %v before the cut)", detect.Round(time.Millisecond), cut.Sub(down.at).Round(time.Millisecond))
	if detect > 5*time.Second {
		t.Errorf("detected after %v, want within 5s", detect)
	}
	if !down.at.Before(cut) {
		t.Errorf("last sign of life %v is not before the cut %v", down.at, cut)
	}
	if a.Ready() == nil {
		t.Errorf("Ready while the subscriber is silent")
	}
	if up := recA.wait(t, 10*time.Second, "up", kindIs(kUp)); !up.loss.Received {
		t.Errorf("Up after the subscription was lost reports %+v, want Received", up.loss)
	}
	after := sent.Load()
	recA.wait(t, 5*time.Second, "deliveries after the new connection", func(c call) bool {
		if c.kind != kDeliver {
			return false
		}
		i, _ := strconv.Atoi(strings.TrimPrefix(c.data, "frame-"))
		return int64(i) > after
	})
	eventually(t, 5*time.Second, "ready again", func() bool { return a.Ready() == nil })
	if a.Stats().Silent == 0 {
		t.Errorf("Stats.Silent not counted")
	}
}

// TestKilledSubscriber: CLIENT KILL TYPE pubsub ends the connection with an
// error: go-redis reconnects, the bus reports Down and Up, and messages
// flow again.
func TestKilledSubscriber(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	c := cluster{url: srv.URL(), prefix: prefix(t), ttl: 30 * time.Second}
	a, b := c.node(t), c.node(t)
	recA := run(t, a)
	run(t, b)
	const topic = "chat:1:2"
	confirmed(t, subscribe(t, a, topic), 5*time.Second)
	sent := publishing(t, b, topic)
	recA.wait(t, 5*time.Second, "first delivery", kindIs(kDeliver))
	cut := time.Now()
	must(t, b.rdb.Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err())
	recA.wait(t, 5*time.Second, "down", kindIs(kDown))
	t.Logf("killed subscriber detected after %v", time.Since(cut).Round(time.Millisecond))
	if up := recA.wait(t, 10*time.Second, "up", kindIs(kUp)); !up.loss.Received {
		t.Errorf("Up after the subscription was lost reports %+v, want Received", up.loss)
	}
	after := sent.Load()
	recA.wait(t, 5*time.Second, "deliveries after the reconnect", func(c call) bool {
		i, _ := strconv.Atoi(strings.TrimPrefix(c.data, "frame-"))
		return c.kind == kDeliver && int64(i) > after
	})
}

// TestCanaryNotSentIsNotSilence: while Redis refuses the node's commands
// (here PUBLISH is taken from its ACL user; in production, a failover
// still under way) no canary reaches Redis, and the subscription, which
// still works, is not replaced for want of canaries; once commands work
// again the bus is ready without a second outage.
func TestCanaryNotSentIsNotSilence(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	if _, err := srv.Do("ACL", "SETUSER", "bus", "on", ">pw", "~*", "&*", "+@all"); err != nil {
		t.Fatal(err)
	}
	b, err := New(context.Background(), Options{
		URL: "redis://bus:pw@" + srv.Addr() + "/0", Prefix: prefix(t), PresenceTTL: 30 * time.Second,
		Liveness: 800 * time.Millisecond, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	rec := run(t, b)
	eventually(t, 5*time.Second, "ready", func() bool { return b.Ready() == nil })

	if _, err := srv.Do("ACL", "SETUSER", "bus", "-publish"); err != nil {
		t.Fatal(err)
	}
	// Four liveness periods without a canary back.
	deadline := time.Now().Add(3200 * time.Millisecond)
	for time.Now().Before(deadline) {
		b.Publish("chat:1:2", []byte("frame")) // fails: commands are refused
		time.Sleep(50 * time.Millisecond)
	}
	if n := b.Stats().Silent; n != 0 {
		t.Errorf("subscription replaced %d times while only PUBLISH was refused", n)
	}
	if _, err := srv.Do("ACL", "SETUSER", "bus", "+publish"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "ready again", func() bool { return b.Ready() == nil })
	// Canaries come back again: two liveness periods without a silence.
	time.Sleep(1600 * time.Millisecond)
	if n := b.Stats().Silent; n != 0 {
		t.Errorf("subscription replaced %d times after commands came back", n)
	}
	if b.Ready() != nil {
		t.Errorf("not ready: %v", b.Ready())
	}
	// The recoveries report what was lost: frames this node published,
	// never what it receives (the subscription held), so the hub makes
	// the other nodes' clients catch up but not its own.
	ups := rec.all(kindIs(kUp))
	published := 0
	for _, c := range ups {
		if c.loss.Received {
			t.Errorf("Up reports a lapsed subscription: %+v", c.loss)
		}
		if c.loss.Published {
			published++
		}
	}
	if published == 0 {
		t.Errorf("%d Up calls, none reporting the refused frames", len(ups))
	}
}

// TestReplacedSubscriptionNotSilentForOldCanaries: a subscription found
// silent is replaced; if commands then fail (here PUBLISH is taken from
// the bus's ACL user), the canary that condemned the old connection must
// not condemn the new one, over and over, each time a Down and a rejoin
// wave of every client.
func TestReplacedSubscriptionNotSilentForOldCanaries(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	if _, err := srv.Do("ACL", "SETUSER", "bus", "on", ">pw", "~*", "&*", "+@all"); err != nil {
		t.Fatal(err)
	}
	proxy := testenv.StartProxy(t, srv.Addr())
	b, err := New(context.Background(), Options{
		URL: "redis://bus:pw@" + proxy.Addr() + "/0", Prefix: prefix(t), PresenceTTL: 30 * time.Second,
		Liveness: 800 * time.Millisecond, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	run(t, b)
	eventually(t, 5*time.Second, "ready", func() bool { return b.Ready() == nil })
	proxy.Freeze()
	c := b.conns[0]
	eventually(t, 5*time.Second, "an answered canary outstanding", func() bool {
		return c.unanswered.Load() > c.lastAlive.Load()
	})
	if _, err := srv.Do("ACL", "SETUSER", "bus", "-publish"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the frozen subscription replaced", func() bool { return b.Stats().Silent >= 1 })
	first := b.Stats().Silent
	time.Sleep(3200 * time.Millisecond) // four liveness periods
	if n := b.Stats().Silent - first; n != 0 {
		t.Errorf("the new subscription was replaced %d more times for a canary sent before it existed", n)
	}
}
