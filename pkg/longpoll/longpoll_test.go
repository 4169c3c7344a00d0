package longpoll

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store/memstore"
)

var testSecret = []byte("long-poll-test-secret-0123456789")

// fakeAuth authorizes like the server does, minus limits: vsn 2 and a valid
// host-app token.
type fakeAuth struct{ v *auth.Verifier }

func (a fakeAuth) Authorize(r *http.Request, token string) (auth.Claims, func(), string, int) {
	if !strings.HasPrefix(r.URL.Query().Get("vsn"), "2.") {
		return auth.Claims{}, nil, "unsupported vsn", http.StatusForbidden
	}
	c, err := a.v.Verify(token)
	if err != nil {
		return auth.Claims{}, nil, "token " + auth.Reason(err), http.StatusForbidden
	}
	return c, nil, "", 0
}
func (fakeAuth) OriginAllowed(r *http.Request) bool {
	return r.Header.Get("Origin") != "http://evil.example"
}
func (a fakeAuth) Verify(t string) (auth.Claims, error) { return a.v.Verify(t) }

func newHub(t testing.TB) *hub.Hub {
	t.Helper()
	h := hub.New(hub.Config{Store: memstore.New(), PushRate: 1e6, PushBurst: 1e6})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }() //nolint:errcheck
	t.Cleanup(func() { cancel(); <-done; h.Close() })
	return h
}

// testNode is one Manager on an httptest server.
type testNode struct {
	m   *Manager
	srv *httptest.Server
}

func startNode(t testing.TB, h *hub.Hub, id string, cfg Config) *testNode {
	t.Helper()
	cfg.Secret, cfg.NodeID, cfg.Hub = testSecret, id, h
	cfg.Auth = fakeAuth{auth.NewVerifier(testSecret)}
	m := New(cfg)
	srv := httptest.NewServer(m)
	m.SetAdvertise(srv.Listener.Addr().String())
	t.Cleanup(func() { srv.Close(); m.Close() })
	return &testNode{m: m, srv: srv}
}

type answer struct {
	HTTP     int
	Status   int      `json:"status"`
	Token    string   `json:"token"`
	Messages []string `json:"messages"`
	Reason   string   `json:"reason"`
}

func jwt(t testing.TB, user string) string {
	t.Helper()
	tok, err := auth.Mint(testSecret, user, user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// do sends one request as phoenix.js 1.8 does: user params, vsn, then the
// session token.
func do(t testing.TB, n *testNode, method, userTok, session, body string) answer {
	t.Helper()
	q := url.Values{}
	if userTok != "" {
		q.Add("token", userTok)
	}
	q.Add("vsn", "2.0.0")
	if session != "" {
		q.Add("token", session)
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, n.srv.URL+Path+"?"+q.Encode(), rd)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var a answer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("%s: not JSON: %q", method, b)
	}
	a.HTTP = res.StatusCode
	return a
}

func open(t testing.TB, n *testNode, user string) string {
	t.Helper()
	a := do(t, n, "GET", jwt(t, user), "", "")
	if a.Status != 410 || a.HTTP != 200 || !strings.HasPrefix(a.Token, tokenPrefix) {
		t.Fatalf("open: %+v", a)
	}
	return a.Token
}

// received keeps, per session, what polls brought that nobody asked for yet.
var received sync.Map // session token → *[][]any

// pollFor polls until a message with ref arrives (or arrived in an earlier
// poll of the session).
func pollFor(t testing.TB, n *testNode, session, ref string) []any {
	t.Helper()
	v, _ := received.LoadOrStore(session, new([][]any))
	got := v.(*[][]any)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range *got {
			if m[1] == ref {
				return m
			}
		}
		a := do(t, n, "GET", "", session, "")
		if a.Status != 200 && a.Status != 204 {
			t.Fatalf("poll: %+v", a)
		}
		for _, s := range a.Messages {
			var m []any
			if err := json.Unmarshal([]byte(s), &m); err != nil {
				t.Fatalf("message %q: %v", s, err)
			}
			*got = append(*got, m)
		}
	}
	t.Fatalf("no message with ref %s", ref)
	return nil
}

func heartbeat(ref string) string { return fmt.Sprintf(`[null,%q,"phoenix","heartbeat",{}]`, ref) }

