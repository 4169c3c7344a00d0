package redisbus

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/hub"
)

// TestSentinelFailover: nodes that follow a Sentinel-managed primary
// survive its death under traffic: they report the outage, follow the
// promoted replica, resubscribe (messages flow again), keep their
// presence, and are ready again.
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five servers")
	}
	ss := testenv.StartSentinelSet(t)
	pfx := prefix(t)
	mk := func() *Bus {
		b, err := New(context.Background(), Options{
			URL: "redis://", Sentinels: ss.Addrs(), MasterName: ss.MasterName,
			Prefix: pfx, PresenceTTL: 30 * time.Second, Logger: testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	a, b := mk(), mk()
	recA := run(t, a)
	recB := run(t, b)
	const topic = "chat:1:2"
	confirmed(t, subscribe(t, a, topic), 5*time.Second)
	confirmed(t, subscribe(t, b, topic), 5*time.Second)
	ctx := context.Background()
	must(t, a.Presence().Track(ctx, topic, "1", hub.Meta{Ref: "ra", Name: "A"}))
	must(t, b.Presence().Track(ctx, topic, "2", hub.Meta{Ref: "rb", Name: "B"}))
	sent := publishing(t, b, topic)
	recA.wait(t, 5*time.Second, "first delivery", kindIs(kDeliver))

	kill := time.Now()
	ss.Primary.Kill()
	recA.wait(t, 10*time.Second, "a down", kindIs(kDown))
	recB.wait(t, 10*time.Second, "b down", kindIs(kDown))
	recA.wait(t, 30*time.Second, "a up", kindIs(kUp))
	recB.wait(t, 30*time.Second, "b up", kindIs(kUp))
	after := sent.Load()
	got := recA.wait(t, 10*time.Second, "deliveries from the new primary", func(c call) bool {
		i, _ := strconv.Atoi(strings.TrimPrefix(c.data, "frame-"))
		return c.kind == kDeliver && int64(i) > after
	})
	t.Logf("fanout back %v after the primary was killed (%s)", time.Since(kill).Round(time.Millisecond), got.data)
	if m, err := ss.MasterAddr(); err != nil || m != ss.Replica.Addr() {
		t.Fatalf("primary now %q (%v), want the replica %s", m, err, ss.Replica.Addr())
	}
	eventually(t, 15*time.Second, "presence of both nodes on the new primary", func() bool {
		l, err := a.Presence().List(ctx, topic)
		return err == nil && len(l["1"]) == 1 && len(l["2"]) == 1
	})
	eventually(t, 10*time.Second, "both ready", func() bool { return a.Ready() == nil && b.Ready() == nil })
}
