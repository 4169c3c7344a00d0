// Package storetest is the contract every store.Store implementation must
// pass. Each implementation's tests call Run with a constructor that returns a
// fresh, empty store backed by a real database.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

// BatchSaver is implemented by stores that expose their batch write; Run then
// also checks dedup inside one explicit batch, which Save alone can only
// provoke by chance.
type BatchSaver interface {
	SaveBatch(ctx context.Context, batch []store.NewMessage) ([]store.SaveResult, error)
}

// Run runs the suite. open must return a new empty store and register its
// Close with t.Cleanup; Close must tolerate being called twice, since some
// subtests close the store themselves.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"SaveReturnsFields", testSaveReturnsFields},
		{"IDsIncrease", testIDsIncrease},
		{"IdempotentSequential", testIdempotentSequential},
		{"IdempotentConcurrent", testIdempotentConcurrent},
		{"IdempotentInOneBatch", testIdempotentInOneBatch},
		{"ClientIDReusedWithOtherBody", testClientIDReusedWithOtherBody},
		{"ClientIDReusedConcurrent", testClientIDReusedConcurrent},
		{"ClientIDScopedToUser", testClientIDScopedToUser},
		{"ClientIDScopedToRoom", testClientIDScopedToRoom},
		{"ClientIDScopedToRoomConcurrent", testClientIDScopedToRoomConcurrent},
		{"EmptyClientIDNeverDedups", testEmptyClientIDNeverDedups},
		{"HistoryPaging", testHistoryPaging},
		{"HistoryLimits", testHistoryLimits},
		{"Since", testSince},
		{"MarkRead", testMarkRead},
		{"Unread", testUnread},
		{"NothingUnread", testNothingUnread},
		{"ConcurrentSaves", testConcurrentSaves},
		{"VerbatimBodies", testVerbatimBodies},
		{"InvalidInput", testInvalidInput},
		{"ContextCancel", testContextCancel},
		{"CloseThenSave", testCloseThenSave},
		{"Ping", testPing},
		{"LastID", testLastID},
	}
	tests = append(tests, moderationTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustSave(t *testing.T, s store.Store, m store.NewMessage) store.Message {
	t.Helper()
	msg, created, err := s.Save(ctxT(t), m)
	if err != nil {
		t.Fatalf("Save(%+v): %v", m, err)
	}
	if !created {
		t.Fatalf("Save(%+v): created = false for a new message", m)
	}
	return msg
}

func since(t *testing.T, s store.Store, room string) []store.Message {
	t.Helper()
	msgs, err := s.Since(ctxT(t), room, 0, store.MaxPage)
	if err != nil {
		t.Fatalf("Since(%q): %v", room, err)
	}
	return msgs
}

func msg(room, from, to, body, clientID string) store.NewMessage {
	return store.NewMessage{Room: room, UserID: from, OpponentID: to, Body: body, ClientID: clientID}
}

func ids(msgs []store.Message) []int64 {
	out := make([]int64, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

func testSaveReturnsFields(t *testing.T, s store.Store) {
	before := time.Now().Add(-2 * time.Second)
	got := mustSave(t, s, msg("r1", "alice", "bob", "hello", "c-1"))
	after := time.Now().Add(2 * time.Second)

	if got.ID <= 0 {
		t.Errorf("ID = %d, want > 0", got.ID)
	}
	want := store.Message{ID: got.ID, Room: "r1", UserID: "alice", OpponentID: "bob",
		Body: "hello", ClientID: "c-1", SentAt: got.SentAt, Seq: got.Seq}
	if got.Seq <= 0 {
		t.Errorf("Seq = %d, want > 0", got.Seq)
	}
	if got != want {
		t.Errorf("Save = %+v, want %+v", got, want)
	}
	if got.SentAt.Location() != time.UTC {
		t.Errorf("SentAt location = %v, want UTC", got.SentAt.Location())
	}
	if got.SentAt.Nanosecond()%1000 != 0 {
		t.Errorf("SentAt %v has sub-microsecond digits", got.SentAt)
	}
	if got.SentAt.Before(before) || got.SentAt.After(after) {
		t.Errorf("SentAt = %v, want between %v and %v", got.SentAt, before, after)
	}

	// What comes back from reads must be exactly what Save returned,
	// including the time's location and precision.
	hist, err := s.History(ctxT(t), "r1", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 1 || hist[0] != got {
		t.Errorf("History = %+v, want [%+v]", hist, got)
	}
	noClient := mustSave(t, s, msg("r1", "alice", "bob", "", ""))
	if noClient.ClientID != "" || noClient.Body != "" {
		t.Errorf("Save without client id/body = %+v", noClient)
	}
}

func testIDsIncrease(t *testing.T, s store.Store) {
	var last int64
	for i := range 20 {
		room := fmt.Sprintf("room-%d", i%3)
		m := mustSave(t, s, msg(room, "alice", "bob", fmt.Sprint(i), ""))
		if m.ID <= last {
			t.Fatalf("message %d got ID %d after %d", i, m.ID, last)
		}
		last = m.ID
	}
}

func testIdempotentSequential(t *testing.T, s store.Store) {
	first := mustSave(t, s, msg("r", "alice", "bob", "original", "dup-1"))
	if _, err := s.MarkRead(ctxT(t), "r", "bob", first.ID); err != nil {
		t.Fatal(err)
	}
	first.Delivered = true // the retry sees the message as it is stored now
	again, created, err := s.Save(ctxT(t), msg("r", "alice", "bob", "original", "dup-1"))
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("retry reported created = true")
	}
	if again != first {
		t.Errorf("retry = %+v, want original %+v", again, first)
	}
	if got := since(t, s, "r"); len(got) != 1 {
		t.Errorf("stored %d rows, want 1", len(got))
	}
}

func testIdempotentConcurrent(t *testing.T, s store.Store) {
	const n = 32
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]store.Message, n)
		created = make([]bool, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], created[i], errs[i] = s.Save(context.Background(), msg("r", "alice", "bob", "hi", "same"))
		})
	}
	close(start)
	wg.Wait()
	nCreated := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("save %d: %v", i, errs[i])
		}
		if created[i] {
			nCreated++
		}
		if results[i] != results[0] {
			t.Errorf("save %d = %+v, want %+v", i, results[i], results[0])
		}
	}
	if nCreated != 1 {
		t.Errorf("%d saves reported created, want exactly 1", nCreated)
	}
	if got := since(t, s, "r"); len(got) != 1 {
		t.Errorf("stored %d rows, want 1", len(got))
	}
}

