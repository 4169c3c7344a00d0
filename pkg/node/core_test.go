package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/node"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/memstore"
)

// stallStore is an in-memory store whose reads and writes hang, while
// stalled, until released or their context ends: a database hiccup.
type stallStore struct {
	*memstore.Store
	mu      sync.Mutex
	stalled chan struct{} // guarded by mu; nil: not stalled, closed: release
}

func (s *stallStore) stall() {
	s.mu.Lock()
	s.stalled = make(chan struct{})
	s.mu.Unlock()
}

func (s *stallStore) release() {
	s.mu.Lock()
	if s.stalled != nil {
		close(s.stalled)
		s.stalled = nil
	}
	s.mu.Unlock()
}

func (s *stallStore) wait(ctx context.Context) error {
	s.mu.Lock()
	ch := s.stalled
	s.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", store.ErrUnavailable, ctx.Err())
	}
}

func (s *stallStore) Save(ctx context.Context, m store.NewMessage) (store.Message, bool, error) {
	if err := s.wait(ctx); err != nil {
		return store.Message{}, false, err
	}
	return s.Store.Save(ctx, m)
}

func (s *stallStore) Since(ctx context.Context, room string, after int64, limit int) ([]store.Message, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Store.Since(ctx, room, after, limit)
}

func (s *stallStore) History(ctx context.Context, room string, before int64, limit int) ([]store.Message, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Store.History(ctx, room, before, limit)
}

// NothingUnread sends every lobby join to Unread, which stalls.
func (s *stallStore) NothingUnread(string) bool { return false }

func (s *stallStore) Unread(ctx context.Context, user string) ([]store.UnreadChat, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.Store.Unread(ctx, user)
}

func (s *stallStore) MarkRead(ctx context.Context, room, reader string, lastID int64) (int64, error) {
	if err := s.wait(ctx); err != nil {
		return 0, err
	}
	return s.Store.MarkRead(ctx, room, reader, lastID)
}