func TestTokens(t *testing.T) {
	s := newSigner(testSecret)
	now := time.Now()
	tok := s.sign(ticket{Node: "n1", Addr: "10.0.0.1:4000", Session: "s", User: "42", Expires: now.Add(time.Hour).Unix()})
	got, err := s.parse(tok, now)
	if err != nil || got.Node != "n1" || got.User != "42" || got.Addr != "10.0.0.1:4000" {
		t.Fatalf("parse: %+v %v", got, err)
	}
	if _, err := s.parse(tok, now.Add(2*time.Hour)); err != errExpired {
		t.Fatalf("expired: %v", err)
	}
	if _, err := newSigner([]byte("another-secret-xxxxxxxx")).parse(tok, now); err != errForged {
		t.Fatalf("other key: %v", err)
	}
	for _, bad := range []string{"", "lp1.", "lp1.x.y", tok[:len(tok)-3] + "AAA", strings.Replace(tok, "lp1.", "lp2.", 1), tok + strings.Repeat("A", maxTokenLen)} {
		if _, err := s.parse(bad, now); err != errForged {
			t.Errorf("%q: %v", bad, err)
		}
	}
	// A host-app JWT signed with the node secret is no session token.
	if _, err := s.parse(jwt(t, "1"), now); err != errForged {
		t.Fatalf("jwt as session token: %v", err)
	}
}

func TestSessionRoundTrip(t *testing.T) {
	n := startNode(t, newHub(t), "n1", Config{})
	sess := open(t, n, "1")
	if a := do(t, n, "POST", "", sess, heartbeat("h1")+"\n"+`["1","2","user:1","phx_join",{}]`); a.Status != 200 {
		t.Fatalf("post: %+v", a)
	}
	if m := pollFor(t, n, sess, "h1"); m[3] != "phx_reply" {
		t.Fatalf("heartbeat reply: %v", m)
	}
	if m := pollFor(t, n, sess, "2"); m[4].(map[string]any)["status"] != "ok" {
		t.Fatalf("join reply: %v", m)
	}
	// phoenix.js 1.9 sends the session token in a header.
	if a := do(t, n, "POST", "", sess, heartbeat("h9")); a.Status != 200 {
		t.Fatalf("post: %+v", a)
	}
	hreq, _ := http.NewRequest("GET", n.srv.URL+Path+"?vsn=2.0.0", nil)
	hreq.Header.Set(headerSessionToken, sess)
	hres, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := io.ReadAll(hres.Body)
	hres.Body.Close()
	if !strings.Contains(string(hb), `\"h9\"`) {
		t.Fatalf("poll with the session token in %s: %s", headerSessionToken, hb)
	}
	// The authToken header works as well as ?token=.
	req, _ := http.NewRequest("GET", n.srv.URL+Path+"?vsn=2.0.0", nil)
	req.Header.Set(headerAuthToken, jwt(t, "2"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(b), `"status":410`) {
		t.Fatalf("authToken open: %s", b)
	}
}

func TestBadInput(t *testing.T) {
	n := startNode(t, newHub(t), "n1", Config{MaxBodyBytes: 4096, MaxMessageSize: 1024})
	bystander := open(t, n, "9")
	cases := []struct {
		name       string
		body       string
		http, json int
		closes     bool
	}{
		{"101 frames", strings.Repeat(heartbeat("x")+"\n", 101), 400, 400, false},
		{"body over the limit", "[" + strings.Repeat(" ", 5000) + "]", 413, 413, true},
		{"line over the message limit", "[" + strings.Repeat(" ", 1100) + "]", 413, 413, true},
		{"not JSON", heartbeat("a") + "\n[1,", 400, 400, true},
		{"binary line", "AAEC", 400, 400, true},
		{"invalid UTF-8", "[\"\xff\"]", 400, 400, true},
		{"malformed frame (hub)", `["1","2"]`, 200, 410, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sess := open(t, n, "1")
			a := do(t, n, "POST", "", sess, c.body)
			if a.HTTP != c.http || a.Status != c.json {
				t.Fatalf("got HTTP %d status %d (%s), want %d/%d", a.HTTP, a.Status, a.Reason, c.http, c.json)
			}
			p := do(t, n, "POST", "", sess, heartbeat("after"))
			if c.closes != (p.Status == 410) {
				t.Fatalf("after: %+v (session should close: %v)", p, c.closes)
			}
		})
	}
	sess := open(t, n, "1")
	// Change a character well inside the signature: the last two of a
	// base64 HMAC may already be "AA", or differ only in bits a decoder
	// ignores.
	forged := []byte(sess)
	if i := len(forged) - 5; forged[i] == 'A' {
		forged[i] = 'B'
	} else {
		forged[i] = 'A'
	}
	for _, c := range []struct {
		name, user, session string
		want                int
	}{
		{"another user's session", jwt(t, "2"), sess, 403},
		{"forged session", "", string(forged), 403},
		{"garbage session", "", "lp1.garbage", 403},
		{"unknown session", "", newSigner(testSecret).sign(ticket{Node: "n1", Session: "nope", User: "1", Expires: time.Now().Add(time.Hour).Unix()}), 410},
		{"expired session", "", newSigner(testSecret).sign(ticket{Node: "n1", Session: "x", User: "1", Expires: time.Now().Add(-time.Second).Unix()}), 410},
	} {
		if a := do(t, n, "GET", c.user, c.session, ""); a.Status != c.want {
			t.Errorf("%s: %+v", c.name, a)
		}
	}
	if a := do(t, n, "GET", jwt(t, "1")+"x", "", ""); a.HTTP != 403 || a.Status != 403 {
		t.Errorf("forged jwt open: %+v", a)
	}
	// Nothing of that touched the others.
	if a := do(t, n, "POST", "", bystander, heartbeat("b")); a.Status != 200 {
		t.Fatalf("bystander: %+v", a)
	}
	pollFor(t, n, bystander, "b")
	if a := do(t, n, "POST", "", sess, heartbeat("s")); a.Status != 200 {
		t.Fatalf("session after refusals: %+v", a)
	}
}

