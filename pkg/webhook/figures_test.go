package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/postgres"
	"github.com/elchat/elchat/pkg/store/sqlite"
	"github.com/elchat/elchat/pkg/webhook"
)

// TestFigures measures what the README's webhook figures quote. It runs
// only with ELCHAT_WEBHOOK_FIGURES=1:
//
//	ELCHAT_WEBHOOK_FIGURES=1 go test -run TestFigures -v -count=1 ./pkg/webhook
func TestFigures(t *testing.T) {
	if os.Getenv("ELCHAT_WEBHOOK_FIGURES") == "" {
		t.Skip("set ELCHAT_WEBHOOK_FIGURES=1 to measure")
	}
	pg := func(t *testing.T) storetestStore {
		s, err := postgres.Open(context.Background(), testenv.Postgres(t), postgres.Options{Migrate: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	lite := func(t *testing.T) storetestStore {
		s, err := sqlite.Open(context.Background(), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	for _, c := range []struct {
		name string
		open func(t *testing.T) storetestStore
	}{{"postgres", pg}, {"sqlite", lite}} {
		t.Run("throughput/"+c.name, func(t *testing.T) { figureThroughput(t, c.open(t)) })
		t.Run("delay/"+c.name, func(t *testing.T) { figureDelay(t, c.open(t)) })
	}
	t.Run("saves/postgres", func(t *testing.T) { figureSaves(t, pg(t)) })
	t.Run("batch/postgres", func(t *testing.T) { figureBatch(t, pg(t)) })
}

type storetestStore interface {
	store.Store
	store.Outbox
	SaveBatch(ctx context.Context, batch []store.NewMessage) ([]store.SaveResult, error)
}

// counting is a local receiver that answers 200 and notes how late each
// event arrived after it fell due.
type counting struct {
	n      atomic.Int64
	mu     sync.Mutex
	delays []time.Duration
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b webhook.Body
	json.NewDecoder(r.Body).Decode(&b) //nolint:errcheck
	c.mu.Lock()
	c.delays = append(c.delays, time.Since(b.DueAt))
	c.mu.Unlock()
	c.n.Add(1)
}

func runSender(t *testing.T, ob store.Outbox, url string) *webhook.Sender {
	s, err := webhook.New(webhook.Config{URL: url, Secret: hookSecret, Outbox: ob,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// figureThroughput: events one sender delivers per second to a local
// receiver, from a backlog of events that are all due.
func figureThroughput(t *testing.T, s storetestStore) {
	const events = 3000
	batch := make([]store.NewMessage, 0, 500)
	for i := range events {
		batch = append(batch, store.NewMessage{Room: fmt.Sprintf("chat:a:u%d", i), UserID: "a", OpponentID: fmt.Sprintf("u%d", i),
			Body: "hello", NotifyAfter: time.Millisecond})
		if len(batch) == cap(batch) {
			if _, err := s.SaveBatch(context.Background(), batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	time.Sleep(10 * time.Millisecond)
	rcv := &counting{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	start := time.Now()
	runSender(t, s, srv.URL)
	for rcv.n.Load() < events && time.Since(start) < 2*time.Minute {
		time.Sleep(10 * time.Millisecond)
	}
	d := time.Since(start)
	t.Logf("FIGURE %s: %d events delivered in %v: %.0f events/s", t.Name(), rcv.n.Load(), d.Round(time.Millisecond), float64(rcv.n.Load())/d.Seconds())
}

// figureDelay: how long after its deadline an event is POSTed, at a
// trickle of 50 events/s.
func figureDelay(t *testing.T, s storetestStore) {
	rcv := &counting{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	runSender(t, s, srv.URL)
	const events = 300
	for i := range events {
		if _, _, err := s.Save(context.Background(), store.NewMessage{Room: fmt.Sprintf("chat:b:v%d", i), UserID: "b",
			OpponentID: fmt.Sprintf("v%d", i), Body: "hello", NotifyAfter: 300 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for start := time.Now(); rcv.n.Load() < events && time.Since(start) < time.Minute; {
		time.Sleep(10 * time.Millisecond)
	}
	rcv.mu.Lock()
	d := slices.Clone(rcv.delays)
	rcv.mu.Unlock()
	slices.Sort(d)
	if len(d) == 0 {
		t.Fatal("nothing delivered")
	}
	t.Logf("FIGURE %s: deadline→POST over %d events: p50 %v, p99 %v, max %v", t.Name(), len(d),
		d[len(d)/2].Round(time.Millisecond), d[len(d)*99/100].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
}

// figureSaves: stored messages per second through Save (group commit, 64
// concurrent callers, 1000 recipients), with every message asking for an
// event (webhooks on) and with none (off), alternated in one run: the
// machine is shared, so only the medians of alternated rounds compare.
func figureSaves(t *testing.T, s storetestStore) {
	const (
		callers = 64
		round   = 3 * time.Second
	)
	run := func(after time.Duration, tag string) float64 {
		var n atomic.Int64
		ctx, cancel := context.WithTimeout(context.Background(), round)
		defer cancel()
		var wg sync.WaitGroup
		for c := range callers {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					to := fmt.Sprintf("r%d", (c*7919+i)%1000)
					_, _, err := s.Save(ctx, store.NewMessage{Room: "chat:" + to + ":s" + tag, UserID: "s" + tag, OpponentID: to,
						Body: "a message of a typical length, some forty bytes", NotifyAfter: after})
					if err == nil {
						n.Add(1)
					}
				}
			})
		}
		wg.Wait()
		return float64(n.Load()) / round.Seconds()
	}
	var off, on []float64
	for r := range 5 {
		off = append(off, run(0, fmt.Sprint("off", r)))
		on = append(on, run(time.Hour, fmt.Sprint("on", r)))
	}
	t.Logf("FIGURE %s: stored messages/s, median of 5 alternated rounds: webhooks off %.0f, on %.0f (rounds off %.0f, on %.0f)",
		t.Name(), median(off), median(on), off, on)
}

func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// figureBatch: the time to commit one batch of 64 messages to 64 distinct
// recipients, every one away (webhooks on: each asks for an event, and
// most find one pending) or none asking (off). The two alternate batch by
// batch, so load drifting on a shared machine hits both alike.
func figureBatch(t *testing.T, s storetestStore) {
	const (
		size   = 64
		rounds = 300
	)
	batch := func(i int, after time.Duration) []store.NewMessage {
		b := make([]store.NewMessage, size)
		for j := range b {
			to := fmt.Sprintf("r%d", (i*size+j)%1000)
			b[j] = store.NewMessage{Room: "chat:" + to + ":s", UserID: "s", OpponentID: to,
				Body: "a message of a typical length, some forty bytes", NotifyAfter: after}
		}
		return b
	}
	for i := range 1000 / size {
		if _, err := s.SaveBatch(context.Background(), batch(i, time.Hour)); err != nil { // pending rows exist
			t.Fatal(err)
		}
	}
	var off, on []time.Duration
	for i := range rounds {
		for k := range 2 {
			after := time.Duration(0)
			if (i+k)%2 == 1 {
				after = time.Hour
			}
			start := time.Now()
			if _, err := s.SaveBatch(context.Background(), batch(i, after)); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); after > 0 {
				on = append(on, d)
			} else {
				off = append(off, d)
			}
		}
	}
	slices.Sort(off)
	slices.Sort(on)
	t.Logf("FIGURE %s: commit of %d messages, %d alternated batches each: webhooks off p50 %v (%.0f msgs/s), on p50 %v (%.0f msgs/s)",
		t.Name(), size, rounds, off[rounds/2].Round(10*time.Microsecond), size/off[rounds/2].Seconds(),
		on[rounds/2].Round(10*time.Microsecond), size/on[rounds/2].Seconds())
}