// TestHeartbeatWhileStoreHangs: with every store call hanging and more
// requests waiting on it than the node has event-loop workers, an idle
// socket's heartbeat is still answered at once. When handlers waited on
// the store on the event loop, the heartbeat waited for the store timeout.
func TestHeartbeatWhileStoreHangs(t *testing.T) {
	st := &stallStore{Store: memstore.New()}
	cfg := embedded(t)
	cfg.Store = st
	cfg.Engine.Workers = 4
	cfg.RequestWorkers = 4
	cfg.StoreTimeout = 10 * time.Second
	n := start(t, cfg)
	t.Cleanup(st.release) // before Shutdown, which waits for the requests

	idle := dial(t, n, "idle")
	if r, err := idle.Join("user:idle", nil, 5*time.Second); err != nil || r.Status != "ok" {
		t.Fatalf("lobby join: %v %+v", err, r)
	}
	st.stall()
	for i := range 12 {
		c := dial(t, n, fmt.Sprint("busy", i))
		for _, room := range []string{fmt.Sprintf("chat:busy%d:x", i), fmt.Sprintf("user:busy%d", i)} {
			if _, err := c.Push(room, "phx_join", map[string]any{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(200 * time.Millisecond) // let the joins reach the stalled store

	var took []time.Duration
	for range 5 {
		t0 := time.Now()
		if err := idle.Heartbeat(5 * time.Second); err != nil {
			t.Fatalf("heartbeat while the store hangs: %v", err)
		}
		took = append(took, time.Since(t0))
	}
	slices.Sort(took)
	t.Logf("heartbeat round trips while the store hangs: %v", took)
	if took[len(took)/2] > 50*time.Millisecond || took[len(took)-1] > time.Second {
		t.Fatalf("heartbeats waited on the store: %v", took)
	}
}

// TestCatchUpInPages: a rejoin that must catch up 1,000 messages of 1,500
// bytes (more than the 1 MiB outbound queue) gets them in pages cut below
// the queue bound and marked has_more, instead of being dropped as a slow
// consumer on every rejoin.
func TestCatchUpInPages(t *testing.T) {
	st := memstore.New()
	const room, total = "chat:1:2", 1000
	body := strings.Repeat("x", 1500)
	for i := range total {
		if _, _, err := st.Save(context.Background(), store.NewMessage{Room: room, UserID: "2", OpponentID: "1",
			Body: body, ClientID: fmt.Sprint("c", i)}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := embedded(t)
	cfg.Store = st
	n := start(t, cfg)
	c := dial(t, n, "1")

	type page struct {
		Messages []store.Message `json:"messages"`
		HasMore  bool            `json:"has_more"`
	}
	read := func(r phxtest.Reply) page {
		t.Helper()
		if r.Status != "ok" {
			t.Fatalf("reply: %+v", r)
		}
		var p page
		if err := json.Unmarshal(r.Response, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	r, err := c.Join(room, map[string]any{"last_id": 0}, 10*time.Second)
	if err != nil {
		t.Fatalf("catch-up join: %v", err)
	}
	p := read(r)
	if !p.HasMore || len(p.Messages) == 0 || len(p.Messages) >= total {
		t.Fatalf("first page: %d messages, has_more %v", len(p.Messages), p.HasMore)
	}
	seen := map[int64]bool{}
	var last int64
	for pages := 1; ; pages++ {
		for _, m := range p.Messages {
			if m.ID <= last {
				t.Fatalf("page %d out of order: %d after %d", pages, m.ID, last)
			}
			seen[m.ID], last = true, m.ID
		}
		if !p.HasMore {
			t.Logf("%d messages in %d pages", len(seen), pages)
			break
		}
		if pages > total {
			t.Fatal("paging never ends")
		}
		r, err := c.Call(room, "history", map[string]any{"after": last}, 10*time.Second)
		if err != nil {
			t.Fatalf("page %d: %v", pages+1, err)
		}
		p = read(r)
	}
	if len(seen) != total {
		t.Fatalf("caught up %d of %d messages", len(seen), total)
	}
}

// TestLongRefsRefused: a join_ref or ref longer than 64 bytes (kept per
// channel and echoed in every reply) closes the socket with 1008 instead of
// being stored.
func TestLongRefsRefused(t *testing.T) {
	n := start(t, embedded(t))
	for _, frame := range []string{
		fmt.Sprintf(`[%q,"1","user:1","phx_join",{}]`, strings.Repeat("j", 60<<10)),
		fmt.Sprintf(`["1",%q,"user:1","phx_join",{}]`, strings.Repeat("r", 65)),
	} {
		c := dial(t, n, "1")
		if err := c.WriteText([]byte(frame)); err != nil {
			t.Fatal(err)
		}
		ce, err := c.ExpectClose(5 * time.Second)
		if err != nil {
			t.Fatalf("long ref: %v", err)
		}
		if ce.Code != closecode.Policy || !strings.Contains(ce.Reason, "64 bytes") {
			t.Fatalf("long ref closed with %d %q", ce.Code, ce.Reason)
		}
	}
	// 64 bytes are fine.
	c := dial(t, n, "1")
	if err := c.WriteText(fmt.Appendf(nil, `[%q,%q,"user:1","phx_join",{}]`, strings.Repeat("j", 64), "7")); err != nil {
		t.Fatal(err)
	}
	if r, err := c.WaitReply("7", 5*time.Second); err != nil || r.Status != "ok" {
		t.Fatalf("64-byte join_ref: %v %+v", err, r)
	}
}

// BenchmarkHeartbeatWhileStoreStalls: heartbeat round trips of an idle
// socket while every store call stalls and more requests wait on it than
// the node has event-loop workers. Reports p50 and p99.
//
//	go test -run '^$' -bench HeartbeatWhileStoreStalls -benchtime 200x ./pkg/node
func BenchmarkHeartbeatWhileStoreStalls(b *testing.B) {
	st := &stallStore{Store: memstore.New()}
	cfg := node.DefaultConfig()
	cfg.Secret, cfg.Logger, cfg.DrainTimeout = secret, quiet, 0
	cfg.DataDir = b.TempDir()
	cfg.Store = st
	cfg.Engine.Workers = 4
	cfg.RequestWorkers = 4
	cfg.StoreTimeout = 30 * time.Second
	n, err := node.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	n.Start(ln)
	defer n.Shutdown(context.Background()) //nolint:errcheck
	defer st.release()
	mint := func(user string) *phxtest.Client {
		tok, err := auth.Mint([]byte(secret), user, user, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		c, err := phxtest.Dial(n.Addr(), phxtest.DialOptions{Token: tok})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	idle := mint("idle")
	if r, err := idle.Join("user:idle", nil, 5*time.Second); err != nil || r.Status != "ok" {
		b.Fatalf("lobby join: %v %+v", err, r)
	}
	st.stall()
	for i := range 16 {
		c := mint(fmt.Sprint("busy", i))
		if _, err := c.Push(fmt.Sprintf("user:busy%d", i), "phx_join", map[string]any{}); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	var took []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := idle.Heartbeat(10 * time.Second); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(t0))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
}