func testIdempotentInOneBatch(t *testing.T, s store.Store) {
	bs, ok := s.(BatchSaver)
	if !ok {
		t.Skip("store does not expose SaveBatch")
	}
	pre := mustSave(t, s, msg("r", "carol", "bob", "earlier", "old"))
	batch := []store.NewMessage{
		msg("r", "alice", "bob", "one", "x"),
		msg("r", "alice", "bob", "one", "x"),       // retry: folded into 0
		msg("r", "alice", "bob", "one again", "x"), // reused id: refused
		msg("r", "bob", "alice", "bob's x", "x"),
		msg("r2", "alice", "bob", "one", "x"), // same id, other room
		msg("r", "alice", "bob", "no id", ""),
		msg("r", "alice", "bob", "no id", ""),
		msg("r", "carol", "bob", "earlier", "old"),           // retry of pre
		msg("r", "carol", "bob", "not what was sent", "old"), // reused id of pre
	}
	res, err := bs.SaveBatch(ctxT(t), batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(batch) {
		t.Fatalf("got %d results for %d messages", len(res), len(batch))
	}
	wantCreated := []bool{true, false, false, true, true, true, true, false, false}
	wantReused := []bool{false, false, true, false, false, false, false, false, true}
	for i, r := range res {
		if r.Created != wantCreated[i] {
			t.Errorf("result %d created = %v, want %v", i, r.Created, wantCreated[i])
		}
		if reused := errors.Is(r.Err, store.ErrClientIDReused); reused != wantReused[i] || (r.Err != nil && !reused) {
			t.Errorf("result %d err = %v, want ErrClientIDReused: %v", i, r.Err, wantReused[i])
		}
		if r.Err != nil && r.Msg != (store.Message{}) {
			t.Errorf("refused result %d carries a message: %+v", i, r.Msg)
		}
	}
	if res[0].Msg != res[1].Msg || res[0].Msg.Body != "one" {
		t.Errorf("in-batch duplicate: %+v vs %+v", res[0].Msg, res[1].Msg)
	}
	if res[3].Msg.ID == res[0].Msg.ID || res[4].Msg.ID == res[0].Msg.ID || res[5].Msg.ID == res[6].Msg.ID {
		t.Errorf("distinct messages share an ID: %v", res)
	}
	if res[4].Msg.Room != "r2" {
		t.Errorf("same client id in another room = %+v, want a message of r2", res[4].Msg)
	}
	if res[7].Msg != pre {
		t.Errorf("retry of committed message = %+v, want %+v", res[7].Msg, pre)
	}
	if got := since(t, s, "r"); len(got) != 5 {
		t.Errorf("stored %d rows in r, want 5: %+v", len(got), got)
	}
	if got := since(t, s, "r2"); len(got) != 1 {
		t.Errorf("stored %d rows in r2, want 1: %+v", len(got), got)
	}
}

// A retry must carry what was sent: the same key with another body is a
// client reusing an id, and answering it with the stored message would show
// the sender a message it did not write.
func testClientIDReusedWithOtherBody(t *testing.T, s store.Store) {
	first := mustSave(t, s, msg("r", "alice", "bob", "original", "dup-1"))
	got, created, err := s.Save(ctxT(t), msg("r", "alice", "bob", "something else", "dup-1"))
	if !errors.Is(err, store.ErrClientIDReused) {
		t.Fatalf("Save with a reused client id = %+v, %v, %v; want ErrClientIDReused", got, created, err)
	}
	if !errors.Is(err, store.ErrInvalid) || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("ErrClientIDReused = %v: want it to be ErrInvalid and not ErrUnavailable", err)
	}
	if created || got != (store.Message{}) {
		t.Errorf("refused Save returned %+v, created %v", got, created)
	}
	if rows := since(t, s, "r"); len(rows) != 1 || rows[0] != first {
		t.Errorf("room holds %+v, want only %+v", rows, first)
	}
	// The refusal changes nothing: a true retry still gets the original.
	again, created, err := s.Save(ctxT(t), msg("r", "alice", "bob", "original", "dup-1"))
	if err != nil || created || again != first {
		t.Errorf("retry after a refusal = %+v, %v, %v; want %+v", again, created, err, first)
	}
}

