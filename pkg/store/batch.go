package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// ErrClosed is returned by Save after Close has been called.
var ErrClosed = errors.New("store closed")

// ErrInvalid is returned for a message the store refuses to keep. It does not
// wrap ErrUnavailable: retrying the same message cannot succeed.
var ErrInvalid = errors.New("invalid message")

// MaxPage bounds History and Since so one request cannot pull a whole room
// into memory.
const MaxPage = 1000

// ClampLimit maps a requested page size to the one the stores execute:
// non-positive means nothing, anything larger than MaxPage means MaxPage.
func ClampLimit(limit int) int {
	if limit <= 0 {
		return 0
	}
	if limit > MaxPage {
		return MaxPage
	}
	return limit
}

// Validate rejects messages that could never be routed, or whose body
// PostgreSQL cannot hold (NUL bytes, invalid UTF-8); SQLite and memstore
// enforce the same so every store accepts exactly the same input.
func (m NewMessage) Validate() error {
	for _, f := range [...]struct{ name, v string }{
		{"room", m.Room}, {"user_id", m.UserID}, {"opponent_id", m.OpponentID},
		{"body", m.Body}, {"client_id", m.ClientID},
	} {
		if !utf8.ValidString(f.v) || strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("%w: %s is not NUL-free UTF-8", ErrInvalid, f.name)
		}
	}
	switch {
	case m.Room == "":
		return fmt.Errorf("%w: empty room", ErrInvalid)
	case m.UserID == "":
		return fmt.Errorf("%w: empty user_id", ErrInvalid)
	case m.OpponentID == "":
		return fmt.Errorf("%w: empty opponent_id", ErrInvalid)
	}
	return nil
}

// SaveResult is the outcome of saving one message of a batch.
type SaveResult struct {
	Msg     Message
	Created bool
	// Err, when set, refuses this one message (ErrClientIDReused) while the
	// rest of the batch is stored; Msg and Created are then zero. A
	// FlushFunc leaves it nil: SaveBatch and the Batcher fill it in.
	Err error
}

// FlushFunc writes batch in one transaction and returns one result per
// message, in order. The batch never holds two messages with the same
// non-empty (UserID, Room, ClientID): the batcher folds those beforehand. A
// message whose key is already stored gets that stored message with Created
// false, whatever its Body; the caller compares the bodies. An error fails
// the whole batch; it should already wrap ErrUnavailable when the database
// is to blame.
type FlushFunc func(ctx context.Context, batch []NewMessage) ([]SaveResult, error)

// BatchConfig tunes group commit. The zero value picks the defaults.
type BatchConfig struct {
	// Flushers is how many batches may be in flight at once (default 2).
	// SQLite has a single writer, so it forces 1.
	Flushers int
	// MaxBatch caps the messages written by one transaction (default 512).
	MaxBatch int
	// FlushTimeout bounds one batch write (default 30s), so a hung database
	// fails callers with ErrUnavailable instead of parking them forever.
	FlushTimeout time.Duration
	// Observer, when set, is called after every flush with the number of
	// distinct messages written and how long the write took. It runs on the
	// flusher goroutine, so it must be quick.
	Observer func(batchSize int, d time.Duration)
}

func (c BatchConfig) withDefaults() BatchConfig {
	if c.Flushers <= 0 {
		c.Flushers = 2
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 512
	}
	if c.FlushTimeout <= 0 {
		c.FlushTimeout = 30 * time.Second
	}
	return c
}

type saveRequest struct {
	ctx context.Context
	msg NewMessage
	// done is buffered (cap 1) so a flusher never blocks on a caller that
	// already gave up. Nil for SaveAsync, which has then.
	done chan saveReply
	then func(Message, bool, error)
}

// answer reports r's outcome to its caller.
func (r *saveRequest) answer(rep saveReply) {
	if r.then != nil {
		r.then(rep.res.Msg, rep.res.Created, rep.err)
		return
	}
	r.done <- rep
}

type saveReply struct {
	res SaveResult
	err error
}

// Batcher group-commits Save calls: callers enqueue, a fixed set of flusher
// goroutines each take everything queued (up to MaxBatch) and write it in
// one transaction, so the fsync cost is shared by the whole batch.
type Batcher struct {
	cfg   BatchConfig
	flush FlushFunc
	queue chan *saveRequest

	// mu guards closed and the sends on queue: Save holds it shared while
	// sending so Close (exclusive) cannot close queue under a sender.
	mu     sync.RWMutex
	closed bool

	wg sync.WaitGroup // flusher goroutines
}

// NewBatcher starts cfg.Flushers flushers that write with flush.
func NewBatcher(cfg BatchConfig, flush FlushFunc) *Batcher {
	cfg = cfg.withDefaults()
	b := &Batcher{
		cfg:   cfg,
		flush: flush,
		// A queue of a few batches lets callers enqueue while the flushers
		// write; beyond that, Save blocks, which is the back-pressure we want.
		queue: make(chan *saveRequest, cfg.MaxBatch*cfg.Flushers*2),
	}
	b.wg.Add(cfg.Flushers)
	for range cfg.Flushers {
		go b.run()
	}
	return b
}

// Save enqueues m and waits for the batch holding it to commit. If ctx ends
// first it returns ctx.Err(); the message may still be committed, which a
// retry with the same ClientID resolves.
func (b *Batcher) Save(ctx context.Context, m NewMessage) (Message, bool, error) {
	if err := m.Validate(); err != nil {
		return Message{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return Message{}, false, err
	}
	req := &saveRequest{ctx: ctx, msg: m, done: make(chan saveReply, 1)}

	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return Message{}, false, ErrClosed
	}
	select {
	case b.queue <- req:
		b.mu.RUnlock()
	case <-ctx.Done():
		b.mu.RUnlock()
		return Message{}, false, ctx.Err()
	}

	select {
	case r := <-req.done:
		return r.res.Msg, r.res.Created, r.err
	case <-ctx.Done():
		return Message{}, false, ctx.Err()
	}
}

