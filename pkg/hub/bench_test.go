package hub

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store/memstore"
	"github.com/elchat/elchat/pkg/topic"
)

// discard is a Conn that drops frames: the benchmarks measure the hub, not
// sockets.
type discard struct{}

func (discard) Send([]byte) error { return nil }
func (discard) Close(int, string) {}
func (discard) PauseReads()       {}
func (discard) ResumeReads()      {}

var payload = []byte(`{"id":12345,"room":"chat:1:2","user_id":"1","opponent_id":"2","body":"hello there, how are you doing today?","client_id":"c-1","sent_at":"2026-11-27T10:00:00.123456Z","is_delivered":false}`)

// BenchmarkBroadcast encodes a frame once and hands it to n local
// subscribers: allocations must not grow with n.
func BenchmarkBroadcast(b *testing.B) {
	for _, n := range []int{1, 2, 100, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			h := New(Config{})
			for i := range n {
				h.subscribe("chat:1:2", &Client{hub: h, conn: discard{}, user: fmt.Sprint(i)})
			}
			b.ReportAllocs()
			for b.Loop() {
				h.Broadcast("chat:1:2", "new_message", payload)
			}
		})
	}
}

// BenchmarkRoute is the path of a stored chat message from the sender to
// the recipient (broadcast to the chat, presence check, lobby
// notification when the recipient is elsewhere), the store excluded.
func BenchmarkRoute(b *testing.B) {
	for _, present := range []bool{true, false} {
		b.Run(fmt.Sprintf("recipient_in_chat=%v", present), func(b *testing.B) {
			h := New(Config{})
			t, _ := topic.Parse("chat:1:2")
			sender := &Client{hub: h, conn: discard{}, user: "1"}
			recipient := &Client{hub: h, conn: discard{}, user: "2"}
			h.subscribe("chat:1:2", sender)
			h.subscribe("user:2", recipient)
			if present {
				h.subscribe("chat:1:2", recipient)
				h.cfg.Presence.Track(b.Context(), "chat:1:2", "2", Meta{Ref: "r"}) //nolint:errcheck
			}
			b.ReportAllocs()
			for b.Loop() {
				h.deliver(t, "1", payload, sender)
			}
		})
	}
}

func BenchmarkPresenceDiff(b *testing.B) {
	m := Meta{Ref: "GOviyct85Uyk0zNl", Name: "Alice", OnlineAt: 1795778232}
	b.ReportAllocs()
	for b.Loop() {
		encodeDiff(map[string][]Meta{"1": {m}}, nil)
	}
}

func BenchmarkPresenceState(b *testing.B) {
	state := map[string][]Meta{
		"1": {{Ref: "GOviyct85Uyk0zNl", Name: "Alice", OnlineAt: 1795778232}},
		"2": {{Ref: "GOviyct85Uyk0zNm", Name: "Bob", OnlineAt: 1795778232}, {Ref: "GOviyct85Uyk0zNn", Name: "Bob", OnlineAt: 1795778233}},
	}
	b.ReportAllocs()
	for b.Loop() {
		encodeState(state)
	}
}

// BenchmarkConnectLobbyJoin is a connection's hub work from Connect
// through its answered lobby join to Closed, with a store that knows from
// memory that nobody has anything unread: the hub's share of a connect,
// hand-offs included. 1,000 users, so the maps are not all cache-hot.
func BenchmarkConnectLobbyJoin(b *testing.B) {
	st := memstore.New()
	defer st.Close()
	h := New(Config{Store: st, PushRate: 1e6, PushBurst: 1e6})
	defer h.Close()
	const users = 1000
	frames := make([][]byte, users)
	for u := range users {
		frames[u] = phx.AppendMessage(nil, "3", "3", topic.LobbyName(fmt.Sprint(u)), phx.EventJoin, []byte(`{}`))
	}
	conn := make(replies, 1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		u := i % users
		i++
		c := h.Connect(conn, fmt.Sprint(u), "n")
		c.HandleText(frames[u])
		<-conn // the join's reply
		c.Closed()
	}
	if err := h.Drain(b.Context()); err != nil {
		b.Fatal(err)
	}
}

// replies signals each phx_reply frame sent to it and drops the rest
// (broadcasts, presence): a socket whose replies a benchmark waits for.
type replies chan struct{}

func (r replies) Send(f []byte) error {
	if bytes.Contains(f, []byte(`"phx_reply"`)) {
		r <- struct{}{}
	}
	return nil
}
func (replies) Close(int, string) {}
func (replies) PauseReads()       {}
func (replies) ResumeReads()      {}

// BenchmarkChatMessage is one new_message through the hub from the
// sender's frame to its acknowledgement, with the store in memory: the
// payload read, the save, the broadcast to both members of the chat and
// the reply. Its allocations are what a stored message costs the GC.
func BenchmarkChatMessage(b *testing.B) {
	st := memstore.New()
	defer st.Close()
	h := New(Config{Store: st, PushRate: 1e6, PushBurst: 1e9})
	defer h.Close()
	sc, rc := make(replies, 1), make(replies, 1)
	s, r := h.Connect(sc, "1", "one"), h.Connect(rc, "2", "two")
	s.HandleText(phx.AppendMessage(nil, "1", "1", "chat:1:2", phx.EventJoin, []byte(`{}`)))
	<-sc
	r.HandleText(phx.AppendMessage(nil, "1", "1", "chat:1:2", phx.EventJoin, []byte(`{}`)))
	<-rc
	frame := phx.AppendMessage(nil, "1", "2", "chat:1:2", "new_message", []byte(`{"body":"hello there, how are you doing today?"}`))
	b.ReportAllocs()
	for b.Loop() {
		s.HandleText(frame)
		<-sc
	}
	b.StopTimer()
	s.Closed()
	r.Closed()
	if err := h.Drain(b.Context()); err != nil {
		b.Fatal(err)
	}
}
