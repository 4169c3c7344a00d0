package fault

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
)

// TestNodeKill9 kills the node binary with SIGKILL under traffic and
// restarts it on the same port and database: clients reconnect, rejoin with
// last_id, and no acknowledged message is lost.
func TestNodeKill9(t *testing.T) {
	db := testenv.Postgres(t)
	addr := freeAddr(t)
	node := startProc(t, addr, db, "--push-rate", "1000", "--push-burst", "1000")
	addrs := func() []string { return []string{addr} }
	var pairs []*pair
	for i := range 4 {
		p := newPair(fmt.Sprintf("k%d", i), addrs)
		p.startReceiver(t)
		pairs = append(pairs, p)
	}
	stop := make(chan struct{})
	done := traffic(pairs, stop)
	for round := range 2 {
		waitProgress(t, pairs, 40, wait)
		faultsTried.Add(1)
		node.signal(t, syscall.SIGKILL)
		node.waitExit(t, wait)
		t.Logf("round %d: node killed with %d acknowledged so far", round, ackedCount(pairs))
		time.Sleep(300 * time.Millisecond)
		node = startProc(t, addr, db, "--push-rate", "1000", "--push-burst", "1000")
	}
	waitProgress(t, pairs, 40, time.Minute)
	close(stop)
	if un := done(); un != 0 {
		t.Errorf("%d messages never acknowledged", un)
	}
	for _, p := range pairs {
		t.Log(p.summary())
		if p.rejoins < 3 {
			t.Errorf("%s: receiver joined %d times, want a rejoin after each kill", p.name, p.rejoins)
		}
	}
	verify(t, db, pairs)
}

type closeEvent struct {
	code int
	at   time.Time
}

// TestGracefulDrain sends SIGTERM to a node under traffic: sockets close
// with 1012 spread over the drain time, /readyz answers 503 on a kept-alive
// connection while draining, every acknowledged message is stored, and the
// clients move to a second node on the same database and catch up.
func TestGracefulDrain(t *testing.T) {
	db := testenv.Postgres(t)
	// Two nodes of one cluster: same database, same Redis bus, so a message
	// acknowledged on A while its receiver already sits on B reaches it.
	rdb := testenv.Redis(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	const drain = 3 * time.Second
	a := startProc(t, addrA, db, "--drain-timeout", drain.String(), "--push-rate", "1000", "--push-burst", "1000",
		"--redis-url", rdb, "--node-id", "a")
	startProc(t, addrB, db, "--push-rate", "1000", "--push-burst", "1000", "--redis-url", rdb, "--node-id", "b")
	addrs := func() []string { return []string{addrA, addrB} }
	var pairs []*pair
	for i := range 4 {
		p := newPair(fmt.Sprintf("d%d", i), addrs)
		p.startReceiver(t)
		pairs = append(pairs, p)
	}
	// Idle lobby clients on A, so that the drain has enough sockets to spread.
	const idle = 40
	var mu sync.Mutex
	var closes []closeEvent
	var wg sync.WaitGroup
	for i := range idle {
		c := phxtest.Connect(t, addrA, fmt.Sprintf("idle%d", i))
		if r, err := c.Join(fmt.Sprintf("user:idle%d", i), nil, wait); err != nil || r.Status != "ok" {
			t.Fatalf("idle join: %v %+v", err, r)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ce, err := c.ExpectClose(time.Minute)
			ev := closeEvent{code: -1, at: time.Now()}
			c.Close() // as a browser does once the close frame arrived
			if err == nil {
				ev.code = ce.Code
			}
			mu.Lock()
			closes = append(closes, ev)
			mu.Unlock()
		}()
	}
	// A kept-alive HTTP connection to A for /readyz during the drain.
	hc, err := net.Dial("tcp", addrA)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hbr := bufio.NewReader(hc)
	readyz := func() (int, error) {
		_ = hc.SetDeadline(time.Now().Add(wait))
		if _, err := io.WriteString(hc, "GET /readyz HTTP/1.1\r\nHost: "+addrA+"\r\n\r\n"); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(hbr, nil)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := readyz(); err != nil || code != 200 {
		t.Fatalf("readyz before drain: %d %v", code, err)
	}

	stop := make(chan struct{})
	done := traffic(pairs, stop)
	waitProgress(t, pairs, 40, wait)
	faultsTried.Add(1)
	a.signal(t, syscall.SIGTERM)
	termAt := time.Now()
	var ready []int
	for range 50 { // the signal takes a moment to land: poll until 503
		code, err := readyz()
		if err != nil {
			break
		}
		ready = append(ready, code)
		if code == 503 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("readyz on a kept-alive connection while draining: %v", ready)
	if len(ready) == 0 || ready[len(ready)-1] != 503 {
		t.Errorf("readyz while draining: got %v, want 503", ready)
	}
	if _, err := net.DialTimeout("tcp", addrA, time.Second); err == nil {
		t.Logf("note: node A still accepts new TCP connections while draining")
	}
	a.waitExit(t, drain+15*time.Second)
	t.Logf("node A exited %v after SIGTERM", time.Since(termAt).Round(10*time.Millisecond))
	waitProgress(t, pairs, 40, time.Minute) // on node B now
	close(stop)
	if un := done(); un != 0 {
		t.Errorf("%d messages never acknowledged", un)
	}
	wg.Wait()
	sort.Slice(closes, func(i, j int) bool { return closes[i].at.Before(closes[j].at) })
	bad := 0
	for _, c := range closes {
		if c.code != 1012 {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d idle sockets were not closed with 1012", bad, len(closes))
	}
	span := closes[len(closes)-1].at.Sub(closes[0].at)
	t.Logf("%d sockets closed with 1012 over %v (drain timeout %v)", len(closes)-bad, span.Round(time.Millisecond), drain)
	if span < drain/3 {
		t.Errorf("closes not spread: %d sockets within %v, drain timeout %v", len(closes), span, drain)
	}
	for _, p := range pairs {
		t.Log(p.summary())
	}
	verify(t, db, pairs)
}
