package hubtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/hub"
)

// RunPresence runs the Presence contract against newShared, which returns
// nodes views of one shared presence table (one per cluster node) and
// cleans them up with t.Cleanup.
//
// Track, Untrack and List are checked to be immediately consistent across
// nodes: once Track returns, every node lists the meta. Present may be
// served from a cache that follows changes asynchronously (the Redis
// implementation does, for topics its node subscribes to), so the suite
// accepts a short window for it.
func RunPresence(t *testing.T, newShared func(t *testing.T, nodes int) []hub.Presence) {
	t.Run("TrackList", func(t *testing.T) { testTrackList(t, newShared) })
	t.Run("SeveralMetas", func(t *testing.T) { testSeveralMetas(t, newShared) })
	t.Run("UntrackUnknown", func(t *testing.T) { testUntrackUnknown(t, newShared) })
	t.Run("TopicsIsolated", func(t *testing.T) { testIsolated(t, newShared) })
	t.Run("Concurrent", func(t *testing.T) { testPresenceConcurrent(t, newShared) })
}

func shared(t *testing.T, newShared func(t *testing.T, nodes int) []hub.Presence, count int) []hub.Presence {
	t.Helper()
	ps := newShared(t, count)
	if len(ps) != count {
		t.Fatalf("newShared returned %d presences, want %d", len(ps), count)
	}
	return ps
}

func list(t *testing.T, p hub.Presence, topic string) map[string][]hub.Meta {
	t.Helper()
	got, err := p.List(context.Background(), topic)
	if err != nil {
		t.Fatalf("List(%q): %v", topic, err)
	}
	for _, metas := range got {
		slices.SortFunc(metas, func(a, b hub.Meta) int { return strings.Compare(a.Ref, b.Ref) })
	}
	return got
}

// present waits until Present(topic, key) reports want on p.
func present(t *testing.T, p hub.Presence, topic, key string, want bool) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		got, err := p.Present(context.Background(), topic, key)
		if err != nil {
			t.Fatalf("Present(%q, %q): %v", topic, key, err)
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Present(%q, %q) = %v, want %v", topic, key, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sameMetas(t *testing.T, node int, got map[string][]hub.Meta, want map[string][]hub.Meta) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("node %d lists %v, want %v", node, got, want)
	}
	for k, w := range want {
		w = slices.Clone(w)
		slices.SortFunc(w, func(a, b hub.Meta) int { return strings.Compare(a.Ref, b.Ref) })
		if !slices.Equal(got[k], w) {
			t.Fatalf("node %d: key %q has %v, want %v", node, k, got[k], w)
		}
	}
}

// testTrackList: a meta tracked on one node is listed, field for field,
// and present on every node, and gone everywhere after Untrack.
func testTrackList(t *testing.T, newShared func(t *testing.T, nodes int) []hub.Presence) {
	ps := shared(t, newShared, 3)
	ctx := context.Background()
	const topic = "chat:alice:bob"
	// Quotes, backslashes, non-ASCII: the meta must round-trip exactly.
	meta := hub.Meta{Ref: "F1a-_ref", Name: `Alïce "the \ first"`, OnlineAt: 1_700_000_000}
	if err := ps[0].Track(ctx, topic, "alice", meta); err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		sameMetas(t, i, list(t, p, topic), map[string][]hub.Meta{"alice": {meta}})
		present(t, p, topic, "alice", true)
		present(t, p, topic, "bob", false)
	}
	if err := ps[1].Untrack(ctx, topic, "alice", meta.Ref); err != nil { // from another node
		t.Fatal(err)
	}
	for i, p := range ps {
		sameMetas(t, i, list(t, p, topic), nil)
		present(t, p, topic, "alice", false)
	}
}

// testSeveralMetas: one key with several connections (on several nodes)
// stays present until its last meta leaves.
func testSeveralMetas(t *testing.T, newShared func(t *testing.T, nodes int) []hub.Presence) {
	ps := shared(t, newShared, 3)
	ctx := context.Background()
	const topic = "user:7"
	metas := []hub.Meta{
		{Ref: "r1", Name: "Seven", OnlineAt: 1},
		{Ref: "r2", Name: "Seven", OnlineAt: 2},
		{Ref: "r3", Name: "Seven", OnlineAt: 3},
	}
	for i, m := range metas {
		if err := ps[i].Track(ctx, topic, "7", m); err != nil {
			t.Fatal(err)
		}
	}
	other := hub.Meta{Ref: "r9", Name: "Eight", OnlineAt: 9}
	if err := ps[0].Track(ctx, topic, "8", other); err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		sameMetas(t, i, list(t, p, topic), map[string][]hub.Meta{"7": metas, "8": {other}})
	}
	for n, m := range metas {
		if err := ps[n].Untrack(ctx, topic, "7", m.Ref); err != nil {
			t.Fatal(err)
		}
		left := map[string][]hub.Meta{"8": {other}}
		if n < len(metas)-1 {
			left["7"] = metas[n+1:]
		}
		for i, p := range ps {
			sameMetas(t, i, list(t, p, topic), left)
			present(t, p, topic, "7", n < len(metas)-1)
			present(t, p, topic, "8", true)
		}
	}
}

