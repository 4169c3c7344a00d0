package server

import (
	"context"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/closecode"
)

// expirySlot groups deadlines so the sweeper wakes rarely and the table
// holds one small entry per connection, not a timer.
const expirySlot = 5 * time.Second

// slotSeconds is expirySlot in whole seconds. Slots count seconds, not
// nanoseconds: UnixNano overflows after 2262, and a token may be valid until
// year 9999 (exp 253402300799) or beyond.
const slotSeconds = int64(expirySlot / time.Second)

// closer is what expiries needs of a connection.
type closer interface{ Close(code int, reason string) }

// expiries closes connections when their token expires.
type expiries struct {
	mu    sync.Mutex
	slots map[int64]map[closer]struct{} // guarded by mu: slot → connections expiring in it
}

func newExpiries() *expiries {
	return &expiries{slots: make(map[int64]map[closer]struct{})}
}

// slotOf returns the first slot that starts at or after t, so a connection
// is never closed before its token expires.
func slotOf(t time.Time) int64 {
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++ // round up: a fractional second still belongs to the token
	}
	return ceilDiv(sec, slotSeconds)
}

// slotNow returns the last slot that has started by now.
func slotNow(now time.Time) int64 { return floorDiv(now.Unix(), slotSeconds) }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a > 0 {
		q++
	}
	return q
}

func (e *expiries) add(c closer, at time.Time) int64 {
	s := slotOf(at)
	e.mu.Lock()
	m := e.slots[s]
	if m == nil {
		m = make(map[closer]struct{})
		e.slots[s] = m
	}
	m[c] = struct{}{}
	e.mu.Unlock()
	return s
}

func (e *expiries) remove(c closer, slot int64) {
	e.mu.Lock()
	if m := e.slots[slot]; m != nil {
		delete(m, c)
		if len(m) == 0 {
			delete(e.slots, slot)
		}
	}
	e.mu.Unlock()
}

// run closes expired connections until ctx ends.
func (e *expiries) run(ctx context.Context) {
	t := time.NewTicker(expirySlot)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			e.sweep(now)
		}
	}
}

func (e *expiries) sweep(now time.Time) {
	cur := slotNow(now)
	var due []closer
	e.mu.Lock()
	for s, m := range e.slots {
		if s <= cur {
			for c := range m {
				due = append(due, c)
			}
			delete(e.slots, s)
		}
	}
	e.mu.Unlock()
	for _, c := range due {
		// Not 1000: phoenix.js reconnects, re-reading its params (or
		// authToken), and so picks up a fresh token from the host page.
		c.Close(closecode.TokenExpired, "token expired")
	}
}
