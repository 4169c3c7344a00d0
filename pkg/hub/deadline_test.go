package hub

import (
	"testing"
	"time"
)

// The messages of one window share a deadline, which leaves each at least
// 98 % of StoreTimeout; the next window gets a new one.
func TestMessageCtxShared(t *testing.T) {
	h := New(Config{StoreTimeout: time.Second})
	defer h.Close()
	start := time.Now()
	a, b := h.messageCtx(), h.messageCtx()
	if a != b {
		t.Fatal("two saves in one window got different contexts")
	}
	d, ok := a.Deadline()
	if !ok {
		t.Fatal("no deadline")
	}
	if left := d.Sub(start); left < 980*time.Millisecond || left > time.Second+50*time.Millisecond {
		t.Fatalf("deadline %v after the call, want about StoreTimeout (1s)", left)
	}
	time.Sleep(time.Second/deadlineWindows + 5*time.Millisecond)
	c := h.messageCtx()
	if c == a {
		t.Fatal("the window ended but the context was not renewed")
	}
	if d2, _ := c.Deadline(); !d2.After(d) {
		t.Fatalf("renewed deadline %v is not later than %v", d2, d)
	}
	if a.Err() != nil {
		t.Fatal("the old context ended before its deadline")
	}
}
