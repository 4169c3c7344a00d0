package hub

import (
	"context"
	"sync"
)

// The request stage runs the work that waits on the store or on presence
// (joins, messages, read marks, history, presence changes) off the
// transport's event loop, so a slow database or Redis never delays a
// heartbeat or another connection's frames.
//
// Each client has a mailbox of tasks, handled one at a time in arrival
// order; a client with tasks sits in the stage's run queue once, and a
// fixed pool of goroutines takes clients from it, one task per turn, so a
// busy connection cannot starve the others. The pool bounds the node's
// concurrent store and presence calls; the mailbox bound (with paused
// reads, see Client.enqueue) bounds each connection's memory. An idle
// client has an empty mailbox and costs the stage nothing.

// task is one request waiting in a client's mailbox.
type task struct {
	run     func(c *Client)
	cleanup bool // withdraws presence: runs even after the connection closed
}

// stage is the pool and its run queue.
type stage struct {
	mu     sync.Mutex
	cond   sync.Cond // signalled when queue grows or stopping is set; uses mu
	queue  []*Client // guarded by mu; clients with tasks, FIFO from head
	head   int       // guarded by mu
	busy   int       // guarded by mu; clients being run right now
	parked int       // guarded by mu; clients suspended on a request that goes on without a goroutine
	stop   bool      // guarded by mu
	idle   sync.Cond // signalled when the queue is empty and nothing runs; uses mu
	wg     sync.WaitGroup
	panics func(any) // immutable; reports a task's panic
}

func newStage(workers int, panics func(any)) *stage {
	s := &stage{panics: panics}
	s.cond.L = &s.mu
	s.idle.L = &s.mu
	s.wg.Add(workers)
	for range workers {
		go s.work()
	}
	return s
}

// schedule puts c in the run queue. The caller has just marked c as
// scheduled, so c is never queued twice.
func (s *stage) schedule(c *Client) {
	s.mu.Lock()
	s.queue = append(s.queue, c)
	s.mu.Unlock()
	s.cond.Signal()
}

// park counts a suspended client, so that wait also waits for it; unpark
// schedules it again.
func (s *stage) park() {
	s.mu.Lock()
	s.parked++
	s.mu.Unlock()
}

// unparkIdle undoes a park whose request never started.
func (s *stage) unparkIdle() {
	s.mu.Lock()
	s.parked--
	if s.busy == 0 && s.parked == 0 && s.head == len(s.queue) {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
}

func (s *stage) unpark(c *Client) {
	s.mu.Lock()
	s.parked--
	s.queue = append(s.queue, c)
	s.mu.Unlock()
	s.cond.Signal()
}

func (s *stage) next() *Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.head == len(s.queue) && !s.stop {
		s.cond.Wait()
	}
	if s.head == len(s.queue) {
		return nil
	}
	c := s.queue[s.head]
	s.queue[s.head] = nil
	s.head++
	if s.head == len(s.queue) {
		// Reuse the storage once drained, unless a burst grew it.
		if cap(s.queue) > 4096 {
			s.queue = nil
		} else {
			s.queue = s.queue[:0]
		}
		s.head = 0
	}
	s.busy++
	return c
}

func (s *stage) done() {
	s.mu.Lock()
	s.busy--
	if s.busy == 0 && s.parked == 0 && s.head == len(s.queue) {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
}

func (s *stage) work() {
	defer s.wg.Done()
	for {
		c := s.next()
		if c == nil {
			return
		}
		if c.runOne(s.panics) {
			s.schedule(c)
		}
		s.done()
	}
}

// wait returns once no task is queued or running, or ctx ends.
func (s *stage) wait(ctx context.Context) error {
	stopWake := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.idle.Broadcast()
		s.mu.Unlock()
	})
	defer stopWake()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.busy > 0 || s.parked > 0 || s.head < len(s.queue) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.idle.Wait()
	}
	return nil
}

// close stops the pool once the queued tasks are done.
func (s *stage) close() {
	s.mu.Lock()
	s.stop = true
	s.mu.Unlock()
	s.cond.Broadcast()
	s.wg.Wait()
}
