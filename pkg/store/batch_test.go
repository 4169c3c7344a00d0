package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// recorder is a FlushFunc that assigns ids like a database would and can
// hold a flush open, so tests decide exactly what queues up behind it.
type recorder struct {
	mu      sync.Mutex
	nextID  int64
	batches [][]NewMessage // guarded by mu
	gate    chan struct{}  // when non-nil, each flush waits for a receive
	entered chan struct{}  // when non-nil, each flush announces itself
	err     error
}

func (r *recorder) flush(ctx context.Context, batch []NewMessage) ([]SaveResult, error) {
	if r.entered != nil {
		r.entered <- struct{}{}
	}
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, append([]NewMessage(nil), batch...))
	if r.err != nil {
		return nil, r.err
	}
	out := make([]SaveResult, len(batch))
	for i, m := range batch {
		r.nextID++
		out[i] = SaveResult{Created: true, Msg: Message{ID: r.nextID, Room: m.Room, UserID: m.UserID,
			OpponentID: m.OpponentID, Body: m.Body, ClientID: m.ClientID}}
	}
	return out, nil
}

func nm(user, cid string) NewMessage {
	return NewMessage{Room: "r", UserID: user, OpponentID: "peer", Body: user + "/" + cid, ClientID: cid}
}

type reply struct {
	msg     Message
	created bool
	err     error
}

func saveAsync(b *Batcher, ctx context.Context, m NewMessage) <-chan reply {
	ch := make(chan reply, 1)
	go func() {
		msg, created, err := b.Save(ctx, m)
		ch <- reply{msg, created, err}
	}()
	return ch
}

