package fault

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
)

// TestSentinelFailoverUnderTraffic kills the Redis primary of a Sentinel
// set under cross-node chat traffic between two node binaries: the
// replica is promoted, both nodes follow it, resubscribe and resync their
// clients; every acknowledged message is stored once and reaches its
// receiver on the other node, and presence is right afterwards.
func TestSentinelFailoverUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, two Redis servers, three Sentinels and two nodes")
	}
	db := testenv.Postgres(t)
	ss := testenv.StartSentinelSet(t)
	args := []string{"--redis-sentinels", strings.Join(ss.Addrs(), ","), "--redis-master", ss.MasterName,
		"--push-rate", "1000", "--push-burst", "1000", "--presence-ttl", "6s"}
	a := startProc(t, freeAddr(t), db, args...)
	b := startProc(t, freeAddr(t), db, args...)
	onA := func() []string { return []string{a.addr} }
	onB := func() []string { return []string{b.addr} }
	var pairs []*pair
	for i := range 4 {
		send, recv := onA, onB
		if i%2 == 1 {
			send, recv = onB, onA
		}
		p := newPair(fmt.Sprintf("sn%d", i), send)
		p.recvAddrs = recv
		p.startReceiver(t)
		pairs = append(pairs, p)
	}
	stop := make(chan struct{})
	done := traffic(pairs, stop)
	waitProgress(t, pairs, 40, wait)

	faultsTried.Add(1)
	before := ackedCount(pairs)
	kill := time.Now()
	ss.Primary.Kill()
	if !phxtest.WaitFor(30*time.Second, func() bool {
		m, err := ss.MasterAddr()
		return err == nil && m == ss.Replica.Addr()
	}) {
		t.Fatal("the replica was not promoted")
	}
	promoted := time.Since(kill)
	for _, n := range []*proc{a, b} {
		if !phxtest.WaitFor(30*time.Second, func() bool { return ready(n.addr) }) {
			t.Fatalf("node %s not ready after the failover", n.addr)
		}
	}
	t.Logf("primary killed with %d acknowledged; replica promoted after %v, both nodes ready after %v",
		before, promoted.Round(time.Millisecond), time.Since(kill).Round(time.Millisecond))
	// Keep chatting until every receiver was asked to rejoin (the nodes
	// resync their clients a few seconds after Redis is back).
	waitProgress(t, pairs, 80, time.Minute)
	if !phxtest.WaitFor(30*time.Second, func() bool {
		for _, p := range pairs {
			if p.resyncs.Load() == 0 {
				return false
			}
		}
		return true
	}) {
		t.Errorf("not every receiver was asked to resync")
	}
	waitProgress(t, pairs, 40, time.Minute)
	close(stop)
	if un := done(); un != 0 {
		t.Errorf("%d messages never acknowledged", un)
	}
	checkDelivered(t, pairs)

	// Presence: a new connection of each pair's sender joins on the
	// receiver's node and must see the receiver once and itself twice
	// (this socket and the sending one), no ghost of a rejoined socket.
	for _, p := range pairs {
		addr := p.recvAddrs()[0]
		var last string
		if !phxtest.WaitFor(20*time.Second, func() bool {
			st, err := presenceState(t, addr, p.sender, p.room)
			if err != nil {
				last = err.Error()
				return false
			}
			last = fmt.Sprint(st)
			return st[p.receiver] == 1 && st[p.sender] == 2 && len(st) == 2
		}) {
			t.Errorf("%s: presence after the failover: %s", p.name, last)
		}
	}
	verify(t, db, pairs)
}

