// Package hubtest holds the shared test suites of the hub's seams. Every
// implementation of hub.Bus and hub.Presence (the in-process ones, the Redis
// ones) runs the same suite, so they all keep the contract the hub relies
// on, not just the one their author had in mind.
//
// The suites allow asynchronous implementations: a subscription may take
// effect some time after Subscribe returns (the Redis bus queues it to the
// goroutine that owns the connection), so the suite waits for it with probe
// frames instead of assuming it is immediate.
package hubtest

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/hub"
)

// Timeouts of the suites. Generous: they bound failures, not successes.
const (
	eventually = 10 * time.Second
	// quiet is how long the suite waits to conclude that a frame was not
	// delivered. A negative can only be observed by waiting.
	quiet = 300 * time.Millisecond
)

// RunBus runs the Bus contract against clusters made by newCluster, which
// returns nodes buses that reach each other (and nothing else) and cleans
// them up with t.Cleanup. The suite calls Run on every node itself.
func RunBus(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	t.Run("Fanout", func(t *testing.T) { testFanout(t, newCluster) })
	t.Run("Unsubscribe", func(t *testing.T) { testUnsubscribe(t, newCluster) })
	t.Run("Order", func(t *testing.T) { testOrder(t, newCluster) })
	t.Run("ByteIdentical", func(t *testing.T) { testBytes(t, newCluster) })
	t.Run("ManyTopics", func(t *testing.T) { testManyTopics(t, newCluster) })
	t.Run("ConcurrentPublish", func(t *testing.T) { testConcurrent(t, newCluster) })
	t.Run("ConfirmedSubscribe", func(t *testing.T) { testConfirmed(t, newCluster) })
}

// received is one frame a node's Run delivered.
type received struct {
	topic string
	frame []byte
}

// node wraps a Bus with the frames its Run delivered.
type node struct {
	hub.Bus
	i int

	mu     sync.Mutex
	frames []received // guarded by mu
	signal chan struct{}
}

// The node is the BusHandler of its bus: it records deliveries and ignores
// the rest, which the hub's own tests cover.
func (n *node) Ingress(string, string, string, []byte) error                         { return nil }
func (n *node) PresenceChanged(string, map[string][]hub.Meta, map[string][]hub.Meta) {}
func (n *node) Down(time.Time)                                                       {}
func (n *node) Up(hub.Loss)                                                          {}
func (n *node) ResyncRequested(int64, string)                                        {}
func (n *node) ResyncTopics([]string, string)                                        {}

func (n *node) Deliver(topic string, frame []byte) {
	// Copy: the contract lets the bus reuse nothing, but a test that kept a
	// reference to a buffer the bus does reuse would hide that bug.
	f := bytes.Clone(frame)
	n.mu.Lock()
	n.frames = append(n.frames, received{topic, f})
	n.mu.Unlock()
	select {
	case n.signal <- struct{}{}:
	default:
	}
}

// take removes and returns every frame received so far.
func (n *node) take() []received {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.frames
	n.frames = nil
	return out
}

// start makes the cluster and runs every node until the test ends.
func start(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus, count int) []*node {
	t.Helper()
	buses := newCluster(t, count)
	if len(buses) != count {
		t.Fatalf("newCluster returned %d buses, want %d", len(buses), count)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	nodes := make([]*node, count)
	for i, b := range buses {
		n := &node{Bus: b, i: i, signal: make(chan struct{}, 1)}
		nodes[i] = n
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Run(ctx, n); err != nil && ctx.Err() == nil {
				t.Errorf("node %d: Run: %v", i, err)
			}
		}()
	}
	// Registered after newCluster's cleanups, so it runs before them: Run
	// returns before the buses are closed.
	t.Cleanup(func() { cancel(); wg.Wait() })
	return nodes
}

// Frame builds an encoded Phoenix broadcast for topic carrying body, as the
// hub would.
func Frame(topic, event, body string) []byte {
	return fmt.Appendf(nil, `[null,null,%q,%q,{"body":%q}]`, topic, event, body)
}

