package server

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/closecode"
)

type expiryConn struct{ code atomic.Int32 }

func (c *expiryConn) Send([]byte) error        { return nil }
func (c *expiryConn) Close(code int, _ string) { c.code.CompareAndSwap(0, int32(code)) }

// TestExpiryFarFuture: a token valid for centuries (exp 9999999999, or the
// last second of year 9999) is not closed by the sweeper now. Nanosecond
// slots overflowed past 2262 and closed such sockets at once with 4001.
func TestExpiryFarFuture(t *testing.T) {
	now := time.Now()
	for _, at := range []time.Time{
		time.Unix(9999999999, 0),
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC), // just past UnixNano's range
		now.Add(24 * time.Hour),
	} {
		e := newExpiries()
		c := &expiryConn{}
		e.add(c, at)
		e.sweep(now)
		e.sweep(now.Add(expirySlot))
		if code := c.code.Load(); code != 0 {
			t.Errorf("token expiring %v closed at %v with %d", at, now, code)
		}
	}
}

// TestExpiryDue: a connection is closed with 4001 by the first sweep at or
// after its expiry, never before it.
func TestExpiryDue(t *testing.T) {
	at := time.Unix(1_700_000_003, 500_000_000) // inside a slot, fractional second
	e := newExpiries()
	c := &expiryConn{}
	e.add(c, at)
	e.sweep(at.Add(-time.Second))
	if c.code.Load() != 0 {
		t.Fatal("closed before the token expired")
	}
	e.sweep(at.Add(expirySlot))
	if got := c.code.Load(); got != closecode.TokenExpired {
		t.Fatalf("close code %d, want %d", got, closecode.TokenExpired)
	}
	if len(e.slots) != 0 {
		t.Fatalf("slots left: %v", e.slots)
	}
}

// TestExpiryRemove: a connection that went away before its token expired
// is not closed and leaves no slot behind.
func TestExpiryRemove(t *testing.T) {
	e := newExpiries()
	c := &expiryConn{}
	s := e.add(c, time.Unix(9999999999, 0))
	e.remove(c, s)
	if len(e.slots) != 0 {
		t.Fatalf("slots left: %v", e.slots)
	}
}
