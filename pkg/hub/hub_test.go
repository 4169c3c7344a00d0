package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/memstore"
	"github.com/elchat/elchat/pkg/topic"
)

// recorder is a hub.Conn that keeps what the hub sent, decoded.
type recorder struct {
	mu     sync.Mutex
	frames []phx.Frame
	closed int
	reason string
	// paused and resumed count PauseReads and ResumeReads calls.
	paused, resumed int
}

func (r *recorder) Send(msg []byte) error {
	payload := msg
	f, err := phx.Decode(payload)
	if err != nil {
		panic(fmt.Sprintf("hub sent an undecodable frame %q: %v", payload, err))
	}
	f.Payload = append([]byte(nil), f.Payload...)
	r.mu.Lock()
	r.frames = append(r.frames, f)
	r.mu.Unlock()
	return nil
}

func (r *recorder) Close(code int, reason string) {
	r.mu.Lock()
	r.closed, r.reason = code, reason
	r.mu.Unlock()
}

// take returns and forgets the frames received so far.
func (r *recorder) take() []phx.Frame {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.frames
	r.frames = nil
	return out
}

func (r *recorder) PauseReads() {
	r.mu.Lock()
	r.paused++
	r.mu.Unlock()
}

// waitReadable blocks while reads are paused, as the transport would.
func (r *recorder) waitReadable() {
	for {
		r.mu.Lock()
		open := r.paused == r.resumed
		r.mu.Unlock()
		if open {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func (r *recorder) ResumeReads() {
	r.mu.Lock()
	r.resumed++
	r.mu.Unlock()
}

type env struct {
	t     *testing.T
	store store.Store
	hub   *hub.Hub
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, hub.Config{PushRate: 1e6, PushBurst: 1e6})
}

// newEnvWith makes a hub on an in-memory store (cfg.Store, when nil).
func newEnvWith(t *testing.T, cfg hub.Config) *env {
	t.Helper()
	if cfg.Store == nil {
		st := memstore.New()
		t.Cleanup(func() { st.Close() })
		cfg.Store = st
	}
	h := hub.New(cfg)
	t.Cleanup(h.Close)
	return &env{t: t, store: cfg.Store, hub: h}
}

// settle waits until the hub's request stage has handled everything.
func settle(t *testing.T, h *hub.Hub) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Drain(ctx); err != nil {
		t.Fatalf("hub requests still running: %v", err)
	}
}

type client struct {
	t   *testing.T
	h   *hub.Hub
	c   *hub.Client
	rec *recorder
	ref int
}

func (e *env) connect(user string) *client {
	rec := &recorder{}
	return &client{t: e.t, h: e.hub, c: e.hub.Connect(rec, user, "name-"+user), rec: rec}
}

// send sends a frame and returns its ref.
func (c *client) send(joinRef, topic, event string, payload any) string {
	c.t.Helper()
	c.ref++
	ref := fmt.Sprint(c.ref)
	if joinRef == "=" {
		joinRef = ref
	}
	p, err := json.Marshal(payload)
	if err != nil {
		c.t.Fatal(err)
	}
	c.c.HandleText(phx.AppendMessage(nil, joinRef, ref, topic, event, p))
	settle(c.t, c.h)
	return ref
}

func (c *client) join(topic string, params any) (joinRef string, resp map[string]any) {
	c.t.Helper()
	ref := c.send("=", topic, "phx_join", params)
	r := c.replyTo(ref, "ok")
	return ref, r
}

// replyTo finds the reply to ref among the frames received and checks its
// status.
// post sends n messages "m0".."m<n-1>" to room and returns their ids.
func (c *client) post(joinRef, room string, n int) []float64 {
	c.t.Helper()
	ids := make([]float64, 0, n)
	for i := range n {
		ref := c.send(joinRef, room, "new_message", map[string]any{"body": fmt.Sprint("m", i)})
		ids = append(ids, c.replyTo(ref, "ok")["id"].(float64))
	}
	return ids
}

func (c *client) replyTo(ref, status string) map[string]any {
	c.t.Helper()
	fs := c.rec.take()
	for i, f := range fs {
		if f.Event == "phx_reply" && f.Ref == ref {
			// Keep the other frames for the test to look at.
			c.rec.mu.Lock()
			c.rec.frames = append(append(append([]phx.Frame(nil), fs[:i]...), fs[i+1:]...), c.rec.frames...)
			c.rec.mu.Unlock()
			var r struct {
				Status   string         `json:"status"`
				Response map[string]any `json:"response"`
			}
			if err := json.Unmarshal(f.Payload, &r); err != nil {
				c.t.Fatal(err)
			}
			if r.Status != status {
				c.t.Fatalf("reply to %s: status %q, want %q (%v)", ref, r.Status, status, r.Response)
			}
			return r.Response
		}
	}
	c.t.Fatalf("no reply to ref %s", ref)
	return nil
}

func events(fs []phx.Frame, event string) []phx.Frame {
	var out []phx.Frame
	for _, f := range fs {
		if f.Event == event {
			out = append(out, f)
		}
	}
	return out
}

func TestHeartbeatAndUnmatched(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	ref := a.send("", "phoenix", "heartbeat", map[string]any{})
	fs := a.rec.take()
	if len(fs) != 1 || fs[0].Ref != ref || fs[0].JoinRef != "" || fs[0].Topic != "phoenix" || string(fs[0].Payload) != `{"status":"ok","response":{}}` {
		t.Fatalf("heartbeat reply: %+v", fs)
	}
	ref = a.send("=", "room:lobby", "phx_join", map[string]any{})
	fs = a.rec.take()
	if len(fs) != 1 || fs[0].JoinRef != "" || !strings.Contains(string(fs[0].Payload), "unmatched topic") {
		t.Fatalf("unmatched join: %+v", fs)
	}
	// A push to a topic that is not joined is an unmatched topic too.
	a.send("9", "chat:1:2", "new_message", map[string]any{"body": "x"})
	fs = a.rec.take()
	if len(fs) != 1 || fs[0].JoinRef != "" || !strings.Contains(string(fs[0].Payload), "unmatched topic") {
		t.Fatalf("push to unjoined topic: %+v", fs)
	}
	// Leaving a topic never joined is ok.
	ref = a.send("7", "chat:1:2", "phx_leave", map[string]any{})
	a.replyTo(ref, "ok")
}

func TestJoinRules(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	for topic, reason := range map[string]string{
		"user:2":     "unauthorized",
		"chat:2:3":   "unauthorized",
		"chat:10:9":  "chat:9:10",
		"chat:1:1":   "yourself",
		"chat:1:2:3": "",
	} {
		ref := a.send("=", topic, "phx_join", map[string]any{})
		r := a.replyTo(ref, "error")
		if !strings.Contains(fmt.Sprint(r["reason"]), reason) {
			t.Errorf("join %s: reason %q, want it to mention %q", topic, r["reason"], reason)
		}
	}
	a.join("user:1", nil)
	a.join("chat:1:2", nil)
}

func TestChatFlowPresenceAndNotification(t *testing.T) {
	e := newEnv(t)
	a, b := e.connect("1"), e.connect("2")
	_, lobby := b.join("user:2", nil)
	if n := len(lobby["unread"].([]any)); n != 0 {
		t.Fatalf("fresh lobby has %d unread chats", n)
	}
	ajr, resp := a.join("chat:1:2", nil)
	if resp["has_more"] != false || len(resp["messages"].([]any)) != 0 {
		t.Fatalf("empty chat join reply: %v", resp)
	}
	// The join reply is followed by presence_state with the joiner's meta.
	fs := a.rec.take()
	st := events(fs, "presence_state")
	if len(st) != 1 || st[0].JoinRef != ajr || !strings.Contains(string(st[0].Payload), `"1":{"metas":[{"phx_ref":"`) {
		t.Fatalf("presence_state: %+v", fs)
	}

	// B is not in the chat: the message also goes to B's lobby.
	ref := a.send(ajr, "chat:1:2", "new_message", map[string]any{"body": "hello <b>&'\";--", "client_id": "c1"})
	msg := a.replyTo(ref, "ok")
	if msg["body"] != "hello <b>&'\";--" || msg["user_id"] != "1" || msg["opponent_id"] != "2" || msg["room"] != "chat:1:2" {
		t.Fatalf("ack: %v", msg)
	}
	note := events(b.rec.take(), "notification")
	if len(note) != 1 || note[0].Topic != "user:2" || !strings.Contains(string(note[0].Payload), `"room":"chat:1:2"`) {
		t.Fatalf("lobby notification: %+v", note)
	}

	// B joins: sees the message in history and A in presence; A gets a diff.
	bjr, resp := b.join("chat:1:2", nil)
	if len(resp["messages"].([]any)) != 1 {
		t.Fatalf("history after one message: %v", resp)
	}
	diff := events(a.rec.take(), "presence_diff")
	if len(diff) != 1 || diff[0].JoinRef != "" || string(diff[0].Payload[:10]) != `{"joins":{` || !strings.Contains(string(diff[0].Payload), `"leaves":{}`) {
		t.Fatalf("presence_diff on join: %+v", diff)
	}

	// Now both are present: a message is broadcast, not notified.
	ref = b.send(bjr, "chat:1:2", "new_message", map[string]any{"body": "hi", "client_id": "c2"})
	reply := b.replyTo(ref, "ok")
	id := reply["id"].(float64)
	if got := events(a.rec.take(), "new_message"); len(got) != 1 {
		t.Fatalf("broadcast to A: %+v", got)
	}
	if got := events(b.rec.take(), "notification"); len(got) != 0 {
		t.Fatalf("notification while present: %+v", got)
	}

	// A retry with the same client_id returns the stored message.
	ref = b.send(bjr, "chat:1:2", "new_message", map[string]any{"body": "hi", "client_id": "c2"})
	if again := b.replyTo(ref, "ok"); again["id"] != reply["id"] {
		t.Fatalf("retry stored again: %v vs %v", again["id"], reply["id"])
	}

	// Typing goes to the other side only.
	ref = b.send(bjr, "chat:1:2", "typing", map[string]any{})
	b.replyTo(ref, "ok")
	if got := events(a.rec.take(), "typing"); len(got) != 1 {
		t.Fatalf("typing to A: %+v", got)
	}

	// A reads: receipt to the chat, unread gone.
	ref = a.send(ajr, "chat:1:2", "read", map[string]any{"last_id": id})
	if r := a.replyTo(ref, "ok"); r["marked"] != float64(1) {
		t.Fatalf("read marked %v", r["marked"])
	}
	if got := events(b.rec.take(), "read"); len(got) != 1 {
		t.Fatalf("read receipt: %+v", got)
	}
	un, err := e.store.Unread(t.Context(), "1")
	if err != nil || len(un) != 0 {
		t.Fatalf("unread after read: %v %v", un, err)
	}

	// A leaves: reply, phx_close, and B sees the leave.
	a.rec.take()
	b.rec.take()
	ref = a.send(ajr, "chat:1:2", "phx_leave", map[string]any{})
	fs = a.rec.take()
	if len(fs) < 2 || fs[0].Ref != ref || fs[1].Event != "phx_close" || fs[1].Ref != ajr || fs[1].JoinRef != ajr {
		t.Fatalf("leave: %+v", fs)
	}
	diff = events(b.rec.take(), "presence_diff")
	if len(diff) != 1 || !strings.Contains(string(diff[0].Payload), `"joins":{},"leaves":{"1"`) {
		t.Fatalf("leave diff: %+v", diff)
	}
	a.join("user:1", nil)
	b.send(bjr, "chat:1:2", "new_message", map[string]any{"body": "are you there?"})
	if got := events(a.rec.take(), "notification"); len(got) != 1 {
		t.Fatalf("notification after leave: %+v", got)
	}
}

func TestDuplicateJoinAndStaleRef(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	old, _ := a.join("chat:1:2", nil)
	a.rec.take()
	ref := a.send("=", "chat:1:2", "phx_join", map[string]any{})
	fs := a.rec.take()
	if fs[0].Event != "phx_reply" || fs[0].Ref != ref {
		t.Fatalf("first frame after duplicate join is not its reply: %+v", fs[0])
	}
	closes := events(fs, "phx_close")
	if len(closes) != 1 || closes[0].JoinRef != old || closes[0].Ref != old {
		t.Fatalf("phx_close for the old join: %+v", fs)
	}
	// A push with the old join_ref is dropped silently.
	a.send(old, "chat:1:2", "new_message", map[string]any{"body": "stale"})
	if fs := a.rec.take(); len(fs) != 0 {
		t.Fatalf("stale push answered: %+v", fs)
	}
	msgs, _ := e.store.History(t.Context(), "chat:1:2", 0, 10)
	if len(msgs) != 0 {
		t.Fatalf("stale push stored: %v", msgs)
	}
}

func TestCatchUpAndPaging(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	jr, _ := a.join("chat:1:2", nil)
	ids := a.post(jr, "chat:1:2", 120)
	b := e.connect("2")
	_, resp := b.join("chat:1:2", nil)
	msgs := resp["messages"].([]any)
	if len(msgs) != 50 || resp["has_more"] != true || msgs[49].(map[string]any)["id"] != ids[119] {
		t.Fatalf("join page: %d messages, has_more %v", len(msgs), resp["has_more"])
	}
	before := msgs[0].(map[string]any)["id"]
	bjr := b.c
	_ = bjr
	// Reconnect with the last seen id: exactly the messages after it.
	c := e.connect("2")
	_, resp = c.join("chat:1:2", map[string]any{"last_id": ids[99]})
	if got := resp["messages"].([]any); len(got) != 20 || got[0].(map[string]any)["id"] != ids[100] {
		t.Fatalf("catch-up: %d messages", len(got))
	}
	// Page back with before.
	d := e.connect("2")
	djr, _ := d.join("chat:1:2", nil)
	ref := d.send(djr, "chat:1:2", "history", map[string]any{"before": before})
	page := d.replyTo(ref, "ok")
	if got := page["messages"].([]any); len(got) != 50 || page["has_more"] != true {
		t.Fatalf("history page: %d %v", len(got), page["has_more"])
	}
}

func TestBodyValidation(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	jr, _ := a.join("chat:1:2", nil)
	for _, p := range []any{
		map[string]any{"body": ""},
		map[string]any{"body": "   "},
		map[string]any{"body": strings.Repeat("x", 4097)},
		map[string]any{"body": 42},
		map[string]any{},
		"not an object",
	} {
		ref := a.send(jr, "chat:1:2", "new_message", p)
		a.replyTo(ref, "error")
	}
	ref := a.send(jr, "chat:1:2", "dance", map[string]any{})
	if r := a.replyTo(ref, "error"); r["reason"] != "unknown event" {
		t.Fatalf("unknown event: %v", r)
	}
}

func TestCloseLeavesPresence(t *testing.T) {
	e := newEnv(t)
	a, b := e.connect("1"), e.connect("2")
	a.join("chat:1:2", nil)
	b.join("chat:1:2", nil)
	a.rec.take()
	b.c.Closed()
	settle(t, e.hub)
	if diff := events(a.rec.take(), "presence_diff"); len(diff) != 1 || !strings.Contains(string(diff[0].Payload), `"leaves":{"2"`) {
		t.Fatalf("leave diff on close: %+v", diff)
	}
	if on, _ := e.hub.Presence().Present(t.Context(), "chat:1:2", "2"); on {
		t.Fatal("closed client still present")
	}
	if e.hub.Clients() != 1 {
		t.Fatalf("clients = %d", e.hub.Clients())
	}
}

// Two hubs on one LocalBus behave as two nodes of a cluster.
func TestTwoNodes(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	bus, pres := hub.NewLocalBus(), hub.NewMemoryPresence()
	var nodes []*hub.Hub
	for range 2 {
		h := hub.New(hub.Config{Store: st, Bus: bus.Node(), Presence: pres})
		t.Cleanup(h.Close)
		go h.Run(t.Context()) //nolint:errcheck
		nodes = append(nodes, h)
	}
	time.Sleep(20 * time.Millisecond) // let Run register the delivery callbacks
	a := (&env{t: t, hub: nodes[0]}).connect("1")
	b := (&env{t: t, hub: nodes[1]}).connect("2")
	b.join("user:2", nil)
	ajr, _ := a.join("chat:1:2", nil)
	ref := a.send(ajr, "chat:1:2", "new_message", map[string]any{"body": "across"})
	a.replyTo(ref, "ok")
	if got := events(b.rec.take(), "notification"); len(got) != 1 {
		t.Fatalf("cross-node notification: %+v", got)
	}
	a.rec.take()
	b.join("chat:1:2", nil)
	if diff := events(a.rec.take(), "presence_diff"); len(diff) != 1 {
		t.Fatalf("cross-node presence diff: %+v", diff)
	}
	a.send(ajr, "chat:1:2", "new_message", map[string]any{"body": "again"})
	if got := events(b.rec.take(), "new_message"); len(got) != 1 {
		t.Fatalf("cross-node broadcast: %+v", got)
	}
}

func TestPushRateLimit(t *testing.T) {
	e := newEnvWith(t, hub.Config{PushRate: 1, PushBurst: 3})
	a := e.connect("1")
	jr, _ := a.join("chat:1:2", nil)
	limited := 0
	for range 10 {
		ref := a.send(jr, "chat:1:2", "typing", map[string]any{})
		for _, f := range a.rec.take() {
			if f.Ref == ref && strings.Contains(string(f.Payload), "rate limited") {
				limited++
			}
		}
	}
	if limited < 6 {
		t.Fatalf("%d of 10 pushes rate limited with burst 3", limited)
	}
	// Heartbeats are never limited.
	ref := a.send("", "phoenix", "heartbeat", map[string]any{})
	a.replyTo(ref, "ok")
}

func TestResyncAsksEveryChannelToRejoin(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	a.join("user:1", nil)
	a.join("chat:1:2", nil)
	a.rec.take()
	if n := e.hub.Resync(t.Context(), 0); n != 2 {
		t.Fatalf("resync covered %d topics, want 2", n)
	}
	errs := events(a.rec.take(), "phx_error")
	if len(errs) != 2 || errs[0].JoinRef != "" || errs[1].JoinRef != "" {
		t.Fatalf("phx_error frames: %+v", errs)
	}
}

func TestJoinsAreRateLimited(t *testing.T) {
	e := newEnvWith(t, hub.Config{PushRate: 1, PushBurst: 5})
	a := e.connect("1")
	limited := 0
	for range 20 {
		ref := a.send("=", "user:1", "phx_join", map[string]any{})
		for _, f := range a.rec.take() {
			if f.Ref == ref && strings.Contains(string(f.Payload), "rate limited") {
				limited++
			}
		}
	}
	if limited < 10 {
		t.Fatalf("%d of 20 joins rate limited with burst 5", limited)
	}
}

func TestChannelLimit(t *testing.T) {
	e := newEnvWith(t, hub.Config{MaxChannels: 3, PushRate: 1e6, PushBurst: 1e6})
	a := e.connect("1")
	for _, topic := range []string{"user:1", "chat:1:2", "chat:1:3"} {
		a.join(topic, nil)
	}
	ref := a.send("=", "chat:1:4", "phx_join", map[string]any{})
	if r := a.replyTo(ref, "error"); r["reason"] != "too many channels joined" {
		t.Fatalf("fourth join: %v", r)
	}
	// Rejoining a joined topic replaces it and does not count twice.
	a.join("chat:1:3", nil)
	// Leaving frees a slot.
	a.send("", "chat:1:2", "phx_leave", map[string]any{})
	a.join("chat:1:4", nil)
}

// Another node's lost frames: this node's clients rejoin and catch up from
// the announced watermark, once per outage.
func TestResyncRequested(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	jr, _ := a.join("chat:1:2", nil)
	ids := a.post(jr, "chat:1:2", 5)
	a.rec.take()
	if n := e.hub.ResyncRequested(t.Context(), int64(ids[1]), 0, 0); n != 1 {
		t.Fatalf("resync covered %d topics, want 1", n)
	}
	if errs := events(a.rec.take(), "phx_error"); len(errs) != 1 {
		t.Fatalf("phx_error frames: %+v", errs)
	}
	// The rejoin asks for what came after the newest message it has, and
	// gets everything after the watermark instead.
	_, resp := a.join("chat:1:2", map[string]any{"last_id": ids[4]})
	if got := resp["messages"].([]any); len(got) != 3 || got[0].(map[string]any)["id"] != ids[2] {
		t.Fatalf("catch-up after resync: %v", got)
	}
	// Announcements that arrive while a wave waits out its delay fold
	// into it: one wave, not one per announcing node.
	ctx, cancel := context.WithCancel(t.Context())
	pending := make(chan int)
	go func() { pending <- e.hub.ResyncRequested(ctx, int64(ids[2]), time.Hour, 0) }()
	deadline := time.Now().Add(5 * time.Second)
	for !e.hub.WavePending() {
		if time.Now().After(deadline) {
			t.Fatal("the wave was not scheduled")
		}
		time.Sleep(time.Millisecond)
	}
	if n := e.hub.ResyncRequested(t.Context(), int64(ids[3]), 0, 0); n != 0 {
		t.Fatalf("an announcement during a pending wave covered %d topics", n)
	}
	cancel()
	<-pending
	if errs := events(a.rec.take(), "phx_error"); len(errs) != 0 {
		t.Fatalf("phx_error frames while a wave was pending: %+v", errs)
	}
	// While this node's own bus is down, its recovery's wave covers it.
	e.hub.BusDown(time.Now())
	if n := e.hub.ResyncRequested(t.Context(), 0, 0, 0); n != 0 {
		t.Fatalf("an announcement while down covered %d topics", n)
	}
}

// Two nodes recover from a shared outage at different times: this one is
// back first and its clients rejoin; the other then stores messages its
// bus cannot publish yet and announces the loss when it is back. This
// node's clients must rejoin once more, or they never get those messages.
func TestResyncRequestedAfterOwnWave(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	jr, _ := a.join("chat:1:2", nil)
	e.hub.BusDown(time.Now())
	if n := e.hub.BusUp(t.Context(), 0, 0); n != 1 {
		t.Fatalf("own wave covered %d topics, want 1", n)
	}
	a.rec.take()
	jr, _ = a.join("chat:1:2", nil)
	// What the other node stored while its bus was still down (stored
	// here: the store is shared).
	ids := a.post(jr, "chat:1:2", 3)
	a.rec.take()
	if n := e.hub.ResyncRequested(t.Context(), int64(ids[0])-1, 0, 0); n != 1 {
		t.Fatalf("the other node's announcement after this node's wave covered %d topics, want 1", n)
	}
	if errs := events(a.rec.take(), "phx_error"); len(errs) != 1 {
		t.Fatalf("phx_error frames: %+v", errs)
	}
	_, resp := a.join("chat:1:2", map[string]any{"last_id": ids[2]})
	got := map[float64]bool{}
	for _, m := range resp["messages"].([]any) {
		got[m.(map[string]any)["id"].(float64)] = true
	}
	for _, id := range ids {
		if !got[id] {
			t.Fatalf("rejoin after the announcement caught up %v, missing %v", resp["messages"], id)
		}
	}
}

// TestResyncTopics: only the named topics that have local subscribers get
// a phx_error, so their clients rejoin and get a fresh presence_state.
func TestResyncTopics(t *testing.T) {
	e := newEnv(t)
	a := e.connect("1")
	a.join("chat:1:2", nil)
	a.join("chat:1:3", nil)
	a.rec.take()
	if n := e.hub.ResyncTopics(t.Context(), []string{"chat:1:2", "chat:7:8"}, 0); n != 1 {
		t.Fatalf("resynced %d topics, want 1", n)
	}
	errs := events(a.rec.take(), "phx_error")
	if len(errs) != 1 {
		t.Fatalf("phx_error frames: %+v", errs)
	}
}

// TestClientIDPerChat: a client_id reused in another chat is a new message
// there, never the first chat's message delivered to the wrong user; reused
// in the same chat for another body it is refused.
func TestClientIDPerChat(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.connect("1"), e.connect("2"), e.connect("3")
	j12, _ := a.join("chat:1:2", nil)
	j13, _ := a.join("chat:1:3", nil)
	b.join("chat:1:2", nil)
	c.join("chat:1:3", nil)
	b.rec.take()
	c.rec.take()
	first := a.replyTo(a.send(j12, "chat:1:2", "new_message", map[string]any{"body": "private note", "client_id": "c-1"}), "ok")
	second := a.replyTo(a.send(j13, "chat:1:3", "new_message", map[string]any{"body": "hello", "client_id": "c-1"}), "ok")
	if second["room"] != "chat:1:3" || second["body"] != "hello" || second["id"] == first["id"] {
		t.Fatalf("reused client_id in chat:1:3 answered %v", second)
	}
	for _, f := range c.rec.take() {
		if strings.Contains(string(f.Payload), "private note") {
			t.Fatalf("user 3 received chat:1:2's message: %s", f.Payload)
		}
	}
	// A retry with the same body is idempotent; another body is refused.
	if again := a.replyTo(a.send(j12, "chat:1:2", "new_message", map[string]any{"body": "private note", "client_id": "c-1"}), "ok"); again["id"] != first["id"] {
		t.Fatalf("retry answered %v, want message %v", again, first["id"])
	}
	r := a.replyTo(a.send(j12, "chat:1:2", "new_message", map[string]any{"body": "changed", "client_id": "c-1"}), "error")
	if r["reason"] != "client_id already used for a different message" {
		t.Fatalf("reused client_id with another body: %v", r)
	}
}

// lateBus is a node of a LocalBus whose subscriptions take effect, and are
// confirmed, only after a delay, like a Redis SUBSCRIBE in flight.
type lateBus struct {
	hub.Bus
	delay time.Duration
}

func (b *lateBus) Subscribe(topic string) (<-chan struct{}, error) {
	live := make(chan struct{})
	go func() {
		time.Sleep(b.delay)
		inner, _ := b.Bus.Subscribe(topic)
		<-inner
		close(live)
	}()
	return live, nil
}

// TestFirstJoinMissesNothing: a first join on a node whose bus confirms
// subscriptions late gets every message written on another node during
// its subscription, in its reply or live. Reading history before the
// subscription was live lost the ones in between for good.
func TestFirstJoinMissesNothing(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	bus, pres := hub.NewLocalBus(), hub.NewMemoryPresence()
	writerHub := hub.New(hub.Config{Store: st, Bus: bus.Node(), Presence: pres, PushRate: 1e6, PushBurst: 1e6})
	readerHub := hub.New(hub.Config{Store: st, Bus: &lateBus{Bus: bus.Node(), delay: 30 * time.Millisecond}, Presence: pres, PushRate: 1e6, PushBurst: 1e6})
	for _, h := range []*hub.Hub{writerHub, readerHub} {
		t.Cleanup(h.Close)
		go h.Run(t.Context()) //nolint:errcheck
	}
	time.Sleep(20 * time.Millisecond) // let Run attach the handlers
	for round := range 5 {
		room := topic.ChatName(fmt.Sprint("w", round), fmt.Sprint("r", round))
		w := (&env{t: t, hub: writerHub}).connect(fmt.Sprint("w", round))
		wj, _ := w.join(room, nil)
		stop := make(chan struct{})
		acked := make(chan []float64)
		go func() {
			var ids []float64
			for i := 0; ; i++ {
				select {
				case <-stop:
					acked <- ids
					return
				default:
				}
				ref := w.send(wj, room, "new_message", map[string]any{"body": fmt.Sprint("m", i)})
				ids = append(ids, w.replyTo(ref, "ok")["id"].(float64))
				time.Sleep(time.Millisecond)
			}
		}()
		time.Sleep(10 * time.Millisecond)
		r := (&env{t: t, hub: readerHub}).connect(fmt.Sprint("r", round))
		_, resp := r.join(room, map[string]any{"last_id": 0})
		time.Sleep(50 * time.Millisecond)
		close(stop)
		ids := <-acked
		settle(t, writerHub)
		settle(t, readerHub)
		got := map[float64]bool{}
		for _, m := range resp["messages"].([]any) {
			got[m.(map[string]any)["id"].(float64)] = true
		}
		for _, f := range events(r.rec.take(), "new_message") {
			var m map[string]any
			if err := json.Unmarshal(f.Payload, &m); err != nil {
				t.Fatal(err)
			}
			got[m["id"].(float64)] = true
		}
		for _, id := range ids {
			if !got[id] {
				t.Fatalf("round %d: message %v neither in the join reply nor live (%d acked)", round, id, len(ids))
			}
		}
	}
}

// orderBus records, per topic, whether the node is subscribed, as the bus
// sees the calls.
type orderBus struct {
	hub.Bus
	mu  sync.Mutex
	sub map[string]bool
}

func (b *orderBus) Subscribe(topic string) (<-chan struct{}, error) {
	b.mu.Lock()
	b.sub[topic] = true
	b.mu.Unlock()
	return b.Bus.Subscribe(topic)
}

func (b *orderBus) Unsubscribe(topic string) error {
	// A bus call that takes a moment (a lock, a queue) widens the window in
	// which a call made after the hub's lock was released is overtaken.
	time.Sleep(200 * time.Microsecond)
	b.mu.Lock()
	b.sub[topic] = false
	b.mu.Unlock()
	return b.Bus.Unsubscribe(topic)
}

// TestSubscribeOrder: joins and leaves of one topic racing on several
// connections reach the bus in the order the hub decided them, so a topic
// with local subscribers is always subscribed on the bus.
func TestSubscribeOrder(t *testing.T) {
	bus := &orderBus{Bus: hub.NewLocalBus().Node(), sub: map[string]bool{}}
	e := newEnvWith(t, hub.Config{Bus: bus, PushRate: 1e6, PushBurst: 1e6})
	const room = "chat:1:2"
	var wg sync.WaitGroup
	for u := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &recorder{}
			c := e.hub.Connect(rec, fmt.Sprint(u+1), "n")
			for i := range 300 {
				jr := fmt.Sprint(i)
				rec.waitReadable()
				c.HandleText(phx.AppendMessage(nil, jr, jr, room, "phx_join", nil))
				rec.waitReadable()
				c.HandleText(phx.AppendMessage(nil, jr, jr+"l", room, "phx_leave", nil))
			}
			rec.waitReadable()
			c.HandleText(phx.AppendMessage(nil, "last", "last", room, "phx_join", nil))
		}()
	}
	wg.Wait()
	settle(t, e.hub)
	bus.mu.Lock()
	defer bus.mu.Unlock()
	if !bus.sub[room] {
		t.Fatalf("both connections joined (%d local subscribers), but the bus was last told to unsubscribe", e.hub.Subscribers(room))
	}
}