func ready(addr string) bool {
	resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// presenceState joins room as user on addr and returns the number of
// metas per key of the presence_state it gets.
func presenceState(t *testing.T, addr, user, room string) (map[string]int, error) {
	c := phxtest.Connect(t, addr, user)
	defer c.Close()
	if r, err := c.Join(room, nil, wait); err != nil || r.Status != "ok" {
		return nil, fmt.Errorf("join: %v %v", r.Status, err)
	}
	f, err := c.ReadUntil(func(f phxtest.Frame) bool { return f.Event == "presence_state" }, wait)
	if err != nil {
		return nil, err
	}
	var st map[string]struct {
		Metas []json.RawMessage `json:"metas"`
	}
	if err := json.Unmarshal(f.Payload, &st); err != nil {
		return nil, err
	}
	out := map[string]int{}
	for k, v := range st {
		out[k] = len(v.Metas)
	}
	return out, nil
}

// TestClusterFailoverUnderTraffic: two node binaries on a Redis Cluster
// of three primaries and three replicas chat across nodes; one primary is
// killed under traffic. Its replica takes over, the nodes follow, resync
// their clients, and every acknowledged message is stored once and
// delivered; presence is right afterwards.
func TestClusterFailoverUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, six Redis servers and two nodes")
	}
	db := testenv.Postgres(t)
	rc := testenv.StartRedisCluster(t)
	args := []string{"--redis-cluster", strings.Join(rc.Seeds(), ","),
		"--push-rate", "1000", "--push-burst", "1000", "--presence-ttl", "6s"}
	a := startProc(t, freeAddr(t), db, args...)
	b := startProc(t, freeAddr(t), db, args...)
	pairs := crossPairs(t, "cl", a, b, 4)
	stop := make(chan struct{})
	done := traffic(pairs, stop)
	waitProgress(t, pairs, 40, wait)

	faultsTried.Add(1)
	before := ackedCount(pairs)
	kill := time.Now()
	victim := rc.Primaries()[0]
	victim.Kill()
	// Three answering primaries again: the victim's replica took over.
	if !phxtest.WaitFor(30*time.Second, func() bool { return len(rc.Primaries()) == 3 }) {
		t.Fatal("no replica was promoted")
	}
	if err := rc.WaitOK(30 * time.Second); err != nil {
		t.Fatalf("cluster did not recover: %v", err)
	}
	recovered := time.Since(kill)
	for _, n := range []*proc{a, b} {
		if !phxtest.WaitFor(30*time.Second, func() bool { return ready(n.addr) }) {
			t.Fatalf("node %s not ready after the failover", n.addr)
		}
	}
	t.Logf("primary %s killed with %d acknowledged; replica promoted and cluster ok after %v, both nodes ready after %v",
		victim.Addr(), before, recovered.Round(time.Millisecond), time.Since(kill).Round(time.Millisecond))
	finishFailover(t, db, pairs, stop, done)
}

// crossPairs makes n pairs whose sender and receiver sit on different
// nodes, half each way, with their receivers started.
func crossPairs(t *testing.T, name string, a, b *proc, n int) []*pair {
	onA := func() []string { return []string{a.addr} }
	onB := func() []string { return []string{b.addr} }
	var pairs []*pair
	for i := range n {
		send, recv := onA, onB
		if i%2 == 1 {
			send, recv = onB, onA
		}
		p := newPair(fmt.Sprintf("%s%d", name, i), send)
		p.recvAddrs = recv
		p.startReceiver(t)
		pairs = append(pairs, p)
	}
	return pairs
}

// finishFailover keeps the traffic going until every receiver was asked
// to resync, stops it, reports the figures and checks delivery, storage
// and presence.
func finishFailover(t *testing.T, db string, pairs []*pair, stop chan struct{}, done func() int) {
	t.Helper()
	waitProgress(t, pairs, 80, time.Minute)
	if !phxtest.WaitFor(30*time.Second, func() bool {
		for _, p := range pairs {
			if p.resyncs.Load() == 0 {
				return false
			}
		}
		return true
	}) {
		t.Errorf("not every receiver was asked to resync")
	}
	waitProgress(t, pairs, 40, time.Minute)
	close(stop)
	if un := done(); un != 0 {
		t.Errorf("%d messages never acknowledged", un)
	}
	checkDelivered(t, pairs)
	for _, p := range pairs {
		addr := p.recvAddrs()[0]
		var last string
		if !phxtest.WaitFor(20*time.Second, func() bool {
			st, err := presenceState(t, addr, p.sender, p.room)
			if err != nil {
				last = err.Error()
				return false
			}
			last = fmt.Sprint(st)
			return st[p.receiver] == 1 && st[p.sender] == 2 && len(st) == 2
		}) {
			t.Errorf("%s: presence after the failover: %s", p.name, last)
		}
	}
	verify(t, db, pairs)
}

