package gopool

import (
	"sync"
	"testing"
	"time"
)

// At most Max tasks run at once; the one past it is refused at once, and
// a goroutine freed by a finished task takes the next one.
func TestMaxBusy(t *testing.T) {
	p := New(2, time.Minute)
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(2)
	for range 2 {
		if !p.Go(func() { started.Done(); <-release }) {
			t.Fatal("a task under Max was refused")
		}
	}
	started.Wait()
	if p.Go(func() {}) {
		t.Fatal("a third task ran while Max = 2 were busy")
	}
	close(release)
	ran := make(chan struct{})
	deadline := time.Now().Add(5 * time.Second)
	for !p.Go(func() { close(ran) }) {
		if time.Now().After(deadline) {
			t.Fatal("no goroutine took work after the busy ones finished")
		}
		time.Sleep(time.Millisecond)
	}
	<-ran
	if n := p.n.Load(); n != 2 {
		t.Fatalf("%d goroutines alive, want the 2 kept ones", n)
	}
}

// Idle goroutines exit, and the pool starts new ones afterwards.
func TestIdleExit(t *testing.T) {
	p := New(4, 20*time.Millisecond)
	done := make(chan struct{})
	p.Go(func() { close(done) })
	<-done
	deadline := time.Now().Add(5 * time.Second)
	for p.n.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines still alive after the idle time", p.n.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	again := make(chan struct{})
	if !p.Go(func() { close(again) }) {
		t.Fatal("refused after the pool emptied")
	}
	<-again
}

// Many tasks from many goroutines all run, never more than Max at once.
func TestConcurrentGo(t *testing.T) {
	const limit = 8
	p := New(limit, time.Second)
	var mu sync.Mutex
	running, peak, ran, refused := 0, 0, 0, 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				var task sync.WaitGroup
				task.Add(1)
				ok := p.Go(func() {
					defer task.Done()
					mu.Lock()
					running++
					peak = max(peak, running)
					mu.Unlock()
					time.Sleep(10 * time.Microsecond)
					mu.Lock()
					running--
					ran++
					mu.Unlock()
				})
				if !ok {
					task.Done()
					mu.Lock()
					refused++
					mu.Unlock()
				}
				task.Wait()
			}
		}()
	}
	wg.Wait()
	if peak > limit {
		t.Fatalf("%d tasks ran at once, Max is %d", peak, limit)
	}
	if ran+refused != 16*200 || ran == 0 {
		t.Fatalf("ran %d, refused %d of %d", ran, refused, 16*200)
	}
}

// Close lets the kept goroutines go at once, not after the idle time, and
// refuses new work.
func TestClose(t *testing.T) {
	p := New(4, time.Hour)
	done := make(chan struct{})
	p.Go(func() { close(done) })
	<-done
	p.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.n.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines alive after Close", p.n.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if p.Go(func() {}) {
		t.Fatal("Go ran a task after Close")
	}
}