// subscribe subscribes b to topic; the suites that do not test
// confirmation wait for delivery with probes instead.
func subscribe(t *testing.T, b hub.Bus, topic string) <-chan struct{} {
	t.Helper()
	live, err := b.Subscribe(topic)
	if err != nil {
		t.Fatal(err)
	}
	return live
}

// await waits until every subscriber receives frames from pub on topic:
// it publishes probe frames until each has one, then discards whatever
// the subscribers received so far (probes included).
func await(t *testing.T, pub *node, topic string, subs ...*node) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	waiting := append([]*node(nil), subs...)
	for seq := 0; len(waiting) > 0; seq++ {
		if time.Now().After(deadline) {
			t.Fatalf("node %d never received frames on %q from node %d", waiting[0].i, topic, pub.i)
		}
		probe := Frame(topic, "probe", strconv.Itoa(seq))
		if err := pub.Publish(topic, probe); err != nil {
			t.Logf("probe publish: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
		rest := waiting[:0]
		for _, n := range waiting {
			if !n.saw(topic, "probe") {
				rest = append(rest, n)
			}
		}
		waiting = rest
	}
	// A probe still in flight would land in the real assertions: wait a
	// little, then drop everything.
	time.Sleep(quiet)
	for _, n := range subs {
		n.take()
	}
	pub.take()
}

func (n *node) saw(topic, event string) bool {
	needle := fmt.Appendf(nil, `,%q,%q,`, topic, event)
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range n.frames {
		if r.topic == topic && bytes.Contains(r.frame, needle) {
			return true
		}
	}
	return false
}

// collect waits until n has received want frames whose topic passes keep,
// and returns them, failing after eventually. Frames that fail keep are
// discarded.
func (n *node) collect(t *testing.T, want int, keep func(received) bool) []received {
	t.Helper()
	var out []received
	deadline := time.NewTimer(eventually)
	defer deadline.Stop()
	for {
		for _, r := range n.take() {
			if keep == nil || keep(r) {
				out = append(out, r)
			}
		}
		if len(out) >= want {
			return out
		}
		select {
		case <-n.signal:
		case <-time.After(10 * time.Millisecond):
		case <-deadline.C:
			t.Fatalf("node %d received %d frames, want %d", n.i, len(out), want)
		}
	}
}

// none asserts that n receives nothing (matching keep) for a while.
func (n *node) none(t *testing.T, keep func(received) bool) {
	t.Helper()
	time.Sleep(quiet)
	for _, r := range n.take() {
		if keep == nil || keep(r) {
			t.Errorf("node %d received an unexpected frame on %q: %q", n.i, r.topic, r.frame)
		}
	}
}

func onTopic(topic string) func(received) bool {
	return func(r received) bool { return r.topic == topic }
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// testFanout: a frame published on node 0 reaches the subscribed nodes
// exactly once, and neither the unsubscribed node nor the publisher, which
// delivers to its own subscribers itself.
func testFanout(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	nodes := start(t, newCluster, 4)
	const topic = "chat:alice:bob"
	for _, n := range nodes[:3] { // node 0 subscribes too: it must still not hear itself
		subscribe(t, n, topic)
	}
	await(t, nodes[0], topic, nodes[1], nodes[2])
	// A frame from another node proves node 0 is subscribed, so that not
	// hearing its own frames below means something.
	await(t, nodes[1], topic, nodes[0])
	for _, n := range nodes { // node 1's probes reached node 2 too
		n.take()
	}

	frame := Frame(topic, "new_message", "hello")
	must(t, nodes[0].Publish(topic, frame))
	for _, n := range nodes[1:3] {
		got := n.collect(t, 1, onTopic(topic))
		if !bytes.Equal(got[0].frame, frame) {
			t.Errorf("node %d got %q, want %q", n.i, got[0].frame, frame)
		}
	}
	for _, n := range nodes[1:3] {
		n.none(t, onTopic(topic)) // exactly once
	}
	nodes[3].none(t, nil)
	nodes[0].none(t, nil)

	// Another topic nobody subscribes to goes nowhere.
	must(t, nodes[0].Publish("chat:carol:dave", Frame("chat:carol:dave", "new_message", "x")))
	for _, n := range nodes {
		n.none(t, nil)
	}
}

// testUnsubscribe: after Unsubscribe (and whatever delay the bus documents)
// nothing more arrives, while other subscribers and topics are unaffected.
func testUnsubscribe(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	nodes := start(t, newCluster, 3)
	const topic, other = "user:42", "user:43"
	subscribe(t, nodes[1], topic)
	subscribe(t, nodes[1], other)
	subscribe(t, nodes[2], topic)
	await(t, nodes[0], topic, nodes[1], nodes[2])
	await(t, nodes[0], other, nodes[1])

	must(t, nodes[1].Unsubscribe(topic))
	// Unsubscribe may be asynchronous: wait until a frame is not delivered.
	deadline := time.Now().Add(eventually)
	for {
		must(t, nodes[0].Publish(topic, Frame(topic, "probe", "u")))
		nodes[2].collect(t, 1, onTopic(topic))
		time.Sleep(quiet)
		if len(nodes[1].take()) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node 1 still receives frames after Unsubscribe")
		}
	}
	must(t, nodes[0].Publish(topic, Frame(topic, "new_message", "after")))
	must(t, nodes[0].Publish(other, Frame(other, "new_message", "still")))
	nodes[2].collect(t, 1, onTopic(topic))
	got := nodes[1].collect(t, 1, nil)
	if got[0].topic != other {
		t.Fatalf("node 1 received a frame on %q after unsubscribing", got[0].topic)
	}
	nodes[1].none(t, nil)

	// Subscribing again resumes delivery.
	subscribe(t, nodes[1], topic)
	await(t, nodes[0], topic, nodes[1])

	// Unsubscribing a topic never subscribed is harmless.
	must(t, nodes[2].Unsubscribe("chat:nobody:here"))
}

// testOrder: frames from one publisher on one topic arrive in publish
// order, with two publishers interleaving on the same topic.
func testOrder(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	nodes := start(t, newCluster, 3)
	const topic = "chat:a:b"
	const count = 2000
	subscribe(t, nodes[2], topic)
	await(t, nodes[0], topic, nodes[2])
	await(t, nodes[1], topic, nodes[2])

	var wg sync.WaitGroup
	for _, pub := range nodes[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range count {
				f := Frame(topic, "seq", fmt.Sprintf("%d/%d", pub.i, i))
				for pub.Publish(topic, f) != nil {
					// A bounded queue may refuse when full; the
					// contract is about order, so retry.
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	got := nodes[2].collect(t, 2*count, onTopic(topic))
	next := [2]int{}
	for _, r := range got {
		var p, i int
		idx := bytes.Index(r.frame, []byte(`{"body":"`))
		if _, err := fmt.Sscanf(string(r.frame[idx+9:]), "%d/%d", &p, &i); err != nil {
			t.Fatalf("bad frame %q", r.frame)
		}
		if i != next[p] {
			t.Fatalf("from node %d: got frame %d, want %d", p, i, next[p])
		}
		next[p]++
	}
	nodes[2].none(t, nil)
}

// testBytes: frames arrive byte for byte, whatever their size (the three
// WebSocket header lengths) and content.
func testBytes(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	nodes := start(t, newCluster, 2)
	const topic = "chat:x:y"
	subscribe(t, nodes[1], topic)
	await(t, nodes[0], topic, nodes[1])

	bin := make([]byte, 256)
	for i := range bin {
		bin[i] = byte(i)
	}
	frames := [][]byte{
		Frame(topic, "small", ""),
		Frame(topic, "medium", string(bytes.Repeat([]byte("é"), 200))),
		Frame(topic, "large", string(bytes.Repeat([]byte("z"), 70_000))),
		bin, // not a frame at all: a bus must not interpret what it carries
		{},
	}
	for _, f := range frames {
		must(t, nodes[0].Publish(topic, f))
	}
	got := nodes[1].collect(t, len(frames), onTopic(topic))
	for i, r := range got {
		if !bytes.Equal(r.frame, frames[i]) {
			t.Errorf("frame %d: got %d bytes, want %d bytes (or content differs)", i, len(r.frame), len(frames[i]))
		}
	}
}

// testManyTopics: one node subscribed to many topics gets each frame once.
func testManyTopics(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	nodes := start(t, newCluster, 2)
	const count = 2000
	topics := make([]string, count)
	for i := range topics {
		topics[i] = fmt.Sprintf("chat:u%d:v%d", i, i)
		subscribe(t, nodes[1], topics[i])
	}
	// Probe every topic until each has delivered once.
	pending := make(map[string]bool, count)
	for _, tp := range topics {
		pending[tp] = true
	}
	deadline := time.Now().Add(eventually)
	for len(pending) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d topics never delivered", len(pending), count)
		}
		for tp := range pending {
			_ = nodes[0].Publish(tp, Frame(tp, "probe", ""))
		}
		time.Sleep(100 * time.Millisecond)
		for _, r := range nodes[1].take() {
			delete(pending, r.topic)
		}
	}
	time.Sleep(quiet)
	nodes[1].take()

	for _, tp := range topics {
		for nodes[0].Publish(tp, Frame(tp, "new_message", tp)) != nil {
			time.Sleep(time.Millisecond)
		}
	}
	got := nodes[1].collect(t, count, nil)
	seen := make(map[string]bool, count)
	for _, r := range got {
		if seen[r.topic] {
			t.Fatalf("topic %q delivered twice", r.topic)
		}
		seen[r.topic] = true
		if !bytes.Equal(r.frame, Frame(r.topic, "new_message", r.topic)) {
			t.Fatalf("topic %q: wrong frame %q", r.topic, r.frame)
		}
	}
	nodes[1].none(t, nil)

	for _, tp := range topics {
		must(t, nodes[1].Unsubscribe(tp))
	}
}

// testConcurrent: Publish, Subscribe and Unsubscribe from many goroutines
// at once (for the race detector), and every frame on a topic that stays
// subscribed arrives.
func testConcurrent(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	nodes := start(t, newCluster, 3)
	const topic = "chat:c:d"
	subscribe(t, nodes[2], topic)
	await(t, nodes[0], topic, nodes[2])
	await(t, nodes[1], topic, nodes[2])

	const workers, each = 8, 100
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pub := nodes[w%2]
			churn := fmt.Sprintf("chat:churn:%d", w)
			for i := range each {
				f := Frame(topic, "c", fmt.Sprintf("%d-%d", w, i))
				for pub.Publish(topic, f) != nil {
					time.Sleep(time.Millisecond)
				}
				_, _ = nodes[2].Subscribe(churn)
				_ = pub.Publish(churn, Frame(churn, "c", ""))
				_ = nodes[2].Unsubscribe(churn)
			}
		}()
	}
	wg.Wait()
	nodes[2].collect(t, workers*each, onTopic(topic))
}

