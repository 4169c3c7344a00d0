package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/redisbus"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestReadyzFixedReasons: /readyz names the failing dependency with a fixed
// reason and never passes the error's text on; the detail is logged once
// per interval.
func TestReadyzFixedReasons(t *testing.T) {
	const detail = "dial tcp 10.0.0.7:5432: password authentication failed for user elchat"
	var logs syncBuffer
	var storeErr, redisErr error
	var draining bool
	r := &readiness{
		draining: func() bool { return draining },
		store:    func(context.Context) error { return storeErr },
		redis:    func() error { return redisErr },
		log:      slog.New(slog.NewTextHandler(&logs, nil)),
		every:    time.Hour,
	}
	probe := func() (int, string) {
		w := httptest.NewRecorder()
		r.ServeHTTP(w, httptest.NewRequest("GET", "/readyz", nil))
		b, _ := io.ReadAll(w.Result().Body)
		return w.Code, string(b)
	}
	check := func(wantCode int, wantBody string) {
		t.Helper()
		if code, body := probe(); code != wantCode || body != wantBody {
			t.Fatalf("/readyz: %d %q, want %d %q", code, body, wantCode, wantBody)
		}
	}
	check(200, "ready\n")
	storeErr = errors.New(detail)
	for range 3 {
		check(http.StatusServiceUnavailable, "store unavailable\n")
	}
	storeErr, redisErr = nil, errors.New("redisbus: unavailable: "+detail)
	check(http.StatusServiceUnavailable, "redis unavailable\n")
	check(http.StatusServiceUnavailable, "redis unavailable\n")
	draining = true
	check(http.StatusServiceUnavailable, "draining\n")

	out := logs.String()
	if n := strings.Count(out, "not ready: store unavailable"); n != 1 {
		t.Errorf("store failure logged %d times, want once per interval:\n%s", n, out)
	}
	if n := strings.Count(out, "not ready: redis unavailable"); n != 1 {
		t.Errorf("redis failure logged %d times, want once per interval:\n%s", n, out)
	}
	if !strings.Contains(out, "password authentication failed") {
		t.Errorf("the detail is not logged:\n%s", out)
	}
	r.every = 0
	storeErr, redisErr, draining = errors.New(detail), nil, false
	check(http.StatusServiceUnavailable, "store unavailable\n")
	if n := strings.Count(logs.String(), "not ready: store unavailable"); n != 2 {
		t.Errorf("store failure logged %d times after the interval, want 2", n)
	}
}

// TestRelayOutagesBeforeHub: outage events that the bus reports before the
// hub exists wait for it instead of dereferencing a nil hub, and events of
// a node that never got a hub are dropped.
func TestRelayOutagesBeforeHub(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var opts redisbus.Options
	attach, abandon := relayOutages(&opts, quiet)
	done := make(chan struct{})
	go func() {
		opts.OnDown()
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("OnDown returned before the hub existed")
	case <-time.After(50 * time.Millisecond):
	}
	h := hub.New(hub.Config{Logger: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	attach(ctx, h, nil)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("OnDown still waiting after attach")
	}
	// The hub took it: a resync announced by another node now is skipped,
	// this node being in an outage of its own, so its watermark stays.
	h.ResyncRequested(ctx, 42, 0, 0)
	if w := h.Watermark(); w == 42 {
		t.Fatal("the hub never saw BusDown")
	}
	abandon()

	var opts2 redisbus.Options
	_, abandon2 := relayOutages(&opts2, quiet)
	returned := make(chan struct{})
	go func() {
		opts2.OnDown()
		opts2.OnRecover()
		opts2.OnResync(5, "other")
		close(returned)
	}()
	abandon2()
	abandon2() // idempotent
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("callbacks of an abandoned node still waiting")
	}
}