// TestQueuedRequestsPauseReads: requests waiting for a slow store pile up
// in the connection's mailbox; past its bound the connection's reads are
// paused, and resumed once the stage has drained it.
func TestQueuedRequestsPauseReads(t *testing.T) {
	st := &slowStore{Store: memstore.New(), release: make(chan struct{})}
	e := newEnvWith(t, hub.Config{Store: st, MailboxSize: 4, Workers: 1, PushRate: 1e6, PushBurst: 1e6})
	rec := &recorder{}
	c := e.hub.Connect(rec, "1", "n")
	for i := range 8 {
		ref := fmt.Sprint(i)
		c.HandleText(phx.AppendMessage(nil, ref, ref, "user:1", "phx_join", nil))
	}
	// Heartbeats are answered while the joins wait.
	c.HandleText(phx.AppendMessage(nil, "", "hb", "phoenix", "heartbeat", nil))
	rec.mu.Lock()
	paused, hb := rec.paused, len(rec.frames)
	rec.mu.Unlock()
	if paused != 1 || hb != 1 {
		t.Fatalf("paused %d times, %d frames before the store answered", paused, hb)
	}
	close(st.release)
	settle(t, e.hub)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.resumed != 1 {
		t.Fatalf("resumed %d times", rec.resumed)
	}
}

