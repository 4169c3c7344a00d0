// Package gopool runs short tasks on goroutines kept from earlier tasks.
//
// A WebSocket handshake needs a goroutine of its own (it reads the request
// with a deadline, so it must not run on the accept loop), and its stack
// grows well past a new goroutine's 8 KiB while it parses the request and
// verifies the token. On a fresh goroutine per connection that growth is a
// stack copy per connect: a twentieth of a node's connect CPU in the
// profiles. A kept goroutine has grown once.
package gopool

import (
	"sync"
	"sync/atomic"
	"time"
)

// Pool runs at most Max tasks at once. Goroutines idle for longer than Idle
// exit, so a burst of connects leaves nothing behind once it is over.
type Pool struct {
	max  int32         // immutable
	idle time.Duration // immutable
	work chan func()   // unbuffered: a send succeeds only if a goroutine waits
	done chan struct{} // closed by Close: waiting goroutines exit, Go refuses
	once sync.Once
	n    atomic.Int32 // goroutines alive, busy or waiting
}

// New returns a pool of at most max goroutines (max > 0), each exiting
// after idle without work.
func New(max int, idle time.Duration) *Pool {
	return &Pool{max: int32(max), idle: idle, work: make(chan func()), done: make(chan struct{})}
}

// Close makes waiting goroutines exit now and busy ones once their task
// returns; Go refuses from then on.
func (p *Pool) Close() {
	p.once.Do(func() { close(p.done) })
}

// Go runs fn on a waiting goroutine, or on a new one while fewer than Max
// are alive. It returns false, without running fn, when Max are busy or
// the pool is closed.
func (p *Pool) Go(fn func()) bool {
	select {
	case <-p.done:
		return false
	default:
	}
	select {
	case p.work <- fn:
		return true
	default:
	}
	for {
		n := p.n.Load()
		if n >= p.max {
			// Every goroutine is alive; one may be about to wait.
			select {
			case p.work <- fn:
				return true
			default:
				return false
			}
		}
		if p.n.CompareAndSwap(n, n+1) {
			go p.run(fn)
			return true
		}
	}
}

func (p *Pool) run(fn func()) {
	t := time.NewTimer(p.idle)
	defer t.Stop()
	for {
		fn()
		t.Reset(p.idle)
		select {
		case fn = <-p.work:
		case <-t.C:
			p.n.Add(-1)
			// A Go that saw n at Max just before the decrement found no
			// taker and refused; it cannot have handed fn to this
			// goroutine, which no longer receives.
			return
		case <-p.done:
			p.n.Add(-1)
			return
		}
	}
}