// testUntrackUnknown: untracking what is not there changes nothing.
func testUntrackUnknown(t *testing.T, newShared func(t *testing.T, nodes int) []hub.Presence) {
	ps := shared(t, newShared, 2)
	ctx := context.Background()
	const topic = "chat:k:l"
	m := hub.Meta{Ref: "keep", Name: "K", OnlineAt: 5}
	if err := ps[0].Track(ctx, topic, "k", m); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ topic, key, ref string }{
		{topic, "k", "nope"},         // unknown ref of a known key
		{topic, "nobody", "keep"},    // known ref under another key
		{"chat:none:here", "k", "r"}, // unknown topic
		{topic, "k", ""},             // empty ref
	} {
		if err := ps[1].Untrack(ctx, c.topic, c.key, c.ref); err != nil {
			t.Fatalf("Untrack(%q, %q, %q): %v", c.topic, c.key, c.ref, err)
		}
	}
	for i, p := range ps {
		sameMetas(t, i, list(t, p, topic), map[string][]hub.Meta{"k": {m}})
		present(t, p, topic, "k", true)
		present(t, p, topic, "nobody", false)
		if got := list(t, p, "chat:none:here"); len(got) != 0 {
			t.Fatalf("node %d lists %v in an empty topic", i, got)
		}
	}
	// Untracking twice is harmless too.
	for range 2 {
		if err := ps[1].Untrack(ctx, topic, "k", "keep"); err != nil {
			t.Fatal(err)
		}
	}
	present(t, ps[0], topic, "k", false)
}

// testIsolated: a key tracked in one topic is not in another.
func testIsolated(t *testing.T, newShared func(t *testing.T, nodes int) []hub.Presence) {
	ps := shared(t, newShared, 2)
	ctx := context.Background()
	m := hub.Meta{Ref: "x", Name: "A", OnlineAt: 1}
	if err := ps[0].Track(ctx, "chat:a:b", "a", m); err != nil {
		t.Fatal(err)
	}
	present(t, ps[1], "chat:a:b", "a", true)
	present(t, ps[1], "chat:a:c", "a", false)
	present(t, ps[1], "user:a", "a", false)
	if got := list(t, ps[1], "chat:a:c"); len(got) != 0 {
		t.Fatalf("chat:a:c lists %v", got)
	}
}

// testPresenceConcurrent: many connections joining and leaving at once on
// every node end in the state their operations imply.
func testPresenceConcurrent(t *testing.T, newShared func(t *testing.T, nodes int) []hub.Presence) {
	ps := shared(t, newShared, 3)
	ctx := context.Background()
	const topic = "chat:busy:room"
	const workers, each = 6, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := ps[w%len(ps)]
			key := fmt.Sprintf("u%d", w%3) // keys shared by workers on different nodes
			for i := range each {
				m := hub.Meta{Ref: fmt.Sprintf("w%d-%d", w, i), Name: key, OnlineAt: int64(i)}
				if err := p.Track(ctx, topic, key, m); err != nil {
					errs <- err
					return
				}
				if i%2 == 0 { // keep the odd ones
					if err := p.Untrack(ctx, topic, key, m.Ref); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := map[string][]hub.Meta{}
	for w := range workers {
		key := fmt.Sprintf("u%d", w%3)
		for i := 1; i < each; i += 2 {
			want[key] = append(want[key], hub.Meta{Ref: fmt.Sprintf("w%d-%d", w, i), Name: key, OnlineAt: int64(i)})
		}
	}
	for i, p := range ps {
		sameMetas(t, i, list(t, p, topic), want)
		present(t, p, topic, "u0", true)
	}
	for w := range workers {
		key := fmt.Sprintf("u%d", w%3)
		for i := 1; i < each; i += 2 {
			if err := ps[(w+1)%len(ps)].Untrack(ctx, topic, key, fmt.Sprintf("w%d-%d", w, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, p := range ps {
		sameMetas(t, i, list(t, p, topic), nil)
		for k := range 3 {
			present(t, p, topic, fmt.Sprintf("u%d", k), false)
		}
	}
}
