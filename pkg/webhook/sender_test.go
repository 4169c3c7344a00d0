package webhook_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/pkg/node"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/memstore"
	"github.com/elchat/elchat/pkg/store/sqlite"
	"github.com/elchat/elchat/pkg/webhook"
)

// answers runs a sender on a memory store against a receiver answering
// with handler, saves one message asking for an event, and returns the
// sender and the store.
func answers(t *testing.T, maxAttempts int, handler http.HandlerFunc) (*webhook.Sender, *memstore.Store) {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	s, err := webhook.New(webhook.Config{URL: srv.URL, Secret: hookSecret, Outbox: st, MaxAttempts: maxAttempts,
		RetryBase: 50 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if _, _, err := st.Save(context.Background(), store.NewMessage{Room: "chat:1:2", UserID: "1", OpponentID: "2",
		Body: "x", NotifyAfter: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	return s, st
}

// A 429 with Retry-After waits as long as the receiver asked.
func TestRetryAfter(t *testing.T) {
	var (
		mu  sync.Mutex
		ats []time.Time
	)
	s, _ := answers(t, 5, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ats = append(ats, time.Now())
		n := len(ats)
		mu.Unlock()
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	if !phxtest.WaitFor(5*time.Second, func() bool { return s.Stats().Sent == 1 }) {
		t.Fatalf("not sent: %+v", s.Stats())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ats) != 2 || ats[1].Sub(ats[0]) < 900*time.Millisecond {
		t.Fatalf("attempts at %v, want the second about 1s after the first", ats)
	}
}

// A redirect is not followed: the receiver's configuration is wrong, and
// the event is dead at once.
func TestRedirectIsDead(t *testing.T) {
	var hits int
	var mu sync.Mutex
	s, st := answers(t, 5, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	if !phxtest.WaitFor(5*time.Second, func() bool { return s.Stats().Dead == 1 }) {
		t.Fatalf("not dead: %+v", s.Stats())
	}
	dead, _ := st.DeadEvents(context.Background(), 10)
	if len(dead) != 1 || !strings.Contains(dead[0].LastError, "HTTP 302") {
		t.Fatalf("dead = %+v", dead)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 1 {
		t.Errorf("receiver got %d requests, want 1 (no redirect followed)", hits)
	}
}

// A slow receiver times out and is retried; its late answer changes
// nothing.
func TestTimeoutRetries(t *testing.T) {
	var (
		mu sync.Mutex
		n  int
	)
	st := memstore.New()
	defer st.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			time.Sleep(600 * time.Millisecond)
		}
	}))
	defer srv.Close()
	s, err := webhook.New(webhook.Config{URL: srv.URL, Secret: hookSecret, Outbox: st, Timeout: 200 * time.Millisecond,
		RetryBase: 50 * time.Millisecond, Poll: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if _, _, err := st.Save(ctx, store.NewMessage{Room: "chat:1:2", UserID: "1", OpponentID: "2", Body: "x", NotifyAfter: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if !phxtest.WaitFor(5*time.Second, func() bool { return s.Stats().Sent == 1 }) {
		t.Fatalf("not sent: %+v", s.Stats())
	}
	if st := s.Stats(); st.Failed != 1 {
		t.Errorf("stats = %+v, want one timed-out attempt", st)
	}
}

// A graceful shutdown waits for the POST in flight and records it: the
// event does not wait for a lease to expire after the restart.
func TestShutdownRecordsInFlight(t *testing.T) {
	rcv := newReceiver(t)
	rcv.delay = 700 * time.Millisecond
	dir := t.TempDir()
	cfg := nodeConfig(t, nodeOpts{dataDir: dir, url: rcv.url()})
	nd, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nd.Start(ln)
	t.Cleanup(func() { nd.Shutdown(context.Background()) }) //nolint:errcheck // idempotent; the test shuts it down itself
	alice, room := chat(t, nd, "1", "2")
	send(t, alice, room, "bye")
	rcv.waitHits(1, notifyAfter+5*time.Second)
	alice.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nd.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := st.EventCounts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c[store.EventPending]+c[store.EventSending]+c[store.EventDead] != 0 {
		t.Fatalf("outbox after a graceful shutdown = %v, want empty (the in-flight POST recorded as sent)", c)
	}
}
