package fault

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/transport"
)

// traffic runs every pair's sender until stop is closed; each message is
// retried (same client id) until acknowledged.
func traffic(pairs []*pair, stop <-chan struct{}) (wait func() int) {
	var wg sync.WaitGroup
	var unacked atomic.Int64
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if !p.send(i, 90*time.Second) {
					unacked.Add(1)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return func() int { wg.Wait(); return int(unacked.Load()) }
}

func ackedCount(pairs []*pair) int {
	n := 0
	for _, p := range pairs {
		p.mu.Lock()
		n += len(p.acked)
		p.mu.Unlock()
	}
	return n
}

// waitProgress waits until the pairs acked `more` messages beyond now.
func waitProgress(t *testing.T, pairs []*pair, more int, d time.Duration) {
	t.Helper()
	base := ackedCount(pairs)
	if !phxtest.WaitFor(d, func() bool { return ackedCount(pairs) >= base+more }) {
		t.Fatalf("no progress: %d acked in %v (wanted %d more)", ackedCount(pairs)-base, d, more)
	}
}

// TestPostgresRestartUnderTraffic stops PostgreSQL (fast shutdown), then
// kills it (immediate shutdown), under traffic. Senders must get error
// replies rather than hang, every acknowledged message must be stored once
// and reach its receiver, and service must resume.
func TestPostgresRestartUnderTraffic(t *testing.T) {
	pg := testenv.StartPostgresServer(t)
	n := phxtest.StartNode(t, phxtest.NodeOptions{DatabaseURL: pg.URL(), StoreTimeout: 2 * time.Second,
		PushRate: 1000, PushBurst: 1000, Transport: transport.Options{IdleTimeout: 5 * time.Minute}})
	addrs := func() []string { return []string{n.Addr} }
	var pairs []*pair
	for i := range 4 {
		p := newPair(fmt.Sprintf("pg%d", i), addrs)
		p.startReceiver(t)
		pairs = append(pairs, p)
	}
	hb := phxtest.Connect(t, n.Addr, "pg-watch")
	stop := make(chan struct{})
	done := traffic(pairs, stop)
	waitProgress(t, pairs, 20, wait)

	for _, fault := range []struct {
		name string
		down func()
	}{{"stop (fast shutdown)", pg.Stop}, {"kill (immediate shutdown)", pg.Kill}} {
		faultsTried.Add(1)
		fault.down()
		t.Logf("postgres %s", fault.name)
		// While the database is away the node still answers heartbeats, and a
		// join that needs the store is refused, not left hanging.
		for range 3 {
			if err := hb.Heartbeat(wait); err != nil {
				t.Fatalf("heartbeat with the database down: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		r, err := hb.Join("user:pg-watch", nil, wait)
		if err != nil {
			t.Fatalf("lobby join with the database down hung or failed: %v", err)
		}
		t.Logf("lobby join with the database down: %s %s", r.Status, r.Response)
		if r.Status != "error" {
			t.Errorf("lobby join with the database down: got %s, want an error reply", r.Status)
		}
		if err := pg.Start(); err != nil {
			t.Fatalf("restart postgres: %v", err)
		}
		waitProgress(t, pairs, 20, time.Minute)
	}
	close(stop)
	if un := done(); un != 0 {
		t.Errorf("%d messages never acknowledged after the database came back", un)
	}
	var errs, timeouts int
	for _, p := range pairs {
		t.Log(p.summary())
		p.mu.Lock()
		for _, v := range p.errors {
			errs += v
		}
		timeouts += p.timeouts
		p.mu.Unlock()
	}
	if errs == 0 {
		t.Errorf("no sender got an error reply while the database was down")
	}
	if timeouts != 0 {
		t.Errorf("%d sends got no reply within %v (hang) while the database was down", timeouts, wait)
	}
	verify(t, pg.URL(), pairs)
}