// TestSilentSubscriberUnderTraffic: one node reaches Redis through a
// proxy that silently swallows the bytes of every connection open at the
// cut, as a dead NAT entry would; publishes from the other node go on.
// The node finds its subscription silent by its canary, reconnects and
// resyncs, and every acknowledged message reaches its receiver.
func TestSilentSubscriberUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, Redis and two nodes")
	}
	db := testenv.Postgres(t)
	srv := testenv.StartRedisServer(t)
	proxy := testenv.StartProxy(t, srv.Addr())
	common := []string{"--push-rate", "1000", "--push-burst", "1000", "--presence-ttl", "30s"}
	a := startProc(t, freeAddr(t), db, append([]string{"--redis-url", "redis://" + proxy.Addr() + "/0"}, common...)...)
	b := startProc(t, freeAddr(t), db, append([]string{"--redis-url", srv.URL()}, common...)...)
	pairs := crossPairs(t, "si", a, b, 4)
	stop := make(chan struct{})
	done := traffic(pairs, stop)
	waitProgress(t, pairs, 40, wait)

	faultsTried.Add(1)
	cut := time.Now()
	proxy.Freeze()
	if !phxtest.WaitFor(10*time.Second, func() bool { return !ready(a.addr) }) {
		t.Fatal("the node behind the cut stayed ready")
	}
	detected := time.Since(cut)
	if !phxtest.WaitFor(30*time.Second, func() bool { return ready(a.addr) }) {
		t.Fatal("the node behind the cut did not recover")
	}
	t.Logf("subscription cut silently: node not ready after %v, ready again after %v",
		detected.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond))
	if detected > 5*time.Second {
		t.Errorf("silent subscriber detected after %v, want within 5s", detected)
	}
	finishFailover(t, db, pairs, stop, done)
}

// checkDelivered waits (bounded) for every acknowledged message of pairs
// to reach its receiver, live or through a resync, logs each pair and the
// figures, and fails for each one that did not.
func checkDelivered(t *testing.T, pairs []*pair) {
	t.Helper()
	var resyncs int64
	var gap time.Duration
	undelivered := 0
	// The last live deliveries, and a resync still under way: a pooled
	// connection that went dead at the cut can fail later and cause one
	// more short outage, healed by a rejoin seconds afterwards (delay and
	// spread). Every acknowledged message must arrive; how soon is the
	// delivery gap reported below.
	phxtest.WaitFor(20*time.Second, func() bool {
		for _, p := range pairs {
			p.mu.Lock()
			for _, id := range p.acked {
				if !p.seen[id] {
					p.mu.Unlock()
					return false
				}
			}
			p.mu.Unlock()
		}
		return true
	})
	for _, p := range pairs {
		t.Log(p.summary())
		resyncs += p.resyncs.Load()
		p.mu.Lock()
		gap = max(gap, p.maxGap)
		for cid, id := range p.acked {
			if !p.seen[id] {
				undelivered++
				t.Logf("%s: %s (id %d) acknowledged, not delivered; the receiver saw up to id %d", p.name, cid, id, p.maxSeen)
			}
		}
		p.mu.Unlock()
	}
	// Figures: what the clients saw on their own (live and through the
	// resync), before the final check's rejoin.
	t.Logf("receivers resynced %d times; longest delivery gap %v; acknowledged but not yet delivered before the final rejoin: %d",
		resyncs, gap.Round(time.Millisecond), undelivered)
	if undelivered != 0 {
		t.Errorf("%d acknowledged messages not delivered live or through the resync", undelivered)
	}
}
