package hub

import "time"

// tokenBucket is a token bucket of PushBurst tokens refilled at PushRate
// per second, the per-connection meter of joins and events. Its zero
// value is a full bucket. Guarded by the owning Client's mu.
type tokenBucket struct {
	tokens float64 // tokens left at last, minus burst: 0 is full
	last   int64   // unix nanoseconds of the last take; 0: never
}

// allow takes a token if there is one at now.
func (b *tokenBucket) allow(now time.Time, rate float64, burst int) bool {
	t := now.UnixNano()
	// Stored as the deficit below a full bucket, so the zero value needs
	// no initialisation.
	have := float64(burst) + b.tokens
	if b.last != 0 {
		have += float64(t-b.last) / 1e9 * rate
	}
	have = min(have, float64(burst))
	if have < 1 {
		return false
	}
	b.tokens, b.last = have-1-float64(burst), t
	return true
}
