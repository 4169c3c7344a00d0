package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/node"
	"github.com/elchat/elchat/pkg/webhook"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const (
	hookSecret  = "whsec-test-0123456789abcdef"
	apiKey      = "api-key-for-webhook-tests"
	notifyAfter = 400 * time.Millisecond
)

func TestSignVerify(t *testing.T) {
	body := []byte(`{"id":"evt_1"}`)
	now := time.Unix(1_800_000_000, 0)
	h := webhook.Sign([]byte("k"), now.Unix(), body)
	if !strings.HasPrefix(h, "t=1800000000,v1=") || len(h) != len("t=1800000000,v1=")+64 {
		t.Fatalf("Sign = %q", h)
	}
	if err := webhook.Verify([]byte("k"), h, body, time.Minute, now.Add(30*time.Second)); err != nil {
		t.Errorf("Verify of a good signature: %v", err)
	}
	for _, tc := range []struct {
		name   string
		secret string
		header string
		body   string
		now    time.Time
		want   error
	}{
		{"other secret", "k2", h, string(body), now, webhook.ErrBadSignature},
		{"other body", "k", h, `{"id":"evt_2"}`, now, webhook.ErrBadSignature},
		{"too old", "k", h, string(body), now.Add(2 * time.Minute), webhook.ErrOldSignature},
		{"garbage", "k", "v1=abc", string(body), now, webhook.ErrNoSignature},
		{"rotation", "k", "t=1800000000,v1=00," + h[len("t=1800000000,"):], string(body), now, nil},
	} {
		if err := webhook.Verify([]byte(tc.secret), tc.header, []byte(tc.body), time.Minute, tc.now); !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 30: time.Minute} {
		for range 20 {
			d := webhook.Backoff(time.Second, time.Minute, n)
			if d < want*8/10 || d > want*12/10 {
				t.Fatalf("Backoff(attempt %d) = %v, want %v ±20%%", n, d, want)
			}
		}
	}
}

// hit is one POST the receiver got.
type hit struct {
	id, attempt string
	body        webhook.Body
	sigErr      error
	at          time.Time
	contentType string
}

// receiver is a real HTTP receiver on its own listener, which a test can
// take down (connections refused) and bring back on the same address.
type receiver struct {
	t    *testing.T
	addr string

	mu     sync.Mutex
	hits   []hit
	status func(n int) int // answer to the nth POST (0-based); nil: 200
	delay  time.Duration
	ln     net.Listener
	srv    *http.Server
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.up()
	t.Cleanup(r.down)
	return r
}

func (r *receiver) url() string { return "http://" + r.addr + "/hooks/elchat" }

func (r *receiver) up() {
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 50 { // the old socket may linger a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.addr, r.ln = ln.Addr().String(), ln
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 5 * time.Second}
	srv := r.srv
	r.mu.Unlock()
	go srv.Serve(ln) //nolint:errcheck
}

func (r *receiver) down() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	raw, _ := io.ReadAll(req.Body)
	h := hit{id: req.Header.Get(webhook.HeaderEventID), attempt: req.Header.Get(webhook.HeaderAttempt), at: time.Now(),
		contentType: req.Header.Get("Content-Type"),
		sigErr:      webhook.Verify([]byte(hookSecret), req.Header.Get(webhook.HeaderSignature), raw, webhook.DefaultTolerance, time.Now())}
	if err := json.Unmarshal(raw, &h.body); err != nil {
		h.sigErr = fmt.Errorf("body %q: %w", raw, err)
	}
	r.mu.Lock()
	n := len(r.hits)
	r.hits = append(r.hits, h)
	status, delay := r.status, r.delay
	r.mu.Unlock()
	time.Sleep(delay)
	code := 200
	if status != nil {
		code = status(n)
	}
	w.WriteHeader(code)
}

func (r *receiver) got() []hit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hit(nil), r.hits...)
}

// waitHits waits until the receiver got at least n POSTs.
func (r *receiver) waitHits(n int, d time.Duration) []hit {
	r.t.Helper()
	phxtest.WaitFor(d, func() bool { return len(r.got()) >= n })
	hits := r.got()
	if len(hits) < n {
		r.t.Fatalf("receiver got %d POSTs within %v, want %d: %+v", len(hits), d, n, hits)
	}
	return hits
}

