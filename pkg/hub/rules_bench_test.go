package hub

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/store/memstore"
	"github.com/elchat/elchat/pkg/store/postgres"
	"github.com/elchat/elchat/pkg/topic"
)

// BenchmarkBlockCheck is what the block rules cost one message once both
// users' blocks are cached (a chat join caches them): two map lookups under
// a read lock, no allocation, no store round trip. A chat grant costs a
// message nothing: it is checked at the join only.
func BenchmarkBlockCheck(b *testing.B) {
	for _, blocks := range []int{0, 1000} {
		b.Run(fmt.Sprintf("blocked_users=%d", blocks), func(b *testing.B) {
			st := memstore.New()
			defer st.Close()
			h := New(Config{Store: st})
			defer h.Close()
			for i := range blocks {
				st.SetBlock(b.Context(), "2", fmt.Sprint("x", i), true) //nolint:errcheck
			}
			t, _ := topic.Parse("chat:1:2")
			if r, err := h.blockReason(t, "1"); r != "" || err != nil { // fills the cache
				b.Fatal(r, err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if r, _ := h.blockReason(t, "1"); r != "" {
					b.Fatal(r)
				}
			}
		})
	}
}

// BenchmarkBlockCheckParallel is BenchmarkBlockCheck from every core at
// once: the cache's read lock must not serialise senders.
func BenchmarkBlockCheckParallel(b *testing.B) {
	h := New(Config{Store: memstore.New()})
	defer h.Close()
	t, _ := topic.Parse("chat:1:2")
	h.blockReason(t, "1") //nolint:errcheck
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.blockReason(t, "1") //nolint:errcheck
		}
	})
}

// BenchmarkStoredPerSecond measures messages stored and delivered per
// second on PostgreSQL by 64 concurrent senders over 64 chats, with the
// block check (checks=on, the path of new_message) and without it
// (checks=off, the path before blocks existed), in one run: blocks of four
// rounds of roundTime, on, off, off, on, so that drift (the table growing,
// other load on the machine) falls on both sides alike. It reports the
// mean rate of each side, on/off in percent, and the median of the blocks'
// on/off (robust to a burst of load in one round).
//
//	go test ./pkg/hub -run '^$' -bench StoredPerSecond -benchtime 1x
func BenchmarkStoredPerSecond(b *testing.B) {
	url := testenv.Postgres(b)
	ctx := context.Background()
	st, err := postgres.Open(ctx, url, postgres.Options{Migrate: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	h := New(Config{Store: st})
	defer h.Close()
	const (
		senders   = 64
		blocks    = 5
		roundTime = time.Second
	)
	chats := make([]topic.Topic, senders)
	for i := range chats {
		chats[i], _ = topic.Parse(topic.ChatName("1", fmt.Sprint(100+i)))
	}
	round := func(checks bool) float64 {
		var sent atomic.Int64
		deadline := time.Now().Add(roundTime)
		start := time.Now()
		var wg sync.WaitGroup
		for i := range senders {
			wg.Go(func() {
				t := chats[i]
				for time.Now().Before(deadline) {
					if checks {
						if r, err := h.blockReason(t, "1"); r != "" || err != nil {
							b.Error(r, err)
							return
						}
					}
					msg, err := h.save("1", t, "hello there, how are you doing today?", "")
					if err != nil {
						b.Error(err)
						return
					}
					h.deliver(t, "1", msg, nil)
					sent.Add(1)
				}
			})
		}
		wg.Wait()
		return float64(sent.Load()) / time.Since(start).Seconds()
	}
	for b.Loop() {
		round(true) // warm up the pool, the cache and the table
		var on, off float64
		var ratios []float64
		for blk := range blocks {
			// One block: on, off, off, on.
			var bon, boff float64
			for r, checks := range [...]bool{true, false, false, true} {
				rate := round(checks)
				b.Logf("block %d round %d checks=%v: %.0f msgs/s", blk, r, checks, rate)
				if checks {
					bon += rate
				} else {
					boff += rate
				}
			}
			on, off = on+bon, off+boff
			ratios = append(ratios, 100*bon/boff)
		}
		slices.Sort(ratios)
		b.ReportMetric(on/(2*blocks), "msgs/s_checks_on")
		b.ReportMetric(off/(2*blocks), "msgs/s_checks_off")
		b.ReportMetric(100*on/off, "on/off_%")
		b.ReportMetric(ratios[len(ratios)/2], "median_block_on/off_%")
	}
}
