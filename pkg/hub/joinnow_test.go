package hub_test

import (
	"context"
	"testing"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/memstore"
)

// stuckStore's History waits for release, so one chat join occupies a
// request-stage worker for as long as the test wants.
type stuckStore struct {
	*memstore.Store
	entered chan struct{}
	release chan struct{}
}

func (s *stuckStore) History(ctx context.Context, room string, before int64, limit int) ([]store.Message, error) {
	s.entered <- struct{}{}
	<-s.release
	return s.Store.History(ctx, room, before, limit)
}

func newStuck(t *testing.T) (*stuckStore, *env) {
	t.Helper()
	st := &stuckStore{Store: memstore.New(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	t.Cleanup(func() { st.Close() })
	e := newEnvWith(t, hub.Config{Store: st, Workers: 1, PushRate: 1e6, PushBurst: 1e6})
	t.Cleanup(func() {
		select {
		case <-st.release:
		default:
			close(st.release)
		}
	})
	return st, e
}

// unreadFor3 stores a message from user 4 to user 3, unread.
func unreadFor3(t *testing.T, st store.Store) {
	t.Helper()
	if _, _, err := st.Save(context.Background(), store.NewMessage{Room: "chat:3:4", UserID: "4", OpponentID: "3", Body: "hi"}); err != nil {
		t.Fatal(err)
	}
}

// joinLobby3 sends user 3's lobby join, ref 7, as phoenix.js does.
func joinLobby3(b *client) {
	b.c.HandleText(phx.AppendMessage(nil, "7", "7", "user:3", "phx_join", []byte(`{}`)))
}

// occupy sends a chat join that holds the stage's only worker.
func occupy(t *testing.T, st *stuckStore, e *env) {
	t.Helper()
	a := e.connect("1")
	a.c.HandleText(phx.AppendMessage(nil, "1", "1", "chat:1:2", "phx_join", []byte(`{}`)))
	<-st.entered
}

// TestLobbyJoinAnsweredOnTheEventLoop: the lobby join of a user with
// nothing unread, on a store that knows so from memory, is answered
// during HandleText itself: it waits neither for a stage worker (here all
// busy with another connection's slow chat join) nor for the store.
func TestLobbyJoinAnsweredOnTheEventLoop(t *testing.T) {
	st, e := newStuck(t)
	occupy(t, st, e)

	b := e.connect("3")
	joinLobby3(b)
	fs := b.rec.take()
	if len(fs) != 1 || fs[0].Event != "phx_reply" || string(fs[0].Payload) != `{"status":"ok","response":{"unread":[]}}` {
		t.Fatalf("lobby join with the stage busy: got %d frames %+v, want its ok reply at once", len(fs), fs)
	}
	if n := e.hub.Subscribers("user:3"); n != 1 {
		t.Fatalf("user:3 has %d local subscribers, want 1", n)
	}
	if ok, _ := e.hub.Presence().Present(context.Background(), "user:3", "3"); !ok {
		t.Fatal("user 3 not tracked in their lobby after the join")
	}
	// The close leaves the lobby's presence at once too, the stage still
	// busy: nothing of this client's is queued, so its track is done.
	b.c.Closed()
	if ok, _ := e.hub.Presence().Present(context.Background(), "user:3", "3"); ok {
		t.Fatal("user 3 still tracked after the connection closed, with the stage busy")
	}
	if n := e.hub.Subscribers("user:3"); n != 0 {
		t.Fatalf("user:3 has %d local subscribers after the close", n)
	}
	close(st.release)
	settle(t, e.hub)
}

// TestLobbyLeftAfterItsStageJoin: a lobby joined on the stage and closed
// while the client still has a request there is left after that request,
// not before its track.
func TestLobbyLeftAfterItsStageJoin(t *testing.T) {
	st, e := newStuck(t)
	unreadFor3(t, st)
	b := e.connect("3")
	joinLobby3(b)
	settle(t, e.hub)
	b.replyTo("7", "ok")
	// A chat join holds the stage with the client's own request queued.
	b.c.HandleText(phx.AppendMessage(nil, "8", "8", "chat:3:4", "phx_join", []byte(`{}`)))
	<-st.entered
	b.c.Closed()
	close(st.release)
	settle(t, e.hub)
	if ok, _ := e.hub.Presence().Present(context.Background(), "user:3", "3"); ok {
		t.Fatal("user 3 still tracked in their lobby after the connection closed")
	}
	if ok, _ := e.hub.Presence().Present(context.Background(), "chat:3:4", "3"); ok {
		t.Fatal("user 3 still tracked in the chat after the connection closed")
	}
}

// unreadLobbyJoinBehindBusyStage sends the lobby join of user 3, who has
// an unread chat, while another connection holds the stage's only worker.
func unreadLobbyJoinBehindBusyStage(t *testing.T) (*stuckStore, *env, *client) {
	t.Helper()
	st, e := newStuck(t)
	unreadFor3(t, st)
	occupy(t, st, e)
	b := e.connect("3")
	joinLobby3(b)
	return st, e, b
}

// TestLobbyJoinWithUnreadGoesToStage: a user with unread chats is
// subscribed on the event loop but answered from the store on the stage,
// with the unread chats, in order behind the busy worker.
func TestLobbyJoinWithUnreadGoesToStage(t *testing.T) {
	st, e, b := unreadLobbyJoinBehindBusyStage(t)
	if fs := b.rec.take(); len(fs) != 0 {
		t.Fatalf("a lobby join with unread chats was answered before the store was read: %+v", fs)
	}
	if n := e.hub.Subscribers("user:3"); n != 1 {
		t.Fatalf("user:3 has %d local subscribers, want 1 (subscribed before the read)", n)
	}
	close(st.release)
	settle(t, e.hub)
	r := b.replyTo("7", "ok")
	if u, _ := r["unread"].([]any); len(u) != 1 {
		t.Fatalf("lobby reply %v, want the one unread chat", r)
	}
}

// TestLobbyJoinClosedBeforeStage: a connection that closes while the rest
// of its lobby join waits for the stage leaves no subscription behind.
func TestLobbyJoinClosedBeforeStage(t *testing.T) {
	st, e, b := unreadLobbyJoinBehindBusyStage(t)
	b.c.Closed()
	close(st.release)
	settle(t, e.hub)
	if n := e.hub.Subscribers("user:3"); n != 0 {
		t.Fatalf("user:3 has %d local subscribers after the connection closed", n)
	}
	if fs := events(b.rec.take(), "phx_reply"); len(fs) != 0 {
		t.Fatalf("a closed connection was answered: %+v", fs)
	}
}

// heldPresence is in-process presence whose Track waits for release, so a
// test can close a connection while its join is between the reply and the
// track.
type heldPresence struct {
	*hub.MemoryPresence
	entered chan struct{}
	release chan struct{}
}

func (p *heldPresence) Track(ctx context.Context, topic, key string, meta hub.Meta) error {
	p.entered <- struct{}{}
	<-p.release
	return p.MemoryPresence.Track(ctx, topic, key, meta)
}

// TestCloseDuringStageJoinTrack: a close that comes while a lobby join on
// the stage has answered but not tracked yet leaves no presence behind:
// the leave waits for the track instead of running first.
func TestCloseDuringStageJoinTrack(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	unreadFor3(t, st)
	pres := &heldPresence{MemoryPresence: hub.NewMemoryPresence(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	e := newEnvWith(t, hub.Config{Store: st, Presence: pres, PushRate: 1e6, PushBurst: 1e6})
	b := e.connect("3")
	joinLobby3(b)
	<-pres.entered // answered (unread: on the stage), now tracking
	b.c.Closed()
	close(pres.release)
	settle(t, e.hub)
	if ok, _ := pres.Present(context.Background(), "user:3", "3"); ok {
		t.Fatal("user 3 still tracked in their lobby after the connection closed during the join's track")
	}
}
