package server

import (
	"context"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/hub"
)

// expirySlot groups deadlines so the sweeper wakes rarely and the table
// holds one small entry per connection, not a timer.
const expirySlot = 5 * time.Second

// expiries closes connections when their token expires.
type expiries struct {
	mu    sync.Mutex
	slots map[int64]map[hub.Conn]struct{} // guarded by mu: slot → connections expiring in it
}

func newExpiries() *expiries {
	return &expiries{slots: make(map[int64]map[hub.Conn]struct{})}
}

func slotOf(t time.Time) int64 {
	return (t.UnixNano() + int64(expirySlot) - 1) / int64(expirySlot)
}

func (e *expiries) add(c hub.Conn, at time.Time) int64 {
	s := slotOf(at)
	e.mu.Lock()
	m := e.slots[s]
	if m == nil {
		m = make(map[hub.Conn]struct{})
		e.slots[s] = m
	}
	m[c] = struct{}{}
	e.mu.Unlock()
	return s
}

func (e *expiries) remove(c hub.Conn, slot int64) {
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
	cur := now.UnixNano() / int64(expirySlot)
	var due []hub.Conn
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
