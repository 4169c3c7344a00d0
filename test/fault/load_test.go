package fault

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/topic"
	"github.com/elchat/elchat/pkg/transport"
)

// TestSlowConsumers: 100 connections that stop reading while busy chats
// flow to them (each with a 4 KiB receive buffer) are dropped as slow
// consumers; the server's heap stays within the configured bound (queue
// bytes × clients) and a reference pair keeps chatting with nothing lost.
//
// Reproduce the memory figure: go test -race -run TestSlowConsumers -v ./test/fault/
func TestSlowConsumers(t *testing.T) {
	db := testenv.Postgres(t)
	const (
		queueBytes = 256 << 10
		slow       = 100
		chats      = 10
		bodySize   = 4000
	)
	n := phxtest.StartNode(t, phxtest.NodeOptions{DatabaseURL: db, PushRate: 1e6, PushBurst: 1 << 20,
		Transport: transport.Options{MaxQueueBytes: queueBytes, MaxQueueFrames: 1024, WriteTimeout: 3 * time.Second,
			IdleTimeout: 5 * time.Minute}})
	ref := newPair("slowref", func() []string { return []string{n.Addr} })
	ref.startReceiver(t)

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse

	// The non-readers: 10 connections of each chat's second member.
	var victims []*phxtest.Client
	for k := range chats {
		room := topic.ChatName(fmt.Sprintf("hot%d", k), fmt.Sprintf("slow%d", k))
		for range slow / chats {
			tok, _ := phxtest.TokenFor(fmt.Sprintf("slow%d", k))
			c, err := phxtest.Dial(n.Addr, phxtest.DialOptions{Token: tok, RcvBuf: 4096})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if r, err := c.Join(room, nil, wait); err != nil || r.Status != "ok" {
				t.Fatalf("victim join: %v %+v", err, r)
			}
			victims = append(victims, c) // and never read again
		}
	}
	var peak atomic.Uint64
	stopSample := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopSample:
				return
			case <-tk.C:
			}
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()

	faultsTried.Add(slow)
	body := strings.Repeat("x", bodySize)
	var wg sync.WaitGroup
	var hotAcked atomic.Int64
	for k := range chats {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("hot%d", k)
			room := topic.ChatName(user, fmt.Sprintf("slow%d", k))
			c := phxtest.Connect(t, n.Addr, user)
			if r, err := c.Join(room, nil, wait); err != nil || r.Status != "ok" {
				t.Errorf("hot join: %v %+v", err, r)
				return
			}
			for i := 0; i < 3000 && n.Engine.Stats().SlowConsumerCloses < slow; i++ {
				_, reason, err := c.Send(room, body, fmt.Sprintf("%s-%d", user, i), wait)
				c.Pushes = c.Pushes[:0]
				if err != nil || reason != "" {
					t.Errorf("hot sender %s: %v %s", user, err, reason)
					return
				}
				hotAcked.Add(1)
			}
		}()
	}
	// The reference pair chats meanwhile.
	refDone := make(chan int)
	go func() {
		un := 0
		for i := range 60 {
			if !ref.send(i, time.Minute) {
				un++
			}
		}
		refDone <- un
	}()
	wg.Wait()
	if un := <-refDone; un != 0 {
		t.Errorf("%d reference messages not acknowledged", un)
	}
	if !phxtest.WaitFor(30*time.Second, func() bool { return n.Engine.Stats().SlowConsumerCloses >= slow }) {
		t.Errorf("slow consumer closes = %d, want %d", n.Engine.Stats().SlowConsumerCloses, slow)
	}
	close(stopSample)
	<-sampled
	// Server side: only the reference pair and the hot senders remain.
	if !phxtest.WaitFor(30*time.Second, func() bool { return n.Engine.Len() <= 2+chats }) {
		t.Errorf("connections = %d, want <= %d once the slow consumers are gone", n.Engine.Len(), 2+chats)
	}
	bound := uint64(queueBytes * slow)
	grew := int64(peak.Load()) - int64(base)
	t.Logf("memory: heap in use %0.1f MiB before, peak %0.1f MiB (+%0.1f MiB) with %d non-reading clients; bound queue-bytes × clients = %d KiB × %d = %0.1f MiB; %d hot messages of %d bytes sent",
		float64(base)/(1<<20), float64(peak.Load())/(1<<20), float64(grew)/(1<<20), slow, queueBytes>>10, slow,
		float64(bound)/(1<<20), hotAcked.Load(), bodySize)
	// In-process the heap also holds the test's clients and the race
	// detector's shadow; allow the bound plus a fixed margin.
	if grew > int64(bound)+64<<20 {
		t.Errorf("heap grew by %d MiB, beyond the bound %d MiB + 64 MiB", grew>>20, bound>>20)
	}
	t.Log(ref.summary())
	verify(t, db, []*pair{ref})
	_ = victims
}