// Concurrent saves of one key with two bodies: one body is stored, its
// senders all get that message, the others are refused.
func testClientIDReusedConcurrent(t *testing.T, s store.Store) {
	const n = 32
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]store.Message, n)
		created = make([]bool, n)
		errs    = make([]error, n)
	)
	body := func(i int) string { return fmt.Sprint("body-", i%2) }
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], created[i], errs[i] = s.Save(context.Background(), msg("r", "alice", "bob", body(i), "same"))
		})
	}
	close(start)
	wg.Wait()
	rows := since(t, s, "r")
	if len(rows) != 1 {
		t.Fatalf("stored %+v, want one row", rows)
	}
	nCreated := 0
	for i := range n {
		switch {
		case body(i) == rows[0].Body:
			if errs[i] != nil || results[i] != rows[0] {
				t.Errorf("save %d with the stored body = %+v, %v; want %+v", i, results[i], errs[i], rows[0])
			}
			if created[i] {
				nCreated++
			}
		case !errors.Is(errs[i], store.ErrClientIDReused):
			t.Errorf("save %d with the other body = %+v, %v; want ErrClientIDReused", i, results[i], errs[i])
		}
	}
	if nCreated != 1 {
		t.Errorf("%d saves reported created, want exactly 1", nCreated)
	}
}

func testClientIDScopedToUser(t *testing.T, s store.Store) {
	a := mustSave(t, s, msg("r", "alice", "bob", "from alice", "c1"))
	b := mustSave(t, s, msg("r", "bob", "alice", "from bob", "c1"))
	if a.ID == b.ID || b.Body != "from bob" {
		t.Errorf("different users with one client id collided: %+v %+v", a, b)
	}
}

