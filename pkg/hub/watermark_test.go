package hub

import (
	"testing"
	"time"
)

// A loss noticed late must resync from a sample taken before the last
// sign of life, not from the newest sample.
func TestWatermarkOlderThanLastSignOfLife(t *testing.T) {
	h := &Hub{}
	w := &h.marks
	if _, ok := w.before(time.Now()); ok {
		t.Fatal("no samples yet")
	}
	t0 := time.Unix(1000, 0)
	for i := range 100 { // more than the ring keeps
		w.add(t0.Add(time.Duration(i)*5*time.Second), int64(i*10), int64(i*100))
	}
	// Last sign of life at 99*5s-3s: the newest sample before it is #98
	// (taken at 490s, id 980), although #99 (id 990) is the newest.
	if s, _ := w.before(t0.Add(99*5*time.Second - 3*time.Second)); s.id != 980 || s.seq != 9800 {
		t.Fatalf("got %+v, want id 980 and seq 9800", s)
	}
	// Older than everything kept: the oldest kept sample.
	if s, _ := w.before(t0); s.id != 360 {
		t.Fatalf("got %d, want the oldest kept (360)", s.id)
	}
	lastAlive := t0.Add(98*5*time.Second + 500*time.Millisecond)
	// The margin pushes it before sample #98.
	if id, seq := h.safeWatermark(lastAlive); id != 970 || seq != 9700 {
		t.Fatalf("safeWatermark %d/%d, want 970/9700", id, seq)
	}
}