// testConfirmed: once the channel Subscribe returned is closed, the very
// next message published elsewhere arrives, with no probe to warm the
// subscription up. A hub reads history only after that point, so a bus
// that confirms early loses messages for good. Repeated over fresh topics,
// a flap (unsubscribe and subscribe again) included, to catch the race.
func testConfirmed(t *testing.T, newCluster func(t *testing.T, nodes int) []hub.Bus) {
	nodes := start(t, newCluster, 2)
	// Run starts asynchronously: make sure both nodes are running first.
	subscribe(t, nodes[1], "chat:warm:up")
	await(t, nodes[0], "chat:warm:up", nodes[1])
	for i := range 50 {
		topic := fmt.Sprintf("chat:%d:confirm%d", i, i)
		live := subscribe(t, nodes[1], topic)
		if i%5 == 4 {
			must(t, nodes[1].Unsubscribe(topic))
			live = subscribe(t, nodes[1], topic)
		}
		select {
		case <-live:
		case <-time.After(eventually):
			t.Fatalf("subscription to %q never confirmed", topic)
		}
		frame := Frame(topic, "new_message", strconv.Itoa(i))
		must(t, nodes[0].Publish(topic, frame))
		got := nodes[1].collect(t, 1, onTopic(topic))
		if !bytes.Equal(got[0].frame, frame) {
			t.Fatalf("node 1 got %q, want %q", got[0].frame, frame)
		}
	}
}