// The idempotency key includes the room: a client id used in one chat must
// neither swallow nor reveal a message of another chat.
func testClientIDScopedToRoom(t *testing.T, s store.Store) {
	private := mustSave(t, s, msg("chat:1:2", "1", "2", "private note", "c-1"))
	hello := mustSave(t, s, msg("chat:1:3", "1", "3", "hello", "c-1"))
	if hello.ID == private.ID || hello.Room != "chat:1:3" || hello.Body != "hello" {
		t.Errorf("Save in chat:1:3 = %+v, leaked %+v", hello, private)
	}
	for room, want := range map[string]store.Message{"chat:1:2": private, "chat:1:3": hello} {
		if got := since(t, s, room); len(got) != 1 || got[0] != want {
			t.Errorf("%s holds %+v, want [%+v]", room, got, want)
		}
	}
	// Each room's retry resolves within that room.
	for _, want := range []store.Message{private, hello} {
		got, created, err := s.Save(ctxT(t), msg(want.Room, "1", want.OpponentID, want.Body, "c-1"))
		if err != nil || created || got != want {
			t.Errorf("retry in %s = %+v, %v, %v; want %+v", want.Room, got, created, err, want)
		}
	}
}

// Concurrent retries of one client id in several rooms fold into one row per
// room, and every caller gets its own room's message.
func testClientIDScopedToRoomConcurrent(t *testing.T, s store.Store) {
	const rooms, each = 4, 8
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]store.Message, rooms*each)
		created = make([]bool, rooms*each)
		errs    = make([]error, rooms*each)
	)
	room := func(i int) string { return fmt.Sprint("room-", i%rooms) }
	for i := range rooms * each {
		wg.Go(func() {
			<-start
			results[i], created[i], errs[i] = s.Save(context.Background(),
				msg(room(i), "alice", "bob", "hi from "+room(i), "same"))
		})
	}
	close(start)
	wg.Wait()
	nCreated := 0
	for i := range rooms * each {
		if errs[i] != nil {
			t.Fatalf("save %d: %v", i, errs[i])
		}
		if created[i] {
			nCreated++
		}
		if results[i] != results[i%rooms] || results[i].Room != room(i) {
			t.Errorf("save %d in %s = %+v, want %+v", i, room(i), results[i], results[i%rooms])
		}
	}
	if nCreated != rooms {
		t.Errorf("%d saves reported created, want %d", nCreated, rooms)
	}
	for r := range rooms {
		if got := since(t, s, room(r)); len(got) != 1 {
			t.Errorf("%s holds %d rows, want 1", room(r), len(got))
		}
	}
}

func testEmptyClientIDNeverDedups(t *testing.T, s store.Store) {
	a := mustSave(t, s, msg("r", "alice", "bob", "same", ""))
	b := mustSave(t, s, msg("r", "alice", "bob", "same", ""))
	if a.ID == b.ID {
		t.Errorf("empty client id deduplicated: %+v %+v", a, b)
	}
	if got := since(t, s, "r"); len(got) != 2 {
		t.Errorf("stored %d rows, want 2", len(got))
	}
}