// checkHit checks the contract every POST must keep.
func checkHit(t *testing.T, h hit) {
	t.Helper()
	if h.sigErr != nil {
		t.Errorf("POST %s: signature: %v", h.id, h.sigErr)
	}
	if h.contentType != "application/json" {
		t.Errorf("POST %s: Content-Type %q", h.id, h.contentType)
	}
	if h.id == "" || h.id != h.body.ID || !strings.HasPrefix(h.id, "evt_") {
		t.Errorf("POST: header id %q, body id %q", h.id, h.body.ID)
	}
	if h.body.Type != "message.unread" {
		t.Errorf("POST %s: type %q", h.id, h.body.Type)
	}
}

type nodeOpts struct {
	db          string // PostgreSQL URL; empty: SQLite in dataDir
	dataDir     string
	maxAttempts int
	url         string
}

func startNode(t *testing.T, o nodeOpts) *node.Node {
	t.Helper()
	cfg := nodeConfig(t, o)
	nd, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nd.Start(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		nd.Shutdown(ctx) //nolint:errcheck
	})
	return nd
}

func nodeConfig(t *testing.T, o nodeOpts) node.Config {
	cfg := node.DefaultConfig()
	cfg.Secret = string(phxtest.Secret)
	cfg.DatabaseURL, cfg.Migrate = o.db, o.db != ""
	cfg.DataDir = o.dataDir
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.APIKey = apiKey
	cfg.WebhookURL, cfg.WebhookSecret = o.url, hookSecret
	cfg.NotifyAfter = notifyAfter
	cfg.WebhookTimeout = time.Second
	cfg.WebhookRetryBase = 100 * time.Millisecond
	if o.maxAttempts > 0 {
		cfg.WebhookMaxAttempts = o.maxAttempts
	}
	cfg.DrainTimeout = 0
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// stores runs fn on SQLite and on PostgreSQL.
func stores(t *testing.T, fn func(t *testing.T, db string)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, "") })
	t.Run("postgres", func(t *testing.T) { fn(t, testenv.Postgres(t)) })
}

// chat connects user to the chat with other and returns the client.
func chat(t *testing.T, nd *node.Node, user, other string) (*phxtest.Client, string) {
	t.Helper()
	c := phxtest.Connect(t, nd.Addr(), user)
	room := "chat:" + min(user, other) + ":" + max(user, other)
	if r, err := c.Join(room, nil, 5*time.Second); err != nil || r.Status != "ok" {
		t.Fatalf("join %s: %v %+v", room, err, r)
	}
	return c, room
}

func send(t *testing.T, c *phxtest.Client, room, body string) int64 {
	t.Helper()
	r, err := c.Call(room, "new_message", map[string]string{"body": body, "client_id": body}, 5*time.Second)
	if err != nil || r.Status != "ok" {
		t.Fatalf("send %q: %v %+v", body, err, r)
	}
	var m struct{ ID int64 }
	json.Unmarshal(r.Response, &m) //nolint:errcheck
	return m.ID
}

// The seed's story: Bob is offline, Alice writes three messages; once
// --notify-after has passed Bob's app gets one signed event with the
// three, and nothing more.
func TestStoryOneEventForThreeMessages(t *testing.T) {
	stores(t, func(t *testing.T, db string) {
		rcv := newReceiver(t)
		nd := startNode(t, nodeOpts{db: db, url: rcv.url()})
		alice, room := chat(t, nd, "1", "2")
		start := time.Now()
		var ids []int64
		for _, b := range []string{"hi Bob", "are you there?", "call me"} {
			ids = append(ids, send(t, alice, room, b))
		}
		hits := rcv.waitHits(1, notifyAfter+5*time.Second)
		time.Sleep(notifyAfter + 500*time.Millisecond) // nothing else may follow
		hits = rcv.got()
		if len(hits) != 1 {
			t.Fatalf("receiver got %d POSTs, want 1: %+v", len(hits), hits)
		}
		h := hits[0]
		checkHit(t, h)
		if h.at.Sub(start) < notifyAfter {
			t.Errorf("POST %v after the first message, before --notify-after %v", h.at.Sub(start), notifyAfter)
		}
		if h.body.UserID != "2" || len(h.body.Messages) != 3 || h.attempt != "1" {
			t.Fatalf("event = %+v (attempt %s), want 3 messages to user 2", h.body, h.attempt)
		}
		for i, m := range h.body.Messages {
			if m.ID != ids[i] || m.Room != room || m.UserID != "1" || m.OpponentID != "2" || m.Delivered {
				t.Errorf("message %d = %+v", i, m)
			}
		}
		if st := nd.Webhooks().Stats(); st.Sent != 1 || st.Failed != 0 {
			t.Errorf("stats = %+v", st)
		}
		if v, err := phxtest.MetricValue(nd.Addr(), "elchat_webhook_sent_total"); err != nil || v != 1 {
			t.Errorf("elchat_webhook_sent_total = %v, %v", v, err)
		}
	})
}

