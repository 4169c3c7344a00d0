package hub

import (
	"testing"
	"time"
)

// The bucket lets a burst through, then the rate, and refills to the
// burst at most.
func TestTokenBucket(t *testing.T) {
	var b tokenBucket
	t0 := time.Unix(1000, 0)
	n := 0
	for b.allow(t0, 10, 5) {
		n++
	}
	if n != 5 {
		t.Fatalf("burst: %d allowed, want 5", n)
	}
	if b.allow(t0.Add(50*time.Millisecond), 10, 5) {
		t.Fatal("allowed before a token refilled")
	}
	if !b.allow(t0.Add(100*time.Millisecond), 10, 5) {
		t.Fatal("no token after 100ms at 10/s")
	}
	// A long pause refills to the burst, not beyond.
	later := t0.Add(time.Hour)
	n = 0
	for b.allow(later, 10, 5) {
		n++
	}
	if n != 5 {
		t.Fatalf("after a pause: %d allowed, want 5", n)
	}
}