func TestSlowConsumer(t *testing.T) {
	n := startNode(t, newHub(t), "n1", Config{MaxQueueFrames: 3, MaxQueueBytes: 1 << 20})
	tok := open(t, n, "1")
	tk, _ := n.m.sign.parse(tok, time.Now())
	s := n.m.lookup(tk.Session)
	for i := range 3 {
		if err := s.Send([]byte(fmt.Sprintf(`[null,null,"t","e",{"i":%d}]`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Send([]byte(`[null,null,"t","e",{}]`)); err != ErrSlowConsumer {
		t.Fatalf("over the bound: %v", err)
	}
	if slow, _ := n.m.Stats(); slow != 1 {
		t.Fatalf("slow consumers: %d", slow)
	}
	// What was queued still goes out, then the session is gone.
	if a := do(t, n, "GET", "", tok, ""); a.Status != 200 || len(a.Messages) != 3 {
		t.Fatalf("poll: %+v", a)
	}
	if a := do(t, n, "GET", "", tok, ""); a.Status != 410 {
		t.Fatalf("after close: %+v", a)
	}
}

func TestForwardToOwner(t *testing.T) {
	h := newHub(t) // one hub stands for the cluster's fanout
	a := startNode(t, h, "a", Config{})
	b := startNode(t, h, "b", Config{})
	sess := open(t, a, "1")
	// Posts and polls through b reach the session on a, in order.
	for i := range 5 {
		if r := do(t, b, "POST", "", sess, heartbeat(fmt.Sprint("b", i))); r.Status != 200 {
			t.Fatalf("post via b: %+v", r)
		}
	}
	pollFor(t, b, sess, "b4")
	if _, fwd := b.m.Stats(); fwd < 6 {
		t.Fatalf("forwarded %d", fwd)
	}
	// The owner's answer passes through as it is: one CORS header, not
	// one from each node.
	req0, _ := http.NewRequest("POST", b.srv.URL+Path+"?vsn=2.0.0&token="+url.QueryEscape(sess), strings.NewReader(heartbeat("cors")))
	req0.Header.Set("Origin", "http://app.example")
	res0, err := http.DefaultClient.Do(req0)
	if err != nil {
		t.Fatal(err)
	}
	res0.Body.Close()
	if got := res0.Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != "http://app.example" {
		t.Fatalf("forwarded CORS header: %q", got)
	}
	// A forwarded request is never forwarded again.
	req, _ := http.NewRequest("GET", a.srv.URL+Path+"?vsn=2.0.0&token="+url.QueryEscape(open(t, b, "2")), nil)
	req.Header.Set(headerHop, "x")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), `"status":410`) {
		t.Fatalf("second hop: %s", body)
	}
	// The owner dies: 410, phoenix.js opens a new session.
	a.srv.Close()
	if r := do(t, b, "GET", "", sess, ""); r.Status != 410 || r.HTTP != 200 {
		t.Fatalf("dead owner: %+v", r)
	}
}

func TestPausedPostWaits(t *testing.T) {
	n := startNode(t, newHub(t), "n1", Config{PauseTimeout: 200 * time.Millisecond})
	tok := open(t, n, "1")
	tk, _ := n.m.sign.parse(tok, time.Now())
	s := n.m.lookup(tk.Session)
	s.PauseReads()
	done := make(chan answer)
	go func() { done <- do(t, n, "POST", "", tok, heartbeat("p")) }()
	select {
	case a := <-done:
		t.Fatalf("answered while paused: %+v", a)
	case <-time.After(50 * time.Millisecond):
	}
	s.ResumeReads()
	if a := <-done; a.Status != 200 {
		t.Fatalf("after resume: %+v", a)
	}
	pollFor(t, n, tok, "p")
	// Paused past PauseTimeout: 408 and the session ends.
	s.PauseReads()
	if a := do(t, n, "POST", "", tok, heartbeat("q")); a.Status != 408 {
		t.Fatalf("stalled: %+v", a)
	}
}

func TestDrainAnswersHeldPolls(t *testing.T) {
	n := startNode(t, newHub(t), "n1", Config{Window: 10 * time.Second})
	toks := []string{open(t, n, "1"), open(t, n, "2")}
	var wg sync.WaitGroup
	got := make([]answer, len(toks))
	start := time.Now()
	for i, tok := range toks {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = do(t, n, "GET", "", tok, "") }()
	}
	time.Sleep(100 * time.Millisecond)
	n.m.Drain(context.Background(), 0)
	wg.Wait()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("held polls answered after %v", d)
	}
	for _, a := range got {
		if a.Status != 410 {
			t.Fatalf("drained poll: %+v", a)
		}
	}
	if a := do(t, n, "GET", jwt(t, "3"), "", ""); a.Status != 500 {
		t.Fatalf("open while draining: %+v", a)
	}
}

