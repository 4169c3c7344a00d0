package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

// OutboxStore is a store that keeps the webhook outbox too.
type OutboxStore interface {
	store.Store
	store.Outbox
}

// RunOutbox runs the outbox contract. open must return a new empty store
// and register its Close with t.Cleanup.
func RunOutbox(t *testing.T, open func(t *testing.T) OutboxStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s OutboxStore)
	}{
		{"CoalescesPerRecipient", testOutboxCoalesces},
		{"OnlyWhenAsked", testOutboxOnlyWhenAsked},
		{"ReadCancels", testOutboxReadCancels},
		{"ReadCancelsRetry", testOutboxReadCancelsRetry},
		{"RetryAndDead", testOutboxRetryAndDead},
		{"Lease", testOutboxLease},
		{"ConcurrentClaims", testOutboxConcurrentClaims},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

const notifyAfter = 300 * time.Millisecond

func save(t *testing.T, s store.Store, from, to, body string, after time.Duration) store.Message {
	t.Helper()
	room := "chat:" + min(from, to) + ":" + max(from, to)
	m, _, err := s.Save(ctxT(t), store.NewMessage{Room: room, UserID: from, OpponentID: to, Body: body,
		ClientID: body, NotifyAfter: after})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func claim(t *testing.T, s store.Outbox, owner string, lease time.Duration) ([]store.Event, int) {
	t.Helper()
	evs, cancelled, err := s.ClaimEvents(ctxT(t), owner, lease, 100)
	if err != nil {
		t.Fatal(err)
	}
	return evs, cancelled
}

// claimDue claims until something is claimed or cancelled (the event falls
// due), failing after a few seconds.
func claimDue(t *testing.T, s store.Outbox, owner string, lease time.Duration) ([]store.Event, int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, c := claim(t, s, owner, lease)
		if len(evs) > 0 || c > 0 || time.Now().After(deadline) {
			return evs, c
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func counts(t *testing.T, s store.Outbox) map[string]int64 {
	t.Helper()
	c, err := s.EventCounts(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func finish(t *testing.T, s store.Outbox, id int64, owner string, o store.Outcome) bool {
	t.Helper()
	ok, err := s.FinishEvent(ctxT(t), id, owner, o)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func testOutboxCoalesces(t *testing.T, s OutboxStore) {
	start := time.Now()
	var sent []store.Message
	for i := range 3 {
		sent = append(sent, save(t, s, "alice", "bob", fmt.Sprint("m", i), notifyAfter))
	}
	save(t, s, "bob", "alice", "reply", notifyAfter) // another recipient, another event
	if c := counts(t, s); c[store.EventPending] != 2 {
		t.Fatalf("counts = %v, want 2 pending", c)
	}
	if evs, _ := claim(t, s, "n1", time.Minute); len(evs) != 0 {
		t.Fatalf("claimed %d events before they were due", len(evs))
	}
	evs, _ := claimDue(t, s, "n1", time.Minute)
	if time.Since(start) < notifyAfter {
		t.Errorf("claimed after %v, before notify-after %v", time.Since(start), notifyAfter)
	}
	if len(evs) != 2 {
		// Both fell due together; a slow machine may see them in two claims.
		more, _ := claimDue(t, s, "n1", time.Minute)
		evs = append(evs, more...)
	}
	var bob *store.Event
	for i := range evs {
		if evs[i].UserID == "bob" {
			bob = &evs[i]
		}
	}
	if len(evs) != 2 || bob == nil {
		t.Fatalf("claimed %+v, want one event for bob and one for alice", evs)
	}
	if bob.Type != store.EventMessageUnread || bob.State != store.EventSending || bob.Attempts != 1 {
		t.Errorf("event = %+v", bob)
	}
	if len(bob.Messages) != 3 {
		t.Fatalf("bob's event carries %d messages, want 3", len(bob.Messages))
	}
	for i, m := range bob.Messages {
		if m.ID != sent[i].ID || m.Body != sent[i].Body || m.Delivered || !m.SentAt.Equal(sent[i].SentAt) {
			t.Errorf("message %d = %+v, want %+v", i, m, sent[i])
		}
	}
	if d := bob.DueAt.Sub(sent[0].SentAt); d < notifyAfter-time.Millisecond || d > notifyAfter+time.Second {
		t.Errorf("due %v after the first message, want %v", d, notifyAfter)
	}
	// A message after the event was sealed starts the next event, which
	// carries only it.
	later := save(t, s, "alice", "bob", "later", notifyAfter)
	if c := counts(t, s); c[store.EventPending] != 1 || c[store.EventSending] != 2 {
		t.Fatalf("counts = %v, want 1 pending and 2 sending", c)
	}
	if !finish(t, s, bob.ID, "n1", store.Outcome{Kind: store.Sent}) {
		t.Fatal("FinishEvent(sent) = false for the owner")
	}
	next, _ := claimDue(t, s, "n1", time.Minute)
	if len(next) != 1 || next[0].ID == bob.ID || len(next[0].Messages) != 1 || next[0].Messages[0].ID != later.ID {
		t.Fatalf("next event = %+v, want one carrying message %d only", next, later.ID)
	}
}

func testOutboxOnlyWhenAsked(t *testing.T, s OutboxStore) {
	save(t, s, "alice", "bob", "no-notify", 0)
	if c := counts(t, s); c[store.EventPending] != 0 {
		t.Fatalf("counts = %v after a message without NotifyAfter", c)
	}
	save(t, s, "alice", "bob", "once", notifyAfter)
	evs, _ := claimDue(t, s, "n1", time.Minute)
	if len(evs) != 1 || len(evs[0].Messages) != 1 {
		t.Fatalf("claimed %+v, want one event with the one unread message after the notify request", evs)
	}
	// A retry of a stored message stores nothing and asks for nothing.
	save(t, s, "alice", "bob", "once", notifyAfter)
	if c := counts(t, s); c[store.EventPending] != 0 {
		t.Fatalf("counts = %v after a retried message", c)
	}
}

func testOutboxReadCancels(t *testing.T, s OutboxStore) {
	m := save(t, s, "alice", "bob", "read-me", notifyAfter)
	save(t, s, "alice", "bob", "read-me-too", notifyAfter)
	if _, err := s.MarkRead(ctxT(t), m.Room, "bob", m.ID+1); err != nil {
		t.Fatal(err)
	}
	// Bob is in the chat now: what he gets there asks for no event and
	// keeps none alive, read or not.
	save(t, s, "alice", "bob", "seen live", 0)
	evs, cancelled := claimDue(t, s, "n1", time.Minute)
	if len(evs) != 0 || cancelled != 1 {
		t.Fatalf("claimed %+v, cancelled %d; want nothing claimed, one cancelled", evs, cancelled)
	}
	if c := counts(t, s); c[store.EventPending]+c[store.EventSending]+c[store.EventDead] != 0 {
		t.Fatalf("counts = %v after the cancel", c)
	}
	// A partial read leaves an event with the rest.
	a := save(t, s, "alice", "bob", "a", notifyAfter)
	b := save(t, s, "alice", "bob", "b", notifyAfter)
	if _, err := s.MarkRead(ctxT(t), a.Room, "bob", a.ID); err != nil {
		t.Fatal(err)
	}
	evs, _ = claimDue(t, s, "n1", time.Minute)
	if len(evs) != 1 || len(evs[0].Messages) != 1 || evs[0].Messages[0].ID != b.ID {
		t.Fatalf("claimed %+v, want one event carrying message %d", evs, b.ID)
	}
	finish(t, s, evs[0].ID, "n1", store.Outcome{Kind: store.Sent})

	// Bob reads the message that opened an event and leaves again; the
	// next message asking for one keeps that event alive.
	c := save(t, s, "alice", "bob", "c", notifyAfter)
	if _, err := s.MarkRead(ctxT(t), c.Room, "bob", c.ID); err != nil {
		t.Fatal(err)
	}
	d := save(t, s, "alice", "bob", "d", notifyAfter)
	evs, cancelled = claimDue(t, s, "n1", time.Minute)
	if len(evs) != 1 || cancelled != 0 || len(evs[0].Messages) != 1 || evs[0].Messages[0].ID != d.ID {
		t.Fatalf("claimed %+v (cancelled %d), want one event carrying message %d", evs, cancelled, d.ID)
	}
}

func testOutboxReadCancelsRetry(t *testing.T, s OutboxStore) {
	m := save(t, s, "alice", "bob", "x", notifyAfter)
	evs, _ := claimDue(t, s, "n1", time.Minute)
	if len(evs) != 1 {
		t.Fatalf("claimed %d events", len(evs))
	}
	finish(t, s, evs[0].ID, "n1", store.Outcome{Kind: store.Retry, RetryIn: 0, Error: "HTTP 503"})
	if _, err := s.MarkRead(ctxT(t), m.Room, "bob", m.ID); err != nil {
		t.Fatal(err)
	}
	evs, cancelled := claimDue(t, s, "n1", time.Minute)
	if len(evs) != 0 || cancelled != 1 {
		t.Fatalf("retry after the read: claimed %+v, cancelled %d; want it cancelled", evs, cancelled)
	}
	// Finishing an event that a read cancelled meanwhile is not an error.
	if finish(t, s, evs0ID(evs), "n1", store.Outcome{Kind: store.Sent}) {
		t.Error("FinishEvent of a deleted event = true")
	}
}

func evs0ID(evs []store.Event) int64 {
	if len(evs) == 0 {
		return 1 << 40
	}
	return evs[0].ID
}

func testOutboxRetryAndDead(t *testing.T, s OutboxStore) {
	save(t, s, "alice", "bob", "x", notifyAfter)
	evs, _ := claimDue(t, s, "n1", time.Minute)
	if len(evs) != 1 {
		t.Fatalf("claimed %d events", len(evs))
	}
	ev := evs[0]
	if !finish(t, s, ev.ID, "n1", store.Outcome{Kind: store.Retry, RetryIn: 400 * time.Millisecond, Error: "HTTP 500"}) {
		t.Fatal("FinishEvent(retry) = false")
	}
	if again, _ := claim(t, s, "n1", time.Minute); len(again) != 0 {
		t.Fatalf("claimed %+v before RetryIn", again)
	}
	again, _ := claimDue(t, s, "n2", time.Minute)
	if len(again) != 1 || again[0].ID != ev.ID || again[0].Attempts != 2 || len(again[0].Messages) != 1 ||
		again[0].Messages[0] != ev.Messages[0] {
		t.Fatalf("retry claimed %+v, want event %d, attempt 2, the same messages", again, ev.ID)
	}
	if finish(t, s, ev.ID, "n1", store.Outcome{Kind: store.Sent}) {
		t.Fatal("the previous owner finished an event another owner holds")
	}
	if !finish(t, s, ev.ID, "n2", store.Outcome{Kind: store.Dead, Error: "HTTP 500 after 2 attempts"}) {
		t.Fatal("FinishEvent(dead) = false")
	}
	dead, err := s.DeadEvents(ctxT(t), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || dead[0].ID != ev.ID || dead[0].State != store.EventDead || dead[0].UserID != "bob" ||
		dead[0].Attempts != 2 || dead[0].LastError != "HTTP 500 after 2 attempts" || len(dead[0].Messages) != 1 {
		t.Fatalf("DeadEvents = %+v", dead)
	}
	if c := counts(t, s); c[store.EventDead] != 1 || c[store.EventSending] != 0 {
		t.Fatalf("counts = %v", c)
	}
	if evs, _ := claim(t, s, "n1", time.Minute); len(evs) != 0 {
		t.Fatalf("claimed a dead event: %+v", evs)
	}

	// Requeued, it is due at once with fresh attempts and the same body.
	if ok, err := s.RequeueEvent(ctxT(t), ev.ID); err != nil || !ok {
		t.Fatalf("RequeueEvent = %v, %v", ok, err)
	}
	if ok, err := s.RequeueEvent(ctxT(t), ev.ID); err != nil || ok {
		t.Fatalf("RequeueEvent of an event no longer dead = %v, %v", ok, err)
	}
	if ok, err := s.RequeueEvent(ctxT(t), ev.ID+1000); err != nil || ok {
		t.Fatalf("RequeueEvent of an unknown id = %v, %v", ok, err)
	}
	back, _ := claimDue(t, s, "n3", time.Minute)
	if len(back) != 1 || back[0].ID != ev.ID || back[0].Attempts != 1 || back[0].Messages[0] != ev.Messages[0] {
		t.Fatalf("requeued claim = %+v", back)
	}
	if dead, _ := s.DeadEvents(ctxT(t), 10); len(dead) != 0 {
		t.Fatalf("DeadEvents after the requeue = %+v", dead)
	}
}

func testOutboxLease(t *testing.T, s OutboxStore) {
	save(t, s, "alice", "bob", "x", notifyAfter)
	evs, _ := claimDue(t, s, "a", 500*time.Millisecond)
	if len(evs) != 1 {
		t.Fatalf("claimed %d events", len(evs))
	}
	if other, _ := claim(t, s, "b", time.Minute); len(other) != 0 {
		t.Fatalf("b claimed %+v while a's lease runs", other)
	}
	// a dies; once its lease ends b gets the event, with the same messages.
	other, _ := claimDue(t, s, "b", time.Minute)
	if len(other) != 1 || other[0].ID != evs[0].ID || other[0].Attempts != 2 || other[0].Messages[0] != evs[0].Messages[0] {
		t.Fatalf("b claimed %+v after a's lease", other)
	}
	if finish(t, s, evs[0].ID, "a", store.Outcome{Kind: store.Sent}) {
		t.Error("a finished the event after losing its lease")
	}
	if !finish(t, s, evs[0].ID, "b", store.Outcome{Kind: store.Sent}) {
		t.Error("b could not finish its claim")
	}
}

func testOutboxConcurrentClaims(t *testing.T, s OutboxStore) {
	const users = 40
	for i := range users {
		save(t, s, "alice", fmt.Sprint("u", i), fmt.Sprint("m", i), notifyAfter)
	}
	time.Sleep(notifyAfter)
	var (
		mu  sync.Mutex
		got = map[int64]int{}
		wg  sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for w := range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				evs, _, err := s.ClaimEvents(ctx, fmt.Sprint("w", w), time.Minute, 3)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, e := range evs {
					got[e.ID]++
				}
				n := len(got)
				mu.Unlock()
				if n == users {
					return
				}
			}
		})
	}
	wg.Wait()
	if len(got) != users {
		t.Fatalf("claimed %d distinct events, want %d", len(got), users)
	}
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %d claimed %d times", id, n)
		}
	}
}
