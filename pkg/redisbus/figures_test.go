package redisbus

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/hub"
)

// counter is a BusHandler that counts deliveries.
type counter struct {
	recorder
	n atomic.Int64
}

func (c *counter) Deliver(string, []byte) { c.n.Add(1) }

// redisCPU sums used_cpu_user + used_cpu_sys (seconds) over servers.
func redisCPU(t *testing.T, addrs []string) float64 {
	var sum float64
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		info, err := c.Info(context.Background(), "cpu").Result()
		c.Close()
		if err != nil {
			continue // a killed server
		}
		for _, l := range strings.Split(info, "\r\n") {
			for _, k := range []string{"used_cpu_user:", "used_cpu_sys:"} {
				if v, ok := strings.CutPrefix(l, k); ok {
					f, _ := strconv.ParseFloat(v, 64)
					sum += f
				}
			}
		}
	}
	return sum
}

// fanout runs 3 nodes; each of 600 chats is subscribed on two of them and
// published to from one at a time, 300-byte frames, for d. It returns the
// frames delivered per second across nodes and Redis CPU per frame.
func fanout(t *testing.T, mk func() *Bus, addrs []string, d time.Duration) (float64, time.Duration) {
	nodes := []*Bus{mk(), mk(), mk()}
	counters := make([]*counter, len(nodes))
	for i, b := range nodes {
		counters[i] = &counter{}
		runHandler(t, b, counters[i])
	}
	const chats = 600
	var lives []<-chan struct{}
	for c := range chats {
		topic := fmt.Sprintf("chat:%d:%d", 2*c+1, 2*c+2)
		for _, i := range []int{c % 3, (c + 1) % 3} {
			lives = append(lives, subscribe(t, nodes[i], topic))
		}
	}
	for _, l := range lives {
		confirmed(t, l, 30*time.Second)
	}
	frame := []byte(strings.Repeat("x", 300))
	cpu0 := redisCPU(t, addrs)
	start := time.Now()
	var wg sync.WaitGroup
	for i, b := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Since(start) < d && n < 1<<30; n++ {
				c := (3*n + i) % chats // a chat this node subscribes: published locally, delivered remotely once
				if b.Publish(fmt.Sprintf("chat:%d:%d", 2*c+1, 2*c+2), frame) != nil {
					time.Sleep(200 * time.Microsecond) // queue full: back off
				}
			}
		}()
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // drain
	el := time.Since(start)
	var delivered int64
	for _, c := range counters {
		delivered += c.n.Load()
	}
	cpu := redisCPU(t, addrs) - cpu0
	_ = hub.Meta{}
	return float64(delivered) / el.Seconds(), time.Duration(cpu / float64(delivered) * float64(time.Second))
}

// TestFanoutFigures measures cross-node fanout on one Redis and on a
// 3-primary Redis Cluster with the same load. Run with ELCHAT_FIGURES=1.
func TestFanoutFigures(t *testing.T) {
	if os.Getenv("ELCHAT_FIGURES") == "" {
		t.Skip("set ELCHAT_FIGURES=1")
	}
	const d = 8 * time.Second
	srv := testenv.StartRedisServer(t)
	pfx := prefix(t)
	one, cpuOne := fanout(t, func() *Bus {
		b, err := New(context.Background(), Options{URL: srv.URL(), Prefix: pfx, Logger: testLogger(t)})
		must(t, err)
		t.Cleanup(b.Close)
		return b
	}, []string{srv.Addr()}, d)
	t.Logf("one Redis: %.0f frames/s delivered across nodes, Redis CPU %v per frame", one, cpuOne)
	srv.Kill()
	rc := testenv.StartRedisCluster(t)
	pfx = prefix(t)
	var prim []string
	for _, s := range rc.Primaries() {
		prim = append(prim, s.Addr())
	}
	allCPU0 := redisCPU(t, rc.Seeds())
	cl, cpuCl := fanout(t, func() *Bus { return clusterNode(t, rc.Seeds(), pfx, 30*time.Second) }, prim, d)
	all := redisCPU(t, rc.Seeds()) - allCPU0
	t.Logf("Redis Cluster, 3 primaries + 3 replicas: %.0f frames/s delivered across nodes, Redis CPU %v per frame on the primaries, %.2f s CPU on all six servers",
		cl, cpuCl, all)
}
