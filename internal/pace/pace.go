// Package pace spreads a burst of work over time, so that what the work
// causes (clients reconnecting, channels rejoining) reaches the rest of
// the system as a steady stream instead of a thundering herd.
package pace

import (
	"context"
	"time"
)

// Tick is the interval between batches.
const Tick = 100 * time.Millisecond

// Spread calls do(i) for every i in [0, n), in even batches one Tick apart
// so that the last batch starts within d. It returns how many calls it
// made: n, or fewer when ctx ended first.
func Spread(ctx context.Context, n int, d time.Duration, do func(i int)) int {
	batches := max(int(d/Tick), 1)
	per := max((n+batches-1)/batches, 1)
	t := time.NewTicker(Tick)
	defer t.Stop()
	for i := range n {
		if i > 0 && i%per == 0 {
			select {
			case <-ctx.Done():
				return i
			case <-t.C:
			}
		}
		do(i)
	}
	return n
}
