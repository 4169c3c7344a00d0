package redisbus

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/hub/hubtest"
)

var (
	clusterOnce sync.Once
	clusterSrv  *testenv.RedisCluster
)

// sharedCluster starts one Redis Cluster for the tests of this binary
// that do not break it.
func sharedCluster(t *testing.T) *testenv.RedisCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts six servers")
	}
	clusterOnce.Do(func() {
		// Owned by the binary, not by t: killed by Pdeathsig at exit.
		clusterSrv = testenv.StartRedisClusterShared(t)
	})
	if clusterSrv == nil {
		t.Fatal("no cluster")
	}
	return clusterSrv
}

func clusterNode(t testing.TB, seeds []string, pfx string, ttl time.Duration) *Bus {
	t.Helper()
	b, err := New(context.Background(), Options{Cluster: seeds, Prefix: pfx, PresenceTTL: ttl, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func TestClusterBusContract(t *testing.T) {
	rc := sharedCluster(t)
	hubtest.RunBus(t, func(t *testing.T, nodes int) []hub.Bus {
		pfx := prefix(t)
		out := make([]hub.Bus, nodes)
		for i := range out {
			out[i] = clusterNode(t, rc.Seeds(), pfx, 30*time.Second)
		}
		return out
	})
}

func TestClusterPresenceContract(t *testing.T) {
	rc := sharedCluster(t)
	hubtest.RunPresence(t, func(t *testing.T, nodes int) []hub.Presence {
		pfx := prefix(t)
		out := make([]hub.Presence, nodes)
		for i := range out {
			out[i] = clusterNode(t, rc.Seeds(), pfx, 30*time.Second).Presence()
		}
		return out
	})
}

// TestClusterConnections: a node holds one classic and one sharded
// connection per partition, however many topics it subscribes.
func TestClusterConnections(t *testing.T) {
	rc := sharedCluster(t)
	b := clusterNode(t, rc.Seeds(), prefix(t), 30*time.Second)
	for i := range 200 {
		confirmed(t, subscribe(t, b, "chat:"+strconv.Itoa(2*i+1)+":"+strconv.Itoa(2*i+2)), 10*time.Second)
	}
	if n := len(b.conns); n != 1+defaultPartitions {
		t.Fatalf("%d pub/sub connections, want %d", n, 1+defaultPartitions)
	}
	eventually(t, 10*time.Second, "ready", func() bool { return b.Ready() == nil })
}

// TestClusterNodeDeath: a dead node's presence is swept per partition on
// a cluster too, and the leaves are reported.
func TestClusterNodeDeath(t *testing.T) {
	rc := sharedCluster(t)
	const ttl = 2 * time.Second
	pfx := prefix(t)
	dead, live := clusterNode(t, rc.Seeds(), pfx, ttl), clusterNode(t, rc.Seeds(), pfx, ttl)
	rec := run(t, live)
	ctx := context.Background()
	var topics []string
	for i := range 50 {
		topics = append(topics, "chat:"+strconv.Itoa(2*i+1)+":"+strconv.Itoa(2*i+2))
	}
	for _, topic := range topics {
		confirmed(t, subscribe(t, live, topic), 10*time.Second)
		must(t, dead.Presence().Track(ctx, topic, strings.Split(topic, ":")[1], hub.Meta{Ref: "g" + topic, Name: "G"}))
	}
	must(t, dead.Presence().Track(ctx, "user:9", "9", hub.Meta{Ref: "lobby", Name: "G"}))
	if n, _ := live.rdb.Get(ctx, pfx+"online:9").Int(); n != 1 {
		t.Fatalf("online:9 = %d", n)
	}
	kill(dead)
	eventually(t, ttl+ttl/3+10*time.Second, "every leave", func() bool { return rec.count(kindIs(kPresence)) == len(topics) })
	for _, topic := range topics {
		if l, _ := live.Presence().List(ctx, topic); len(l) != 0 {
			t.Fatalf("%s still has %v", topic, l)
		}
	}
	if n, _ := live.rdb.Exists(ctx, pfx+"online:9").Result(); n != 0 {
		t.Fatal("online:9 left")
	}
}

// TestClusterReshard moves the slot of a subscribed topic's partition to
// another primary under traffic: Redis drops the sharded subscription,
// the node subscribes again on the new owner, reports the outage so the
// hub resyncs, and deliveries and presence carry on.
func TestClusterReshard(t *testing.T) {
	if testing.Short() {
		t.Skip("starts six servers")
	}
	rc := testenv.StartRedisCluster(t)
	pfx := prefix(t)
	a, b := clusterNode(t, rc.Seeds(), pfx, 30*time.Second), clusterNode(t, rc.Seeds(), pfx, 30*time.Second)
	recA := run(t, a)
	run(t, b)
	const topic = "chat:1:2"
	confirmed(t, subscribe(t, a, topic), 10*time.Second)
	ctx := context.Background()
	must(t, b.Presence().Track(ctx, topic, "2", hub.Meta{Ref: "r2", Name: "B"}))
	sent := publishing(t, b, topic)
	recA.wait(t, 5*time.Second, "first delivery", kindIs(kDeliver))

	tag := a.keys.tag(topic)
	slot := int(crc16(tag[1:len(tag)-1]) % slots)
	var target string
	for _, p := range rc.Primaries() {
		if own, _ := p.OwnsSlot(slot); !own {
			target = p.Addr()
			break
		}
	}
	moved := time.Now()
	must(t, rc.MoveSlot(slot, target))
	recA.wait(t, 10*time.Second, "down after the move", kindIs(kDown))
	recA.wait(t, 15*time.Second, "up on the new owner", kindIs(kUp))
	after := sent.Load()
	recA.wait(t, 10*time.Second, "deliveries from the new owner", func(c call) bool {
		i, _ := strconv.Atoi(strings.TrimPrefix(c.data, "frame-"))
		return c.kind == kDeliver && int64(i) > after
	})
	t.Logf("slot %d moved to %s: deliveries back %v after the move", slot, target, time.Since(moved).Round(time.Millisecond))
	l, err := a.Presence().List(ctx, topic)
	if err != nil || len(l["2"]) != 1 {
		t.Fatalf("presence after the move: %v %v", l, err)
	}
}

// TestClusterIngressAndControl: on a cluster the ingress and control
// channels are classic pub/sub, which Redis Cluster carries to every
// node: plain publishes reach the hub, resync announcements the others.
func TestClusterIngressAndControl(t *testing.T) {
	rc := sharedCluster(t)
	pfx := prefix(t)
	a, b := clusterNode(t, rc.Seeds(), pfx, 30*time.Second), clusterNode(t, rc.Seeds(), pfx, 30*time.Second)
	recA, recB := run(t, a), run(t, b)
	const topic = "user:42"
	confirmed(t, subscribe(t, b, topic), 10*time.Second)
	ctx := context.Background()
	eventually(t, 10*time.Second, "plain ingress", func() bool {
		must(t, a.rdb.Publish(ctx, pfx+"publish", `{"topic":"user:42","event":"invoice_paid","payload":{"id":7}}`).Err())
		time.Sleep(20 * time.Millisecond)
		return recB.count(ingressed(topic, "invoice_paid")) > 0
	})
	must(t, a.AnnounceResync(ctx, 42))
	got := recB.wait(t, 5*time.Second, "resync announcement", kindIs(kResync))
	if got.watermark != 42 || got.node != a.NodeID() {
		t.Fatalf("ResyncRequested(%d, %q)", got.watermark, got.node)
	}
	if n := recA.count(kindIs(kResync)); n != 0 {
		t.Fatalf("the announcer heard itself")
	}
}

// TestClusterPrimaryFailover: after a primary dies and its replica takes
// over, new subscriptions on every partition are confirmed and carry
// messages.
func TestClusterPrimaryFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts six servers")
	}
	rc := testenv.StartRedisCluster(t)
	pfx := prefix(t)
	a, b := clusterNode(t, rc.Seeds(), pfx, 30*time.Second), clusterNode(t, rc.Seeds(), pfx, 30*time.Second)
	recA := run(t, a)
	run(t, b)
	confirmed(t, subscribe(t, a, "chat:1:2"), 10*time.Second)
	rc.Primaries()[0].Kill()
	recA.wait(t, 15*time.Second, "down", kindIs(kDown))
	recA.wait(t, 30*time.Second, "up", kindIs(kUp))
	// One new topic per partition.
	seen := map[int]string{}
	for i := 0; len(seen) < a.keys.partitions() && i < 10000; i++ {
		topic := "chat:" + strconv.Itoa(2*i+101) + ":" + strconv.Itoa(2*i+102)
		if _, ok := seen[a.keys.partition(topic)]; !ok {
			seen[a.keys.partition(topic)] = topic
		}
	}
	for part, topic := range seen {
		start := time.Now()
		confirmed(t, subscribe(t, a, topic), 10*time.Second)
		if d := time.Since(start); d > time.Second {
			t.Logf("partition %d: confirmed after %v", part, d)
		}
		eventually(t, 10*time.Second, "delivery on partition "+strconv.Itoa(part), func() bool {
			// b may still be reconnecting to the promoted primary: a
			// refused publish is retried like an undelivered one.
			if b.Publish(topic, []byte("after-"+topic)) != nil {
				time.Sleep(20 * time.Millisecond)
				return false
			}
			time.Sleep(20 * time.Millisecond)
			return recA.count(delivered(topic, "after-")) > 0
		})
	}
}