func TestAbandonedSessionExpires(t *testing.T) {
	h := newHub(t)
	n := startNode(t, h, "n1", Config{Window: 100 * time.Millisecond, SessionTimeout: 300 * time.Millisecond})
	tok := open(t, n, "1")
	if h.Clients() != 1 {
		t.Fatalf("clients %d", h.Clients())
	}
	deadline := time.Now().Add(3 * time.Second)
	for n.m.Len() > 0 || h.Clients() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("session not reaped: %d sessions, %d clients", n.m.Len(), h.Clients())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a := do(t, n, "GET", "", tok, ""); a.Status != 410 {
		t.Fatalf("poll after expiry: %+v", a)
	}
}

func TestJSONString(t *testing.T) {
	for _, s := range []string{`["1",null,"t","e",{"body":"a \"q\" \\ \n\t\u0001 é ✓ <>&"}]`, "", "\u2028"} {
		var back string
		if err := json.Unmarshal(phx.AppendString(nil, s), &back); err != nil || back != s {
			t.Errorf("%q: %q %v", s, back, err)
		}
	}
}

// TestIdleSessionCost opens sessions that nobody polls and checks they hold
// no goroutine; it logs the heap each one costs (go test -v -run
// IdleSessionCost ./pkg/longpoll).
func TestIdleSessionCost(t *testing.T) {
	h := newHub(t)
	n := startNode(t, h, "n1", Config{SessionTimeout: time.Hour})
	const count = 2000
	tok := jwt(t, "1")
	req := httptest.NewRequest("GET", Path+"?vsn=2.0.0&token="+url.QueryEscape(tok), nil)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	for range count {
		w := httptest.NewRecorder()
		n.m.ServeHTTP(w, req)
		if w.Code != 200 {
			t.Fatal(w.Body.String())
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if g := runtime.NumGoroutine() - g0; g > 5 {
		t.Fatalf("%d idle sessions hold %d goroutines", count, g)
	}
	if n.m.Len() != count {
		t.Fatalf("sessions %d", n.m.Len())
	}
	perSession := float64(after.HeapAlloc-before.HeapAlloc) / count
	t.Logf("heap per idle long-poll session (no poll held): %.0f bytes", perSession)
	if perSession > 4096 {
		t.Fatalf("an idle session costs %.0f bytes of heap", perSession)
	}
}