// slowStore's Unread waits for release.
type slowStore struct {
	*memstore.Store
	release chan struct{}
}

// NothingUnread sends every lobby join to Unread.
func (s *slowStore) NothingUnread(string) bool { return false }

func (s *slowStore) Unread(ctx context.Context, user string) ([]store.UnreadChat, error) {
	<-s.release
	return s.Store.Unread(ctx, user)
}

// asyncStore commits SaveAsync calls on a goroutine of its own after a
// short delay, like the batcher of the real stores.
type asyncStore struct {
	*memstore.Store
	delay time.Duration
}

func (s *asyncStore) SaveAsync(ctx context.Context, m store.NewMessage, then func(store.Message, bool, error)) bool {
	go func() {
		time.Sleep(s.delay)
		then(s.Store.Save(ctx, m))
	}()
	return true
}

// TestAsyncSaveKeepsOrder: with a store that commits asynchronously, a
// burst of messages is answered in order, delivered in order, and a
// history request sent after them sees all of them: the connection's
// requests still run one after the other.
func TestAsyncSaveKeepsOrder(t *testing.T) {
	e := newEnvWith(t, hub.Config{Store: &asyncStore{Store: memstore.New(), delay: time.Millisecond}, PushRate: 1e6, PushBurst: 1e6})
	a, b := e.connect("1"), e.connect("2")
	ja, _ := a.join("chat:1:2", nil)
	b.join("chat:1:2", nil)
	a.rec.take()
	b.rec.take()
	var refs []string
	for i := range 40 {
		a.c.HandleText(phx.AppendMessage(nil, ja, fmt.Sprint("m", i), "chat:1:2", "new_message", fmt.Appendf(nil, `{"body":"n%d"}`, i)))
		refs = append(refs, fmt.Sprint("m", i))
	}
	a.c.HandleText(phx.AppendMessage(nil, ja, "h", "chat:1:2", "history", []byte(`{}`)))
	settle(t, e.hub)
	var replies []string
	var page map[string]any
	for _, f := range a.rec.take() {
		if f.Event != "phx_reply" {
			continue
		}
		if f.Ref == "h" {
			var r struct {
				Response map[string]any `json:"response"`
			}
			if err := json.Unmarshal(f.Payload, &r); err != nil {
				t.Fatal(err)
			}
			page = r.Response
			continue
		}
		replies = append(replies, f.Ref)
	}
	if !slices.Equal(replies, refs) {
		t.Fatalf("replies in order %v, want %v", replies, refs)
	}
	if got := len(page["messages"].([]any)); got != 40 {
		t.Fatalf("history after the burst has %d messages, want 40", got)
	}
	var bodies []string
	for _, f := range events(b.rec.take(), "new_message") {
		var m map[string]any
		if err := json.Unmarshal(f.Payload, &m); err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, m["body"].(string))
	}
	for i, body := range bodies {
		if body != fmt.Sprint("n", i) {
			t.Fatalf("delivered out of order: %v", bodies)
		}
	}
	if len(bodies) != 40 {
		t.Fatalf("delivered %d of 40", len(bodies))
	}
}

