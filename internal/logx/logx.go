// Package logx keeps logs operable during outages: a failure that repeats
// thousands of times a second is logged once per interval with a count,
// and a dependency's outage is logged when it starts and when it ends.
package logx

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Repeated logs a recurring failure at most once per interval. The first
// occurrence is logged at once; the ones within the interval after it
// are counted, and the next line carries "repeats" (how many were not
// logged since the previous line). Flush logs the count left over, for a
// caller that knows the failure has stopped. Safe for concurrent use.
type Repeated struct {
	log   *slog.Logger // immutable
	level slog.Level   // immutable
	msg   string       // immutable
	every time.Duration

	mu     sync.Mutex
	last   time.Time // guarded by mu: when the last line was written
	counts int       // guarded by mu: occurrences not logged since
}

// NewRepeated returns a Repeated writing msg at level to log at most once
// per every.
func NewRepeated(log *slog.Logger, level slog.Level, msg string, every time.Duration) *Repeated {
	return &Repeated{log: log, level: level, msg: msg, every: every}
}

// Log records one occurrence; args are the slog attributes of this one
// (the logged line carries the latest occurrence's).
func (r *Repeated) Log(args ...any) {
	now := time.Now()
	r.mu.Lock()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.counts++
		r.mu.Unlock()
		return
	}
	n := r.counts
	r.last, r.counts = now, 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "repeats", n, "over", r.every.String())
	}
	r.log.Log(context.Background(), r.level, r.msg, args...)
}

// Flush logs the occurrences counted since the last line, if any, and
// lets the next one log at once.
func (r *Repeated) Flush(args ...any) {
	r.mu.Lock()
	n := r.counts
	r.last, r.counts = time.Time{}, 0
	r.mu.Unlock()
	if n > 0 {
		r.log.Log(context.Background(), r.level, r.msg, append(args, "repeats", n)...)
	}
}

// Outage logs a dependency's failures as one outage: Warn when the first
// failure arrives, Info with its length and the number of failures when
// the next success does. Safe for concurrent use; Fail and OK cost one
// uncontended lock when nothing changes.
type Outage struct {
	log  *slog.Logger // immutable
	what string       // immutable: "store", "redis", …

	mu     sync.Mutex
	down   bool      // guarded by mu
	since  time.Time // guarded by mu: first failure of the current outage
	failed int       // guarded by mu: failures during the current outage
}

// NewOutage returns an Outage naming what in its lines.
func NewOutage(log *slog.Logger, what string) *Outage {
	return &Outage{log: log, what: what}
}

// Fail records a failure.
func (o *Outage) Fail(err error) {
	o.mu.Lock()
	o.failed++
	start := !o.down
	if start {
		o.down, o.since = true, time.Now()
	}
	o.mu.Unlock()
	if start {
		o.log.Warn(o.what+" outage started", "err", err)
	}
}

// OK records a success, ending an outage if there was one.
func (o *Outage) OK() {
	o.mu.Lock()
	if !o.down {
		o.mu.Unlock()
		return
	}
	d, n := time.Since(o.since), o.failed
	o.down, o.failed = false, 0
	o.mu.Unlock()
	o.log.Info(o.what+" outage ended", "duration", d.Round(time.Millisecond).String(), "failures", n)
}

// Down reports whether an outage is under way.
func (o *Outage) Down() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.down
}

// Printf adapts a logger with a Printf(ctx, format, args) method (go-redis's
// internal logger) to slog: each line goes to log at Info, as "msg", with
// the formatted text, at most once per interval for each format.
type Printf struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	reps map[string]*Repeated // guarded by mu: format → its limiter
}

// NewPrintf returns a Printf adapter.
func NewPrintf(log *slog.Logger, every time.Duration) *Printf {
	return &Printf{log: log, every: every, reps: make(map[string]*Repeated)}
}

// Printf implements go-redis's internal.Logging.
func (p *Printf) Printf(_ context.Context, format string, v ...any) {
	p.mu.Lock()
	r := p.reps[format]
	if r == nil {
		if len(p.reps) >= 256 { // formats are constants; bound it anyway
			clear(p.reps)
		}
		r = NewRepeated(p.log, slog.LevelInfo, "redis client", p.every)
		p.reps[format] = r
	}
	p.mu.Unlock()
	r.Log("detail", fmt.Sprintf(format, v...))
}