// TestPushFlood: a client that floods pushes gets "rate limited" error
// replies for the excess, what it got acknowledged is stored once and the
// rest not at all, and a reference pair keeps being served.
func TestPushFlood(t *testing.T) {
	db := testenv.Postgres(t)
	n := phxtest.StartNode(t, phxtest.NodeOptions{DatabaseURL: db, PushRate: 20, PushBurst: 40,
		Transport: transport.Options{IdleTimeout: 5 * time.Minute}})
	ref := newPair("floodref", func() []string { return []string{n.Addr} })
	ref.startReceiver(t)
	f := phxtest.Connect(t, n.Addr, "flooder")
	room := topic.ChatName("flooder", "victim")
	if r, err := f.Join(room, nil, wait); err != nil || r.Status != "ok" {
		t.Fatalf("join: %v %+v", err, r)
	}
	const flood = 500
	faultsTried.Add(1)
	refDone := make(chan int)
	go func() {
		un := 0
		for i := range 20 {
			if !ref.send(i, time.Minute) {
				un++
			}
			time.Sleep(60 * time.Millisecond) // well under the push rate
		}
		refDone <- un
	}()
	refs := map[string]string{}
	for i := range flood {
		cid := fmt.Sprintf("flood-%d", i)
		ref, err := f.Push(room, "new_message", map[string]string{"body": "flood " + cid, "client_id": cid})
		if err != nil {
			t.Fatal(err)
		}
		refs[ref] = cid
	}
	var okIDs, limitedIDs []string
	other := map[string]int{}
	replies := map[string]phxtest.Reply{}
	for len(replies) < flood {
		fr, err := f.ReadFrame(wait)
		if err != nil {
			t.Fatalf("flood replies: %d of %d, then %v", len(replies), flood, err)
		}
		if fr.Event == "phx_reply" && refs[fr.Ref] != "" {
			var r phxtest.Reply
			if err := json.Unmarshal(fr.Payload, &r); err != nil {
				t.Fatal(err)
			}
			replies[fr.Ref] = r
		}
	}
	for ref, cid := range refs {
		r := replies[ref]
		switch {
		case r.Status == "ok":
			okIDs = append(okIDs, cid)
		case r.Reason() == "rate limited":
			limitedIDs = append(limitedIDs, cid)
		default:
			other[r.Reason()]++
		}
	}
	t.Logf("flood of %d pushes: %d ok, %d rate limited, other %v", flood, len(okIDs), len(limitedIDs), other)
	// The join drew one token of the burst of 40.
	if len(limitedIDs) == 0 || len(okIDs) < 39 || len(other) != 0 {
		t.Errorf("flood: %d ok, %d rate limited, other %v", len(okIDs), len(limitedIDs), other)
	}
	if un := <-refDone; un != 0 {
		t.Errorf("%d reference messages not acknowledged during the flood", un)
	}
	if len(ref.errors) != 0 {
		t.Errorf("reference pair got error replies: %v", ref.errors)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	counts, err := phxtest.CountByClientID(ctx, db, append(append([]string{}, okIDs...), limitedIDs...))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range okIDs {
		if counts[id] != 1 {
			t.Errorf("acknowledged flood message %s stored %d times", id, counts[id])
			lostTotal.Add(1)
		}
	}
	for _, id := range limitedIDs {
		if counts[id] != 0 {
			t.Errorf("rate-limited message %s stored %d times", id, counts[id])
		}
	}
	ackedChecked.Add(int64(len(okIDs)))
	if err := f.Heartbeat(wait); err != nil {
		t.Errorf("flooder connection unusable after the flood: %v", err)
	}
	t.Log(ref.summary())
	verify(t, db, []*pair{ref})
}

// TestReconnectStorm: thousands of clients over 30 source addresses connect
// and join their lobby at once, retrying on 503/429 with phoenix.js's
// backoff; all succeed and a reference pair stays served throughout.
func TestReconnectStorm(t *testing.T) {
	clients := 3000
	if testing.Short() {
		clients = 500
	}
	db := testenv.Postgres(t)
	n := phxtest.StartNode(t, phxtest.NodeOptions{DatabaseURL: db, UpgradeRate: 400, UpgradeBurst: 200,
		PushRate: 1000, PushBurst: 1000, Transport: transport.Options{IdleTimeout: 5 * time.Minute}})
	ref := newPair("stormref", func() []string { return []string{n.Addr} })
	ref.startReceiver(t)
	faultsTried.Add(1)
	var ok, refusedTries, failed atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*phxtest.Client, clients)
	start := make(chan struct{})
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			user := fmt.Sprintf("storm%d", i)
			tok, _ := phxtest.TokenFor(user)
			o := phxtest.DialOptions{Token: tok, LocalIP: fmt.Sprintf("127.0.0.%d", 2+i%30)}
			for try := range 20 {
				c, err := phxtest.Dial(n.Addr, o)
				if err != nil {
					refusedTries.Add(1)
					time.Sleep(backoff(try))
					continue
				}
				r, err := c.Join("user:"+user, nil, wait)
				if err != nil || r.Status != "ok" {
					c.Close()
					refusedTries.Add(1)
					time.Sleep(backoff(try))
					continue
				}
				conns[i] = c
				ok.Add(1)
				return
			}
			failed.Add(1)
		}()
	}
	refDone := make(chan int)
	go func() {
		un := 0
		for i := range 30 {
			if !ref.send(i, time.Minute) {
				un++
			}
			time.Sleep(100 * time.Millisecond)
		}
		refDone <- un
	}()
	t0 := time.Now()
	close(start)
	wg.Wait()
	t.Logf("storm: %d of %d clients joined in %v, %d refused/failed tries retried, %d gave up; server connections %d",
		ok.Load(), clients, time.Since(t0).Round(time.Millisecond), refusedTries.Load(), failed.Load(), n.Engine.Len())
	if ok.Load() != int64(clients) {
		t.Errorf("%d of %d clients never joined", int64(clients)-ok.Load(), clients)
	}
	if un := <-refDone; un != 0 {
		t.Errorf("%d reference messages not acknowledged during the storm", un)
	}
	t.Log(ref.summary())
	verify(t, db, []*pair{ref})
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