// An outage in which only commands failed (a node starved of CPU timing
// out on Redis) lost nothing this node receives: its clients are not
// asked to rejoin, and joins stop catching up from the watermark.
func TestUpWithoutLossMakesNoWave(t *testing.T) {
	e := newEnvWith(t, hub.Config{ResyncDelay: time.Millisecond, ResyncSpread: time.Millisecond})
	a := e.connect("1")
	jr, _ := a.join("chat:1:2", nil)
	ids := a.post(jr, "chat:1:2", 3)
	a.rec.take()
	bh := e.hub.AsBusHandler()
	bh.Down(time.Now())
	bh.Up(hub.Loss{})
	time.Sleep(100 * time.Millisecond)
	if errs := events(a.rec.take(), "phx_error"); len(errs) != 0 {
		t.Fatalf("phx_error after an outage that lost nothing: %+v", errs)
	}
	_, resp := a.join("chat:1:2", map[string]any{"last_id": ids[2]})
	if got := resp["messages"].([]any); len(got) != 0 {
		t.Fatalf("join after a lossless outage caught up %v, want nothing after last_id", got)
	}
	// A lapsed subscription does make the wave.
	bh.Down(time.Now())
	bh.Up(hub.Loss{Received: true})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if len(events(a.rec.take(), "phx_error")) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no rejoin wave after a lapsed subscription")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Another node's loss announced while this node's bus is down is left to
// the recovery's wave; the recovery must make one even when this node's
// own subscription never lapsed (only its commands failed).
func TestAnnouncementWhileDownWavesOnLosslessRecovery(t *testing.T) {
	e := newEnvWith(t, hub.Config{ResyncDelay: time.Millisecond, ResyncSpread: time.Millisecond})
	a := e.connect("1")
	jr, _ := a.join("chat:1:2", nil)
	ids := a.post(jr, "chat:1:2", 3)
	a.rec.take()
	bh := e.hub.AsBusHandler()
	bh.Down(time.Now())
	if n := e.hub.ResyncRequested(t.Context(), int64(ids[0])-1, 0, 0); n != 0 {
		t.Fatalf("announcement while down waved %d topics at once", n)
	}
	bh.Up(hub.Loss{})
	deadline := time.Now().Add(5 * time.Second)
	for len(events(a.rec.take(), "phx_error")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no rejoin wave for the loss announced while down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, resp := a.join("chat:1:2", map[string]any{"last_id": ids[2]})
	if got := resp["messages"].([]any); len(got) != 3 {
		t.Fatalf("rejoin caught up %v, want the 3 messages after the announced watermark", got)
	}
}
