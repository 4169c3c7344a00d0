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
