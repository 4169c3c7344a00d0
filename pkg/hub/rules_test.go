package hub_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/elchat/elchat/pkg/auth"
	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/store/memstore"
)

// cluster starts n hubs sharing one store, bus and presence table.
func cluster(t *testing.T, n int, cfg hub.Config) []*env {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	bus, pres := hub.NewLocalBus(), hub.NewMemoryPresence()
	var out []*env
	for range n {
		c := cfg
		c.Store, c.Bus, c.Presence = st, bus.Node(), pres
		if c.PushRate == 0 {
			c.PushRate, c.PushBurst = 1e6, 1e6
		}
		h := hub.New(c)
		t.Cleanup(h.Close)
		go h.Run(t.Context()) //nolint:errcheck
		out = append(out, &env{t: t, store: st, hub: h})
	}
	time.Sleep(20 * time.Millisecond) // let Run register the delivery callbacks
	return out
}

// reason returns the reason of an error reply to ref.
func (c *client) errorReason(ref string) string {
	c.t.Helper()
	r := c.replyTo(ref, "error")
	s, _ := r["reason"].(string)
	return s
}

func payloadOf(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBlockAcrossNodes(t *testing.T) {
	nodes := cluster(t, 2, hub.Config{})
	a := nodes[0].connect("1") // the blocker
	b := nodes[1].connect("2")
	alj, _ := a.join("user:1", nil)
	ajr, _ := a.join("chat:1:2", nil)
	bjr, _ := b.join("chat:1:2", nil)
	a.rec.take()
	b.rec.take()
	ref := b.send(bjr, "chat:1:2", "new_message", map[string]any{"body": "before"})
	b.replyTo(ref, "ok")
	a.rec.take()

	ref = a.send(alj, "user:1", "block", map[string]any{"user_id": "2"})
	a.replyTo(ref, "ok")
	// Typing consults the cache only: the block's entry is read again in
	// the background on both nodes before any message reloads it.
	time.Sleep(50 * time.Millisecond)
	b.send(bjr, "chat:1:2", "typing", map[string]any{})
	time.Sleep(20 * time.Millisecond)
	if got := events(a.rec.take(), "typing"); len(got) != 0 {
		t.Fatalf("blocker saw typing right after the block: %+v", got)
	}
	// The other node applies the block at once: no stale cache.
	ref = b.send(bjr, "chat:1:2", "new_message", map[string]any{"body": "blocked"})
	if got := b.errorReason(ref); got != "blocked by the recipient" {
		t.Fatalf("send while blocked: %q", got)
	}
	ref = a.send(ajr, "chat:1:2", "new_message", map[string]any{"body": "to the blocked"})
	if got := a.errorReason(ref); got != "you have blocked this user" {
		t.Fatalf("blocker's send: %q", got)
	}
	// No typing either way.
	a.send(ajr, "chat:1:2", "typing", map[string]any{})
	b.send(bjr, "chat:1:2", "typing", map[string]any{})
	time.Sleep(20 * time.Millisecond)
	if got := events(b.rec.take(), "typing"); len(got) != 0 {
		t.Fatalf("blocked user saw typing: %+v", got)
	}
	if got := events(a.rec.take(), "typing"); len(got) != 0 {
		t.Fatalf("blocker saw typing: %+v", got)
	}
	// The blocker's presence does not reach the blocked user.
	a2 := nodes[0].connect("1")
	a2.join("chat:1:2", nil)
	time.Sleep(20 * time.Millisecond)
	for _, f := range events(b.rec.take(), "presence_diff") {
		if strings.Contains(string(f.Payload), `"1"`) {
			t.Fatalf("blocked user saw the blocker's presence: %s", f.Payload)
		}
	}
	b2 := nodes[1].connect("2")
	b2.join("chat:1:2", nil)
	for _, f := range events(b2.rec.take(), "presence_state") {
		if strings.Contains(string(f.Payload), `"1":`) {
			t.Fatalf("presence_state leaks the blocker: %s", f.Payload)
		}
	}
	// The blocker's lobby lists no unread chat with the blocked user.
	a3 := nodes[1].connect("1")
	_, lobby := a3.join("user:1", nil)
	if u := lobby["unread"].([]any); len(u) != 0 {
		t.Fatalf("lobby lists the blocked user's chat: %v", lobby)
	}

	ref = a.send(alj, "user:1", "unblock", map[string]any{"user_id": 2}) // a number is its decimal form
	a.replyTo(ref, "ok")
	ref = b.send(bjr, "chat:1:2", "new_message", map[string]any{"body": "after"})
	b.replyTo(ref, "ok")
	a4 := nodes[1].connect("1")
	if _, lobby := a4.join("user:1", nil); len(lobby["unread"].([]any)) != 1 {
		t.Fatalf("lobby after unblock: %v", lobby)
	}

	// Bad input.
	for _, p := range []map[string]any{{"user_id": "1"}, {"user_id": ""}, {"user_id": "a:b"}, {}, {"user_id": true}, {"user_id": 1}} {
		ref = a.send(alj, "user:1", "block", p)
		if got := a.errorReason(ref); got != hub.ErrBadUser.Error() {
			t.Errorf("block %v: %q", p, got)
		}
	}
	ref = a.send(ajr, "chat:1:2", "block", map[string]any{"user_id": "2"})
	if got := a.errorReason(ref); got != "unknown event" {
		t.Errorf("block in a chat: %q", got)
	}
}

func TestBanAcrossNodes(t *testing.T) {
	nodes := cluster(t, 2, hub.Config{})
	a := nodes[0].connect("9")
	b := nodes[1].connect("9")
	other := nodes[1].connect("2")
	if err := nodes[0].hub.Ban("9", time.Now().Add(300*time.Millisecond), "spam"); err != nil {
		t.Fatal(err)
	}
	for i, c := range []*client{a, b} {
		if !waitFor(func() bool {
			c.rec.mu.Lock()
			defer c.rec.mu.Unlock()
			return c.rec.closed == closecode.Banned
		}) {
			t.Fatalf("socket %d not closed: %d %q", i, c.rec.closed, c.rec.reason)
		}
		if c.rec.reason != "banned: spam" {
			t.Errorf("socket %d close reason %q", i, c.rec.reason)
		}
	}
	if other.rec.closed != 0 {
		t.Errorf("another user's socket closed: %d", other.rec.closed)
	}
	for _, e := range nodes {
		if reason, banned := e.hub.Banned("9"); !banned || reason != "banned: spam" {
			t.Errorf("Banned = %q, %v", reason, banned)
		}
	}
	// A socket that slips in during the ban is closed at once.
	late := nodes[1].connect("9")
	if late.rec.closed != closecode.Banned {
		t.Errorf("connect while banned: closed %d", late.rec.closed)
	}
	time.Sleep(350 * time.Millisecond)
	for _, e := range nodes {
		if _, banned := e.hub.Banned("9"); banned {
			t.Error("ban outlived its until")
		}
	}
	// A ban for good, lifted on every node.
	if err := nodes[1].hub.Ban("9", time.Time{}, ""); err != nil {
		t.Fatal(err)
	}
	if !waitFor(func() bool { _, b := nodes[0].hub.Banned("9"); return b }) {
		t.Fatal("ban not seen by the other node")
	}
	if err := nodes[0].hub.Unban("9"); err != nil {
		t.Fatal(err)
	}
	if !waitFor(func() bool { _, b := nodes[1].hub.Banned("9"); return !b }) {
		t.Fatal("unban not seen by the other node")
	}
	if err := nodes[0].hub.Ban("9", time.Now().Add(-time.Second), ""); err == nil {
		t.Error("a ban in the past was accepted")
	}
}

func waitFor(cond func() bool) bool {
	for range 200 {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

var grantSecret = []byte("hub-test-grant-secret-0123456789")

func TestGrantedPolicy(t *testing.T) {
	nodes := cluster(t, 2, hub.Config{Grants: auth.NewVerifier(grantSecret)})
	grant := func(user, peer string, ttl time.Duration, secret []byte) string {
		g, err := auth.MintGrant(secret, user, peer, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	a := nodes[0].connect("1")
	expired, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "1", "peer": "2", "exp": time.Now().Add(-time.Minute).Unix(),
	}).SignedString(grantSecret)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		params any
		want   string
	}{
		{"without", nil, "grant required"},
		{"forged", map[string]any{"grant": grant("1", "2", time.Hour, []byte("another-secret-0123456789abcdef"))}, "grant has an invalid signature"},
		{"another pair", map[string]any{"grant": grant("1", "3", time.Hour, grantSecret)}, "grant is for another chat"},
		{"another user", map[string]any{"grant": grant("2", "1", time.Hour, grantSecret)}, "grant is for another chat"},
		{"garbage", map[string]any{"grant": "x.y.z"}, "grant is malformed"},
	} {
		ref := a.send("=", "chat:1:2", "phx_join", tc.params)
		if got := a.errorReason(ref); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	ref := a.send("=", "chat:1:2", "phx_join", map[string]any{"grant": expired})
	if got := a.errorReason(ref); got != "grant expired" {
		t.Errorf("expired: %q", got)
	}
	// The other side cannot open it first without a grant.
	b := nodes[1].connect("2")
	ref = b.send("=", "chat:1:2", "phx_join", nil)
	if got := b.errorReason(ref); got != "grant required" {
		t.Errorf("other side before: %q", got)
	}
	a.join("chat:1:2", map[string]any{"grant": grant("1", "2", time.Hour, grantSecret)})
	// Now both sides join without one, on any node, for good.
	bjr, _ := b.join("chat:1:2", nil)
	ref = b.send(bjr, "chat:1:2", "new_message", map[string]any{"body": "answer"})
	b.replyTo(ref, "ok")
	nodes[0].connect("1").join("chat:1:2", nil)
	// A rejoin of the opened chat with a stale grant in its params is let in.
	nodes[1].connect("1").join("chat:1:2", map[string]any{"grant": expired})
	// Lobbies need no grant.
	nodes[0].connect("3").join("user:3", nil)
}