func testHistoryPaging(t *testing.T, s store.Store) {
	var all []store.Message
	for i := range 25 {
		all = append(all, mustSave(t, s, msg("r", "alice", "bob", fmt.Sprint(i), "")))
		// Noise in another room must never leak into r's pages.
		mustSave(t, s, msg("other", "carol", "dave", fmt.Sprint(i), ""))
	}
	ctx := ctxT(t)
	var pages [][]store.Message
	before := int64(0)
	for {
		page, err := s.History(ctx, "r", before, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		pages = append(pages, page)
		before = page[0].ID
		if len(pages) > 5 {
			t.Fatal("paging does not terminate")
		}
	}
	if len(pages) != 3 {
		t.Fatalf("got %d pages, want 3", len(pages))
	}
	wantPages := [][]store.Message{all[15:25], all[5:15], all[0:5]}
	for i, want := range wantPages {
		if fmt.Sprint(ids(pages[i])) != fmt.Sprint(ids(want)) {
			t.Errorf("page %d = %v, want %v", i, ids(pages[i]), ids(want))
		}
		for j := range want {
			if pages[i][j] != want[j] {
				t.Errorf("page %d[%d] = %+v, want %+v", i, j, pages[i][j], want[j])
			}
		}
	}
	// Negative before behaves like 0.
	page, err := s.History(ctx, "r", -1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(page)) != fmt.Sprint(ids(all[22:])) {
		t.Errorf("History(before=-1) = %v, want %v", ids(page), ids(all[22:]))
	}
	if page, err := s.History(ctx, "nobody", 0, 10); err != nil || len(page) != 0 {
		t.Errorf("History(empty room) = %v, %v", page, err)
	}
}

func testHistoryLimits(t *testing.T, s store.Store) {
	for i := range 3 {
		mustSave(t, s, msg("r", "alice", "bob", fmt.Sprint(i), ""))
	}
	ctx := ctxT(t)
	for _, limit := range []int{0, -5} {
		if got, err := s.History(ctx, "r", 0, limit); err != nil || len(got) != 0 {
			t.Errorf("History(limit=%d) = %d messages, %v; want none", limit, len(got), err)
		}
		if got, err := s.Since(ctx, "r", 0, limit); err != nil || len(got) != 0 {
			t.Errorf("Since(limit=%d) = %d messages, %v; want none", limit, len(got), err)
		}
	}
	if got, err := s.History(ctx, "r", 0, math.MaxInt); err != nil || len(got) != 3 {
		t.Errorf("History(limit=MaxInt) = %d messages, %v; want 3", len(got), err)
	}
}

func testSince(t *testing.T, s store.Store) {
	var all []store.Message
	for i := range 20 {
		all = append(all, mustSave(t, s, msg("r", "alice", "bob", fmt.Sprint(i), "")))
		mustSave(t, s, msg("other", "alice", "bob", fmt.Sprint(i), ""))
	}
	ctx := ctxT(t)
	got, err := s.Since(ctx, "r", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(got)) != fmt.Sprint(ids(all)) {
		t.Errorf("Since(0) = %v, want %v", ids(got), ids(all))
	}
	got, err = s.Since(ctx, "r", all[9].ID, 5)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(got)) != fmt.Sprint(ids(all[10:15])) {
		t.Errorf("Since(all[9], 5) = %v, want %v", ids(got), ids(all[10:15]))
	}
	// Catching up in pages reaches every message exactly once.
	var caught []int64
	for after := int64(0); ; {
		page, err := s.Since(ctx, "r", after, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		caught = append(caught, ids(page)...)
		after = page[len(page)-1].ID
	}
	if fmt.Sprint(caught) != fmt.Sprint(ids(all)) {
		t.Errorf("paged catch-up = %v, want %v", caught, ids(all))
	}
	if got, err := s.Since(ctx, "r", all[19].ID, 10); err != nil || len(got) != 0 {
		t.Errorf("Since(last) = %v, %v; want none", got, err)
	}
}

func testMarkRead(t *testing.T, s store.Store) {
	a1 := mustSave(t, s, msg("r", "alice", "bob", "a1", ""))
	b1 := mustSave(t, s, msg("r", "bob", "alice", "b1", ""))
	a2 := mustSave(t, s, msg("r", "alice", "bob", "a2", ""))
	a3 := mustSave(t, s, msg("r", "alice", "bob", "a3", ""))
	other := mustSave(t, s, msg("r2", "alice", "bob", "elsewhere", ""))
	ctx := ctxT(t)

	n, err := s.MarkRead(ctx, "r", "bob", a2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("MarkRead(bob, a2) = %d, want 2", n)
	}
	if n, err := s.MarkRead(ctx, "r", "bob", a2.ID); err != nil || n != 0 {
		t.Errorf("repeated MarkRead = %d, %v; want 0", n, err)
	}
	hist, err := s.History(ctx, "r", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]bool{a1.ID: true, b1.ID: false, a2.ID: true, a3.ID: false}
	for _, m := range hist {
		if m.Delivered != want[m.ID] {
			t.Errorf("message %q delivered = %v, want %v", m.Body, m.Delivered, want[m.ID])
		}
	}
	// Bob reading cannot mark Alice's incoming message, whatever the id.
	if n, err := s.MarkRead(ctx, "r", "bob", math.MaxInt64); err != nil || n != 1 {
		t.Errorf("MarkRead(bob, max) = %d, %v; want 1", n, err)
	}
	if n, err := s.MarkRead(ctx, "r", "alice", b1.ID); err != nil || n != 1 {
		t.Errorf("MarkRead(alice, b1) = %d, %v; want 1", n, err)
	}
	rest, err := s.History(ctx, "r2", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 1 || rest[0].ID != other.ID || rest[0].Delivered {
		t.Errorf("other room changed: %+v", rest)
	}
	if n, err := s.MarkRead(ctx, "nobody", "bob", math.MaxInt64); err != nil || n != 0 {
		t.Errorf("MarkRead(empty room) = %d, %v", n, err)
	}
}

// testNothingUnread checks the optional NothingUnread (a store that knows
// from memory who has nothing unread): it may always answer false, but
// never true for a user Unread lists.
func testNothingUnread(t *testing.T, s store.Store) {
	n, ok := s.(interface{ NothingUnread(string) bool })
	if !ok {
		t.Skip("the store has no NothingUnread")
	}
	ctx := ctxT(t)
	agree := func(user string) {
		t.Helper()
		got, err := s.Unread(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		if n.NothingUnread(user) && len(got) > 0 {
			t.Fatalf("NothingUnread(%s) is true, but Unread lists %+v", user, got)
		}
	}
	agree("bob")
	m := mustSave(t, s, msg("ab", "alice", "bob", "hi", ""))
	agree("bob")
	agree("alice")
	if n.NothingUnread("bob") {
		t.Fatal("NothingUnread(bob) is true right after a message to bob was stored")
	}
	if _, err := s.MarkRead(ctx, "ab", "bob", m.ID); err != nil {
		t.Fatal(err)
	}
	agree("bob")
	mustSave(t, s, msg("ab", "alice", "bob", "again", ""))
	agree("bob")
	if n.NothingUnread("bob") {
		t.Fatal("NothingUnread(bob) is true after a new message following a read mark")
	}
}

func testUnread(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	for i := range 3 {
		mustSave(t, s, msg("ab", "alice", "bob", fmt.Sprint("a", i), ""))
	}
	c1 := mustSave(t, s, msg("cb", "carol", "bob", "c1", ""))
	c2 := mustSave(t, s, msg("cb", "carol", "bob", "c2", ""))
	_ = c1
	// Bob's own reply is the newest message of "ab": it is the room's last
	// message and makes "ab" the most recently active room.
	reply := mustSave(t, s, msg("ab", "bob", "alice", "reply", ""))

	got, err := s.Unread(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	want := []store.UnreadChat{
		{Room: "ab", OpponentID: "alice", Unread: 3, Last: reply},
		{Room: "cb", OpponentID: "carol", Unread: 2, Last: c2},
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("Unread(bob) =\n%+v\nwant\n%+v", got, want)
	}

	got, err = s.Unread(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	want = []store.UnreadChat{{Room: "ab", OpponentID: "bob", Unread: 1, Last: reply}}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("Unread(alice) = %+v, want %+v", got, want)
	}

	if _, err := s.MarkRead(ctx, "ab", "bob", reply.ID); err != nil {
		t.Fatal(err)
	}
	got, err = s.Unread(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	want = []store.UnreadChat{{Room: "cb", OpponentID: "carol", Unread: 2, Last: c2}}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("Unread(bob) after MarkRead = %+v, want %+v", got, want)
	}
	// Partly read: the count drops, the room stays.
	if _, err := s.MarkRead(ctx, "cb", "bob", c1.ID); err != nil {
		t.Fatal(err)
	}
	got, err = s.Unread(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Unread != 1 {
		t.Errorf("Unread(bob) after partial read = %+v", got)
	}
	if got, err := s.Unread(ctx, "dave"); err != nil || len(got) != 0 {
		t.Errorf("Unread(dave) = %+v, %v; want none", got, err)
	}
}

func testConcurrentSaves(t *testing.T, s store.Store) {
	const workers, each = 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	var mu sync.Mutex
	seen := make(map[int64]string)
	for w := range workers {
		wg.Go(func() {
			room := fmt.Sprintf("room-%d", w%5)
			for i := range each {
				body := fmt.Sprintf("w%d-m%d", w, i)
				m, created, err := s.Save(context.Background(),
					msg(room, fmt.Sprint("u", w), "peer", body, fmt.Sprint("cid-", i)))
				if err != nil {
					errs <- err
					return
				}
				if !created || m.Body != body {
					errs <- fmt.Errorf("save %s: created=%v body=%q", body, created, m.Body)
					return
				}
				mu.Lock()
				if prev, dup := seen[m.ID]; dup {
					errs <- fmt.Errorf("id %d given to %s and %s", m.ID, prev, body)
				}
				seen[m.ID] = body
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	stored := 0
	for r := range 5 {
		got := since(t, s, fmt.Sprintf("room-%d", r))
		for _, m := range got {
			if seen[m.ID] != m.Body {
				t.Errorf("stored %d %q, Save said %q", m.ID, m.Body, seen[m.ID])
			}
		}
		stored += len(got)
	}
	if stored != workers*each {
		t.Errorf("stored %d messages, want %d", stored, workers*each)
	}
}

func testVerbatimBodies(t *testing.T, s store.Store) {
	bodies := []string{
		`'; DROP TABLE messages; --`,
		`" OR 1=1 -- \' \\ %_ $1 ?`,
		`<script>alert("x")</script><b>&amp;</b>`,
		"👋🏽 🇺🇦 👨‍👩‍👧‍👦 ❤️",
		"Привет, мир! 日本語のテキスト عربى",
		"line1\nline2\r\n\ttabbed  ",
		"   ",
		strings.Repeat("long body ✓ ", 8000),
	}
	for i, body := range bodies {
		cid := fmt.Sprintf("'%d\"; --", i)
		m := mustSave(t, s, msg("r'; --", "us'er", "<opp>", body, cid))
		if m.Body != body || m.ClientID != cid {
			t.Errorf("Save changed body %d: %q", i, m.Body)
		}
	}
	got := since(t, s, "r'; --")
	if len(got) != len(bodies) {
		t.Fatalf("stored %d, want %d", len(got), len(bodies))
	}
	for i, m := range got {
		if m.Body != bodies[i] || m.UserID != "us'er" || m.OpponentID != "<opp>" {
			t.Errorf("stored message %d = %q/%q/%q, want body %q", i, m.UserID, m.OpponentID, m.Body, bodies[i])
		}
	}
	unread, err := s.Unread(ctxT(t), "<opp>")
	if err != nil || len(unread) != 1 || unread[0].OpponentID != "us'er" || unread[0].Unread != len(bodies) {
		t.Errorf("Unread with metacharacters = %+v, %v", unread, err)
	}
}

func testInvalidInput(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	for _, m := range []store.NewMessage{
		msg("", "alice", "bob", "x", ""),
		msg("r", "", "bob", "x", ""),
		msg("r", "alice", "", "x", ""),
		msg("r", "alice", "bob", "nul\x00byte", ""),
		msg("r", "alice", "bob", "bad \xff utf8", ""),
		msg("r", "alice", "bob", "x", "nul\x00"),
	} {
		_, _, err := s.Save(ctx, m)
		if !errors.Is(err, store.ErrInvalid) || errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Save(%q) = %v, want ErrInvalid", m, err)
		}
	}
	if got := since(t, s, "r"); len(got) != 0 {
		t.Errorf("invalid messages were stored: %+v", got)
	}
}

func testContextCancel(t *testing.T, s store.Store) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := s.Save(canceled, msg("r", "alice", "bob", "x", "")); !errors.Is(err, context.Canceled) {
		t.Errorf("Save(canceled) = %v, want context.Canceled", err)
	}
	if _, err := s.History(canceled, "r", 0, 10); !errors.Is(err, context.Canceled) {
		t.Errorf("History(canceled) = %v, want context.Canceled", err)
	}
	if _, err := s.Since(canceled, "r", 0, 10); !errors.Is(err, context.Canceled) {
		t.Errorf("Since(canceled) = %v, want context.Canceled", err)
	}
	if _, err := s.MarkRead(canceled, "r", "bob", 10); !errors.Is(err, context.Canceled) {
		t.Errorf("MarkRead(canceled) = %v, want context.Canceled", err)
	}
	if _, err := s.Unread(canceled, "bob"); !errors.Is(err, context.Canceled) {
		t.Errorf("Unread(canceled) = %v, want context.Canceled", err)
	}
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	if _, _, err := s.Save(expired, msg("r", "alice", "bob", "x", "")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Save(expired) = %v, want context.DeadlineExceeded", err)
	}

	// Saves racing a deadline either fail with the context's error or are
	// stored; a retry with the same client id settles which.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i)*50*time.Microsecond)
			defer cancel()
			_, _, err := s.Save(ctx, msg("race", "alice", "bob", "x", fmt.Sprint("race-", i)))
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Save under deadline: %v", err)
			}
		})
	}
	wg.Wait()
	for i := range 20 {
		m, _, err := s.Save(ctxT(t), msg("race", "alice", "bob", "x", fmt.Sprint("race-", i)))
		if err != nil || m.ID == 0 {
			t.Errorf("retry %d: %+v, %v", i, m, err)
		}
	}
	if got := since(t, s, "race"); len(got) != 20 {
		t.Errorf("stored %d racing messages after retries, want 20", len(got))
	}
	// The store still works for everyone else.
	mustSave(t, s, msg("r", "alice", "bob", "after", ""))
}

func testCloseThenSave(t *testing.T, s store.Store) {
	mustSave(t, s, msg("r", "alice", "bob", "before close", ""))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, _, err := s.Save(ctxT(t), msg("r", "alice", "bob", "after close", "")); err == nil {
		t.Error("Save after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func testLastID(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	if id, err := s.LastID(ctx); err != nil || id != 0 {
		t.Fatalf("LastID of an empty store = %d, %v; want 0", id, err)
	}
	var last int64
	for i := range 3 {
		m, _, err := s.Save(ctx, store.NewMessage{Room: "chat:1:2", UserID: "1", OpponentID: "2", Body: fmt.Sprint("m", i)})
		if err != nil {
			t.Fatal(err)
		}
		last = m.ID
	}
	if id, err := s.LastID(ctx); err != nil || id != last {
		t.Fatalf("LastID = %d, %v; want %d", id, err, last)
	}
}

func testPing(t *testing.T, s store.Store) {
	if err := s.Ping(ctxT(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// BenchmarkSave measures group-committed Save from parallel callers; each
// iteration is one durable message. 32 callers per CPU stand in for many
// chat users typing at once, which is what gives batches something to group.
func BenchmarkSave(b *testing.B, s store.Store) {
	b.SetParallelism(32)
	var worker int64
	var mu sync.Mutex
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		worker++
		user := fmt.Sprint("bench-", worker)
		mu.Unlock()
		ctx := context.Background()
		for i := 0; pb.Next(); i++ {
			if _, _, err := s.Save(ctx, msg("bench-room", user, "peer", "benchmark body", fmt.Sprint(i))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSaveBatch measures one transaction of size messages per
// iteration, the raw cost the batcher amortises.
func BenchmarkSaveBatch(b *testing.B, s BatchSaver, size int) {
	batch := make([]store.NewMessage, size)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		for j := range batch {
			batch[j] = msg("bench-room", "bench", "peer", "benchmark body", fmt.Sprint(n, "-", j))
		}
		if _, err := s.SaveBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n*size)/b.Elapsed().Seconds(), "msgs/s")
}

// CheckUpgradedClientID checks a store migrated from the schema whose
// idempotency key was (UserID, ClientID) to the per-room key. old is a
// message stored before the migration, with a ClientID; the store must hold
// nothing else in old.Room or in "other-room".
func CheckUpgradedClientID(t *testing.T, s store.Store, old store.Message) {
	t.Helper()
	ctx := ctxT(t)
	// The change cursor's migration gives every earlier message its id as
	// seq.
	old.Seq = old.ID
	if got := since(t, s, old.Room); len(got) != 1 || got[0] != old {
		t.Fatalf("%s after migration = %+v, want [%+v]", old.Room, got, old)
	}
	again, created, err := s.Save(ctx, msg(old.Room, old.UserID, old.OpponentID, old.Body, old.ClientID))
	if err != nil || created || again != old {
		t.Errorf("retry of a pre-migration message = %+v, %v, %v; want %+v", again, created, err, old)
	}
	if _, _, err := s.Save(ctx, msg(old.Room, old.UserID, old.OpponentID, old.Body+"?", old.ClientID)); !errors.Is(err, store.ErrClientIDReused) {
		t.Errorf("reuse of a pre-migration client id = %v, want ErrClientIDReused", err)
	}
	other, created, err := s.Save(ctx, msg("other-room", old.UserID, old.OpponentID, "elsewhere", old.ClientID))
	if err != nil || !created || other.Room != "other-room" || other.ID <= old.ID || other.Seq <= old.Seq {
		t.Errorf("pre-migration client id in another room = %+v, %v, %v; want a new message", other, created, err)
	}
}
