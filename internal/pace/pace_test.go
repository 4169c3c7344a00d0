package pace

import (
	"context"
	"testing"
	"time"
)

func TestSpread(t *testing.T) {
	var at []time.Time
	start := time.Now()
	n := Spread(t.Context(), 10, 4*Tick, func(int) { at = append(at, time.Now()) })
	if n != 10 || len(at) != 10 {
		t.Fatalf("did %d calls, recorded %d", n, len(at))
	}
	// 10 calls over 4 ticks: batches of 3, so the last batch starts after
	// three ticks, not at once.
	if d := at[9].Sub(start); d < 3*Tick-10*time.Millisecond {
		t.Fatalf("all calls within %v: not spread", d)
	}
	if d := at[2].Sub(start); d > Tick {
		t.Fatalf("first batch took %v", d)
	}
}

func TestSpreadStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	n := Spread(ctx, 100, 10*Tick, func(i int) {
		if i == 20 {
			cancel()
		}
	})
	if n >= 100 || n < 21 {
		t.Fatalf("did %d calls after the context ended at 21", n)
	}
}

func TestSpreadZeroDuration(t *testing.T) {
	start := time.Now()
	if n := Spread(t.Context(), 50, 0, func(int) {}); n != 50 || time.Since(start) > Tick/2 {
		t.Fatalf("did %d calls in %v with no spread", n, time.Since(start))
	}
}