// A read before the deadline cancels the event; a recipient in the chat
// gets none at all.
func TestReadBeforeDeadlineSendsNothing(t *testing.T) {
	stores(t, func(t *testing.T, db string) {
		rcv := newReceiver(t)
		nd := startNode(t, nodeOpts{db: db, url: rcv.url()})
		alice, room := chat(t, nd, "1", "2")
		send(t, alice, room, "one")
		last := send(t, alice, room, "two")
		bob, _ := chat(t, nd, "2", "1")
		if r, err := bob.Call(room, "read", map[string]int64{"last_id": last}, 5*time.Second); err != nil || r.Status != "ok" {
			t.Fatalf("read: %v %+v", err, r)
		}
		send(t, alice, room, "while bob is here") // present: asks for nothing
		time.Sleep(notifyAfter + 1500*time.Millisecond)
		if hits := rcv.got(); len(hits) != 0 {
			t.Fatalf("receiver got %+v, want nothing", hits)
		}
		if st := nd.Webhooks().Stats(); st.Cancelled != 1 {
			t.Errorf("stats = %+v, want one cancelled event", st)
		}
	})
}

// A receiver that is down for a while gets the event once it is back,
// once per event id.
func TestReceiverDownThenUp(t *testing.T) {
	stores(t, func(t *testing.T, db string) {
		rcv := newReceiver(t)
		nd := startNode(t, nodeOpts{db: db, url: rcv.url()})
		rcv.down()
		alice, room := chat(t, nd, "1", "2")
		send(t, alice, room, "are you up?")
		if !phxtest.WaitFor(10*time.Second, func() bool { return nd.Webhooks().Stats().Failed >= 2 }) {
			t.Fatalf("no failed attempts while the receiver was down: %+v", nd.Webhooks().Stats())
		}
		rcv.up()
		hits := rcv.waitHits(1, 10*time.Second)
		time.Sleep(time.Second)
		hits = rcv.got()
		if len(hits) != 1 {
			t.Fatalf("receiver got %d POSTs after coming back, want 1: %+v", len(hits), hits)
		}
		checkHit(t, hits[0])
		if n, _ := strconv.Atoi(hits[0].attempt); n < 3 {
			t.Errorf("delivered on attempt %s, want a retry (>= 3)", hits[0].attempt)
		}
		if v, _ := phxtest.MetricValue(nd.Addr(), "elchat_webhook_failed_total"); v < 2 {
			t.Errorf("elchat_webhook_failed_total = %v", v)
		}
	})
}

// A receiver answering 500 forever gets MaxAttempts tries, then the event
// is dead and listed by the API; a 4xx is dead at once.
func TestDeadLetters(t *testing.T) {
	stores(t, func(t *testing.T, db string) {
		rcv := newReceiver(t)
		rcv.status = func(int) int { return 500 }
		nd := startNode(t, nodeOpts{db: db, url: rcv.url(), maxAttempts: 3})
		alice, room := chat(t, nd, "1", "2")
		send(t, alice, room, "nobody home")
		if !phxtest.WaitFor(10*time.Second, func() bool { return nd.Webhooks().Stats().Dead == 1 }) {
			t.Fatalf("not dead: %+v, receiver got %d", nd.Webhooks().Stats(), len(rcv.got()))
		}
		hits := rcv.got()
		if len(hits) != 3 {
			t.Fatalf("receiver got %d POSTs, want 3 attempts", len(hits))
		}
		for i, h := range hits {
			checkHit(t, h)
			if h.id != hits[0].id || h.attempt != strconv.Itoa(i+1) {
				t.Errorf("attempt %d: id %s attempt %s", i+1, h.id, h.attempt)
			}
		}
		dead := deadEvents(t, nd)
		if len(dead) != 1 || dead[0]["id"] != hits[0].id || dead[0]["state"] != "dead" ||
			dead[0]["attempts"] != float64(3) || !strings.Contains(dead[0]["last_error"].(string), "HTTP 500") {
			t.Fatalf("dead events = %+v", dead)
		}
		if v, _ := phxtest.MetricValue(nd.Addr(), "elchat_webhook_dead_total"); v != 1 {
			t.Errorf("elchat_webhook_dead_total = %v", v)
		}

		// 410: the receiver refuses; no retries.
		rcv.mu.Lock()
		rcv.status = func(int) int { return 410 }
		rcv.mu.Unlock()
		send(t, alice, room, "refused")
		if !phxtest.WaitFor(10*time.Second, func() bool { return nd.Webhooks().Stats().Dead == 2 }) {
			t.Fatalf("4xx not dead: %+v", nd.Webhooks().Stats())
		}
		if n := len(rcv.got()); n != 4 {
			t.Errorf("receiver got %d POSTs, want one more for the 410", n)
		}

		// The receiver is fixed; the operator requeues the first event.
		rcv.mu.Lock()
		rcv.status = nil
		rcv.mu.Unlock()
		if code := apiPost(t, nd, "/api/v1/webhooks/dead/"+hits[0].id+"/retry"); code != http.StatusAccepted {
			t.Fatalf("retry: HTTP %d", code)
		}
		if code := apiPost(t, nd, "/api/v1/webhooks/dead/"+hits[0].id+"/retry"); code != http.StatusNotFound {
			t.Errorf("second retry: HTTP %d, want 404", code)
		}
		got := rcv.waitHits(5, 10*time.Second)
		if h := got[4]; h.id != hits[0].id || h.attempt != "1" || len(h.body.Messages) != 1 {
			t.Errorf("requeued POST %+v", h)
		}
		if !phxtest.WaitFor(5*time.Second, func() bool { return nd.Webhooks().Stats().Sent == 1 }) {
			t.Errorf("requeued event not sent: %+v", nd.Webhooks().Stats())
		}
		if dead := deadEvents(t, nd); len(dead) != 1 {
			t.Errorf("dead events after the retry = %+v, want the 410 one only", dead)
		}
	})
}