// SaveAsync enqueues m without waiting: then is called with Save's results
// once the batch holding m committed (or failed, or ctx ended first), on a
// flusher goroutine, so it must be quick and must not call back into the
// Batcher. It returns false, and never calls then, when m cannot be queued
// at once (the queue is full or the Batcher closed): the caller falls back
// to Save or reports the store busy. Its point is that no goroutine waits
// for the commit, so callers are not bounded by how many can wait.
func (b *Batcher) SaveAsync(ctx context.Context, m NewMessage, then func(Message, bool, error)) bool {
	if err := m.Validate(); err != nil {
		return false
	}
	req := &saveRequest{ctx: ctx, msg: m, then: then}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return false
	}
	select {
	case b.queue <- req:
		return true
	default:
		return false
	}
}

// Close stops accepting messages, flushes everything already queued and
// waits for the flushers to finish.
func (b *Batcher) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	close(b.queue)
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *Batcher) run() {
	defer b.wg.Done()
	batch := make([]*saveRequest, 0, b.cfg.MaxBatch)
	for {
		first, ok := <-b.queue
		if !ok {
			return
		}
		batch = append(batch[:0], first)
	fill:
		for len(batch) < b.cfg.MaxBatch {
			select {
			case r, ok := <-b.queue:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		b.write(batch)
		clear(batch) // drop references so finished requests can be collected
	}
}

// IdempotencyKey is what makes two messages one: the same sender, chat and
// non-empty ClientID.
type IdempotencyKey struct{ User, Room, Client string }

// Key returns m's idempotency key; ok is false when m has no ClientID and so
// is never folded with another message.
func (m NewMessage) Key() (k IdempotencyKey, ok bool) {
	return IdempotencyKey{m.UserID, m.Room, m.ClientID}, m.ClientID != ""
}

// SaveBatch folds messages sharing a non-empty (UserID, Room, ClientID) into
// one, writes the distinct ones with flush, and returns one result per input
// message. A folded duplicate with the first one's Body is a retry of it: it
// gets the same message with Created false; one with another Body gets
// ErrClientIDReused in its result. The same holds against messages stored
// earlier. Implementations expose it for bulk imports and benchmarks; Save
// goes through it too. A ctx that ends before or during the write is
// reported as ctx's error.
func SaveBatch(ctx context.Context, flush FlushFunc, batch []NewMessage) ([]SaveResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, m := range batch {
		if err := m.Validate(); err != nil {
			return nil, err
		}
	}
	msgs, slot := dedup(batch)
	if len(msgs) == 0 {
		return nil, nil
	}
	res, err := flush(ctx, msgs)
	if err != nil {
		return nil, ContextOr(ctx, err)
	}
	if len(res) != len(msgs) {
		return nil, fmt.Errorf("store: flush returned %d results for %d messages", len(res), len(msgs))
	}
	return expand(batch, res, slot), nil
}

// dedup returns the distinct messages of batch and, for each input index,
// the index of the distinct message that answers it.
func dedup(batch []NewMessage) (msgs []NewMessage, slot []int) {
	msgs = make([]NewMessage, 0, len(batch))
	slot = make([]int, len(batch))
	var seen map[IdempotencyKey]int
	for i, m := range batch {
		if k, ok := m.Key(); ok {
			if seen == nil {
				seen = make(map[IdempotencyKey]int)
			}
			if j, dup := seen[k]; dup {
				slot[i] = j
				continue
			}
			seen[k] = len(msgs)
		}
		slot[i] = len(msgs)
		msgs = append(msgs, m)
	}
	return msgs, slot
}

// expand answers every message of batch from the results of its distinct
// messages. An answer that is not a fresh insert is a retry, and a retry is
// only honoured when it carries the stored Body.
func expand(batch []NewMessage, res []SaveResult, slot []int) []SaveResult {
	out := make([]SaveResult, len(slot))
	answered := make([]bool, len(res))
	for i, j := range slot {
		out[i] = res[j]
		if answered[j] {
			out[i].Created = false
		}
		answered[j] = true
		if out[i].Err == nil && !out[i].Created && out[i].Msg.Body != batch[i].Body {
			out[i] = SaveResult{Err: ErrClientIDReused}
		}
	}
	return out
}

// write flushes one batch. Callers that already gave up are skipped: their
// Save has returned, and writing their message would only surprise them.
func (b *Batcher) write(batch []*saveRequest) {
	live := batch[:0:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			if r.then != nil {
				r.answer(saveReply{err: err}) // nobody else tells it
			}
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	in := make([]NewMessage, len(live))
	for i, r := range live {
		in[i] = r.msg
	}
	msgs, slot := dedup(in)

	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.FlushTimeout)
	start := time.Now()
	res, err := b.flush(ctx, msgs)
	cancel()
	if obs := b.cfg.Observer; obs != nil {
		obs(len(msgs), time.Since(start))
	}
	if err == nil && len(res) != len(msgs) {
		err = fmt.Errorf("store: flush returned %d results for %d messages", len(res), len(msgs))
	}
	if err != nil {
		for _, r := range live {
			r.answer(saveReply{err: err})
		}
		return
	}
	for i, out := range expand(in, res, slot) {
		live[i].answer(saveReply{res: out, err: out.Err})
	}
}
