package redisbus

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/hub/hubtest"
)

// BenchmarkPublish measures end-to-end fanout: frames published on one node
// until all have reached a subscribed second node. Reports frames/s and the
// bytes Redis received per frame (RESP included, from INFO stats).
func BenchmarkPublish(b *testing.B) {
	for _, size := range []int{200, 2000} {
		b.Run(fmt.Sprintf("frame=%dB", size), func(b *testing.B) {
			c := cluster{url: testenv.Redis(b), prefix: prefix(b), ttl: 30 * time.Second}
			pub, sub := c.node(b), c.node(b)
			const topic = "chat:bench:mark"
			frame := hubtest.Frame(topic, "new_message", strings.Repeat("x", size-len(hubtest.Frame(topic, "new_message", ""))))
			var got atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go sub.Run(ctx, &countingHandler{recorder: &recorder{}, n: &got})
			subscribe(b, sub, topic)
			for got.Load() == 0 {
				_ = pub.Publish(topic, frame)
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond)
			got.Store(0)
			in0 := netInput(b, pub.rdb)
			b.SetBytes(int64(len(frame)))
			b.ResetTimer()
			start := time.Now()
			var refused int
			for range b.N {
				for pub.Publish(topic, frame) != nil {
					refused++
					time.Sleep(50 * time.Microsecond) // queue full: let it drain
				}
			}
			for got.Load() < int64(b.N) {
				time.Sleep(100 * time.Microsecond)
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "frames/s")
			b.ReportMetric(float64(netInput(b, pub.rdb)-in0)/float64(b.N), "redis-in-B/frame")
			b.ReportMetric(float64(refused)/float64(b.N), "queue-full/frame")
		})
	}
}

// countingHandler counts deliveries instead of recording them, so that
// the benchmark measures the bus, not the recorder.
type countingHandler struct {
	*recorder
	n *atomic.Int64
}

func (h *countingHandler) Deliver(string, []byte) { h.n.Add(1) }

func netInput(t testing.TB, rdb redis.UniversalClient) int64 {
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_net_input_bytes:"); ok {
			var n int64
			fmt.Sscan(v, &n)
			return n
		}
	}
	return 0
}

// BenchmarkPresent is the per-chat-message cost: a mirrored topic answers
// from memory; an unmirrored one costs an HGET.
func BenchmarkPresent(b *testing.B) {
	c := cluster{url: testenv.Redis(b), prefix: prefix(b), ttl: 30 * time.Second}
	n := c.node(b)
	ctx := context.Background()
	must(b, n.Presence().Track(ctx, "chat:p:q", "q", hub.Meta{Ref: "r", Name: "Q"}))
	must(b, n.Presence().Track(ctx, "chat:p:r", "r", hub.Meta{Ref: "r", Name: "R"}))
	subscribe(b, n, "chat:p:q")
	eventually(b, 5*time.Second, "mirror", func() bool { return mirrored(n, "chat:p:q") })
	b.Run("mirrored", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if ok, _ := n.Presence().Present(ctx, "chat:p:q", "q"); !ok {
					b.Fatal("not present")
				}
			}
		})
	})
	b.Run("redis", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if ok, _ := n.Presence().Present(ctx, "chat:p:r", "r"); !ok {
				b.Fatal("not present")
			}
		}
	})
}

// TestMeasureConnect reports the Redis work of one connection's lifecycle as
// the hub drives it (lobby join: Subscribe + Track; chat join: Subscribe +
// Track + List; then leaves), from INFO commandstats and net counters. Run
// with -v to see the figures.
func TestMeasureConnect(t *testing.T) {
	c := cluster{url: testenv.Redis(t), prefix: prefix(t), ttl: 30 * time.Second}
	a := c.node(t)
	ctx := context.Background()
	const n = 200
	calls := func() map[string]int64 {
		m := map[string]int64{}
		for _, cmd := range []string{"evalsha", "eval", "hgetall", "hkeys", "hget", "subscribe", "unsubscribe", "publish", "zadd"} {
			m[cmd] = commandCalls(t, a.rdb, cmd)
		}
		return m
	}
	phase := func(name string, f func(i int)) {
		before, in0 := calls(), netInput(t, a.rdb)
		for i := range n {
			f(i)
		}
		time.Sleep(300 * time.Millisecond) // let subLoop and the loader finish
		after, in1 := calls(), netInput(t, a.rdb)
		var parts []string
		for k, v := range after {
			if d := v - before[k]; d > 0 {
				parts = append(parts, fmt.Sprintf("%s=%.2f", k, float64(d)/n))
			}
		}
		t.Logf("%s, per connection: %s; %.0f bytes into Redis (the heartbeat's few bytes included)",
			name, strings.Join(parts, " "), float64(in1-in0)/n)
	}
	meta := func(i int) hub.Meta {
		return hub.Meta{Ref: fmt.Sprintf("GAAAAAAAAAA%05d", i), Name: "Some User", OnlineAt: time.Now().Unix()}
	}
	phase("lobby join (Subscribe user:ID + Track)", func(i int) {
		topic := fmt.Sprintf("user:%d", i)
		subscribe(t, a, topic)
		must(t, a.Presence().Track(ctx, topic, fmt.Sprint(i), meta(i)))
	})
	phase("chat join (Subscribe + Track + List)", func(i int) {
		topic := fmt.Sprintf("chat:%d:z%d", i, i)
		subscribe(t, a, topic)
		must(t, a.Presence().Track(ctx, topic, fmt.Sprint(i), meta(i)))
		if _, err := a.Presence().List(ctx, topic); err != nil {
			t.Fatal(err)
		}
	})
	phase("disconnect (Untrack + Unsubscribe, both topics)", func(i int) {
		for _, topic := range []string{fmt.Sprintf("user:%d", i), fmt.Sprintf("chat:%d:z%d", i, i)} {
			must(t, a.Presence().Untrack(ctx, topic, fmt.Sprint(i), meta(i).Ref))
			must(t, a.Unsubscribe(topic))
		}
	})
}