// waitQueued waits until n requests sit in the queue behind a held flush.
func waitQueued(t *testing.T, b *Batcher, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(b.queue) < n {
		if time.Now().After(deadline) {
			t.Fatalf("queue has %d requests, want %d", len(b.queue), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBatcherGroupsAndDedups(t *testing.T) {
	rec := &recorder{gate: make(chan struct{}), entered: make(chan struct{}, 10)}
	var sizes []int
	var obsMu sync.Mutex
	b := NewBatcher(BatchConfig{Flushers: 1, Observer: func(n int, d time.Duration) {
		obsMu.Lock()
		sizes = append(sizes, n)
		obsMu.Unlock()
	}}, rec.flush)
	defer b.Close()

	first := saveAsync(b, context.Background(), nm("u0", ""))
	<-rec.entered // the flusher is busy: everything below queues up
	dupA := saveAsync(b, context.Background(), nm("alice", "x"))
	waitQueued(t, b, 1)
	dupB := saveAsync(b, context.Background(), nm("alice", "x"))
	other := saveAsync(b, context.Background(), nm("bob", "x"))
	noID1 := saveAsync(b, context.Background(), nm("alice", ""))
	noID2 := saveAsync(b, context.Background(), nm("alice", ""))
	waitQueued(t, b, 5)
	rec.gate <- struct{}{}
	<-rec.entered
	rec.gate <- struct{}{}

	if r := <-first; r.err != nil || !r.created {
		t.Fatalf("first = %+v", r)
	}
	a, bb := <-dupA, <-dupB
	if a.err != nil || bb.err != nil {
		t.Fatal(a.err, bb.err)
	}
	if a.msg != bb.msg || a.created == bb.created {
		t.Errorf("in-batch duplicates: %+v / %+v; want same message, one created", a, bb)
	}
	o, n1, n2 := <-other, <-noID1, <-noID2
	if !o.created || o.msg.ID == a.msg.ID || n1.msg.ID == n2.msg.ID || !n1.created || !n2.created {
		t.Errorf("distinct messages merged: %+v %+v %+v", o, n1, n2)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.batches) != 2 || len(rec.batches[1]) != 4 {
		t.Errorf("batches = %v, want [1 message] then [4 distinct]", rec.batches)
	}
	obsMu.Lock()
	defer obsMu.Unlock()
	if fmt.Sprint(sizes) != "[1 4]" {
		t.Errorf("observer saw %v, want [1 4]", sizes)
	}
}

func TestBatcherMaxBatch(t *testing.T) {
	rec := &recorder{gate: make(chan struct{}), entered: make(chan struct{}, 10)}
	b := NewBatcher(BatchConfig{Flushers: 1, MaxBatch: 3}, rec.flush)
	defer b.Close()
	var replies []<-chan reply
	replies = append(replies, saveAsync(b, context.Background(), nm("u", "")))
	<-rec.entered
	// The queue holds MaxBatch*Flushers*2 = 6 requests.
	for range 6 {
		replies = append(replies, saveAsync(b, context.Background(), nm("u", "")))
	}
	waitQueued(t, b, 6)
	for range 3 {
		rec.gate <- struct{}{}
	}
	for _, r := range replies {
		if got := <-r; got.err != nil {
			t.Fatal(got.err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var sizes []int
	for _, b := range rec.batches {
		sizes = append(sizes, len(b))
	}
	if fmt.Sprint(sizes) != "[1 3 3]" {
		t.Errorf("batch sizes = %v, want [1 3 3]", sizes)
	}
}

func TestBatcherContext(t *testing.T) {
	rec := &recorder{gate: make(chan struct{}), entered: make(chan struct{}, 10)}
	b := NewBatcher(BatchConfig{Flushers: 1}, rec.flush)
	defer b.Close()

	held := saveAsync(b, context.Background(), nm("u", "held"))
	<-rec.entered
	// A caller whose context ends while its batch is in flight gets the
	// context's error at once, not when the database answers.
	ctx, cancel := context.WithCancel(context.Background())
	waiting := saveAsync(b, ctx, nm("u", "gone"))
	waitQueued(t, b, 1)
	cancel()
	select {
	case r := <-waiting:
		if !errors.Is(r.err, context.Canceled) {
			t.Errorf("canceled Save = %+v, want context.Canceled", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("canceled Save did not return")
	}
	rec.gate <- struct{}{}
	if r := <-held; r.err != nil {
		t.Fatal(r.err)
	}
	// The request that gave up before its batch started is not written.
	go func() { rec.gate <- struct{}{} }()
	if _, _, err := b.Save(context.Background(), nm("u", "after")); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, batch := range rec.batches {
		for _, m := range batch {
			if m.ClientID == "gone" {
				t.Error("message of a caller that gave up was written")
			}
		}
	}
}

func TestBatcherErrorReachesEveryCaller(t *testing.T) {
	boom := fmt.Errorf("%w: connection refused", ErrUnavailable)
	rec := &recorder{gate: make(chan struct{}), entered: make(chan struct{}, 10), err: boom}
	b := NewBatcher(BatchConfig{Flushers: 1}, rec.flush)
	defer b.Close()
	first := saveAsync(b, context.Background(), nm("u", "1"))
	<-rec.entered
	second := saveAsync(b, context.Background(), nm("u", "2"))
	third := saveAsync(b, context.Background(), nm("u", "2"))
	waitQueued(t, b, 2)
	go func() { rec.gate <- struct{}{}; <-rec.entered; rec.gate <- struct{}{} }()
	for _, ch := range []<-chan reply{first, second, third} {
		if r := <-ch; !errors.Is(r.err, ErrUnavailable) {
			t.Errorf("Save = %+v, want ErrUnavailable", r)
		}
	}
}

func TestBatcherCloseFlushesQueue(t *testing.T) {
	rec := &recorder{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	b := NewBatcher(BatchConfig{Flushers: 1, MaxBatch: 4}, rec.flush)
	replies := []<-chan reply{saveAsync(b, context.Background(), nm("u", "0"))}
	<-rec.entered
	for i := 1; i <= 8; i++ { // the queue holds MaxBatch*Flushers*2 = 8
		replies = append(replies, saveAsync(b, context.Background(), nm("u", fmt.Sprint(i))))
		waitQueued(t, b, i)
	}
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	go func() {
		for {
			select {
			case rec.gate <- struct{}{}:
			case <-closed:
				return
			}
		}
	}()
	for i, ch := range replies {
		if r := <-ch; r.err != nil || !r.created {
			t.Errorf("save %d queued before Close = %+v", i, r)
		}
	}
	<-closed
	if _, _, err := b.Save(context.Background(), nm("u", "late")); !errors.Is(err, ErrClosed) {
		t.Errorf("Save after Close = %v, want ErrClosed", err)
	}
	b.Close() // idempotent
}

func TestSaveBatchValidatesAll(t *testing.T) {
	rec := &recorder{}
	_, err := SaveBatch(context.Background(), rec.flush, []NewMessage{nm("u", "1"), {Room: "r"}})
	if !errors.Is(err, ErrInvalid) || len(rec.batches) != 0 {
		t.Errorf("SaveBatch with an invalid message = %v, wrote %d batches", err, len(rec.batches))
	}
	if got := ClampLimit(5000); got != MaxPage {
		t.Errorf("ClampLimit(5000) = %d", got)
	}
}

// Duplicates folded inside one batch follow the same rule as retries of
// stored messages: the first wins, a later one with another body is refused,
// and the same client id in another room is another message.
func TestBatcherFoldsPerRoomAndBody(t *testing.T) {
	rec := &recorder{gate: make(chan struct{}), entered: make(chan struct{}, 10)}
	b := NewBatcher(BatchConfig{Flushers: 1}, rec.flush)
	defer b.Close()

	first := saveAsync(b, context.Background(), nm("u0", ""))
	<-rec.entered
	orig := NewMessage{Room: "r", UserID: "alice", OpponentID: "bob", Body: "original", ClientID: "x"}
	winner := saveAsync(b, context.Background(), orig)
	waitQueued(t, b, 1)
	reused := orig
	reused.Body = "changed"
	loser := saveAsync(b, context.Background(), reused)
	retry := saveAsync(b, context.Background(), orig)
	elsewhere := orig
	elsewhere.Room = "r2"
	other := saveAsync(b, context.Background(), elsewhere)
	waitQueued(t, b, 4)
	rec.gate <- struct{}{}
	<-rec.entered
	rec.gate <- struct{}{}

	if r := <-first; r.err != nil {
		t.Fatal(r.err)
	}
	w, l, rt, o := <-winner, <-loser, <-retry, <-other
	if w.err != nil || !w.created || w.msg.Body != "original" {
		t.Errorf("first of the key = %+v", w)
	}
	if !errors.Is(l.err, ErrClientIDReused) || !errors.Is(l.err, ErrInvalid) || errors.Is(l.err, ErrUnavailable) ||
		l.created || l.msg != (Message{}) {
		t.Errorf("same key, other body = %+v; want ErrClientIDReused alone", l)
	}
	if rt.err != nil || rt.created || rt.msg != w.msg {
		t.Errorf("same key, same body = %+v; want %+v, not created", rt, w.msg)
	}
	if o.err != nil || !o.created || o.msg.ID == w.msg.ID || o.msg.Room != "r2" {
		t.Errorf("same client id in another room = %+v", o)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.batches) != 2 || len(rec.batches[1]) != 2 {
		t.Errorf("batches = %v, want [1 message] then [2 distinct]", rec.batches)
	}
}

// SaveAsync: answers arrive through the callback with Save's results, in
// the same batches as waiting callers; a message whose context ended
// before its flush is answered with that error; a full queue or a closed
// Batcher refuse at once without calling back.
func TestBatcherSaveAsync(t *testing.T) {
	rec := &recorder{gate: make(chan struct{}), entered: make(chan struct{}, 8)}
	b := NewBatcher(BatchConfig{Flushers: 1, MaxBatch: 2}, rec.flush)
	got := make(chan reply, 16)
	then := func(m Message, created bool, err error) { got <- reply{m, created, err} }
	if !b.SaveAsync(context.Background(), nm("u", "a"), then) {
		t.Fatal("first SaveAsync refused")
	}
	<-rec.entered // the flusher holds "a"; the rest queues behind it
	gone, cancel := context.WithCancel(context.Background())
	if !b.SaveAsync(gone, nm("u", "gone"), then) || !b.SaveAsync(context.Background(), nm("u", "b"), then) {
		t.Fatal("SaveAsync refused with room in the queue")
	}
	cancel()
	full := 0
	for b.SaveAsync(context.Background(), nm("u", fmt.Sprint("f", full)), then) {
		full++
		if full > cap(b.queue) {
			t.Fatal("SaveAsync never reports a full queue")
		}
	}
	close(rec.gate) // let every flush through
	answers := map[string]reply{}
	for range 3 + full {
		r := <-got
		if r.err != nil {
			answers["error"] = r
			continue
		}
		answers[r.msg.ClientID] = r
	}
	if !answers["a"].created || !answers["b"].created || !errors.Is(answers["error"].err, context.Canceled) {
		t.Fatalf("answers: %+v", answers)
	}
	b.Close()
	if b.SaveAsync(context.Background(), nm("u", "late"), then) {
		t.Fatal("SaveAsync accepted after Close")
	}
}