func deadEvents(t *testing.T, nd *node.Node) []map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+nd.Addr()+"/api/v1/webhooks/dead", nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Events []map[string]any }
	if resp.StatusCode != 200 {
		t.Fatalf("GET /api/v1/webhooks/dead: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Events
}

func apiPost(t *testing.T, nd *node.Node, path string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+nd.Addr()+path, nil)
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Bad configuration stops the node at start-up with a reason.
func TestBadConfiguration(t *testing.T) {
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return "http://" + ln.Addr().String() + "/hooks"
	}()
	rcv := newReceiver(t)
	for _, tc := range []struct {
		name string
		edit func(c *node.Config)
		want string
	}{
		{"missing secret", func(c *node.Config) { c.WebhookSecret = "" }, "needs --webhook-secret"},
		{"short secret", func(c *node.Config) { c.WebhookSecret = "short" }, "at least 16 bytes"},
		{"secret without url", func(c *node.Config) { c.WebhookURL = "" }, "--webhook-url is not"},
		{"not http", func(c *node.Config) { c.WebhookURL = "ftp://example.com/x" }, "http:// or https://"},
		{"unreachable", func(c *node.Config) { c.WebhookURL = closed }, "unreachable"},
		{"negative notify-after", func(c *node.Config) { c.NotifyAfter = -time.Second }, "--notify-after must not be negative"},
	} {
		cfg := nodeConfig(t, nodeOpts{url: rcv.url()})
		tc.edit(&cfg)
		nd, err := node.New(context.Background(), cfg)
		if err == nil {
			nd.Shutdown(context.Background()) //nolint:errcheck
			t.Errorf("%s: node started", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q, want it to say %q", tc.name, err, tc.want)
		}
	}
}

// Two nodes on one PostgreSQL share the sending and never both send one
// event.
func TestTwoNodesSendEachEventOnce(t *testing.T) {
	db := testenv.Postgres(t)
	rcv := newReceiver(t)
	rcv.delay = 50 * time.Millisecond
	a := startNode(t, nodeOpts{db: db, url: rcv.url()})
	b := startNode(t, nodeOpts{db: db, url: rcv.url()})
	const users = 60
	for i := range users {
		nd := a
		if i%2 == 1 {
			nd = b
		}
		body := fmt.Sprintf(`{"from":"alice","to":"u%d","body":"hello %d","client_id":"c%d"}`, i, i, i)
		req, _ := http.NewRequest("POST", "http://"+nd.Addr()+"/api/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+apiKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("post message: %v %v", err, resp)
		}
		resp.Body.Close()
	}
	rcv.waitHits(users, 30*time.Second)
	time.Sleep(time.Second)
	seen := map[string]int{}
	for _, h := range rcv.got() {
		checkHit(t, h)
		seen[h.id]++
	}
	if len(seen) != users {
		t.Errorf("%d distinct events, want %d", len(seen), users)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s sent %d times", id, n)
		}
	}
	sa, sb := a.Webhooks().Stats().Sent, b.Webhooks().Stats().Sent
	t.Logf("node a sent %d, node b sent %d", sa, sb)
	if sa+sb != users || sa == 0 || sb == 0 {
		t.Errorf("sent %d + %d, want %d spread over both nodes", sa, sb, users)
	}
}
