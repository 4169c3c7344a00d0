package hub

import (
	"context"
	"sync"
)

// LocalBus is the in-process Bus. Hubs attached to the same LocalBus behave
// like the nodes of one cluster, which is what a single node needs (one hub,
// nothing to forward) and what tests use to exercise cross-node paths
// without Redis.
type LocalBus struct {
	mu    sync.RWMutex
	nodes []*localNode // guarded by mu
}

// NewLocalBus returns an empty in-process bus.
func NewLocalBus() *LocalBus { return &LocalBus{} }

// Node returns the Bus one hub uses to reach the other hubs on b.
func (b *LocalBus) Node() Bus {
	n := &localNode{bus: b, topics: make(map[string]struct{})}
	b.mu.Lock()
	b.nodes = append(b.nodes, n)
	b.mu.Unlock()
	return n
}

type localNode struct {
	bus *LocalBus

	mu      sync.RWMutex
	topics  map[string]struct{} // guarded by mu
	handler BusHandler          // guarded by mu; nil outside Run
}

var _ Bus = (*localNode)(nil)

func (n *localNode) Publish(topic string, msg []byte) error {
	n.bus.mu.RLock()
	defer n.bus.mu.RUnlock()
	if len(n.bus.nodes) == 1 {
		return nil
	}
	for _, o := range n.bus.nodes {
		if o == n {
			continue
		}
		o.mu.RLock()
		_, ok := o.topics[topic]
		h := o.handler
		o.mu.RUnlock()
		if ok && h != nil {
			h.Deliver(topic, msg)
		}
	}
	return nil
}

// Subscribe takes effect at once: the in-process bus has nothing to wait for.
func (n *localNode) Subscribe(topic string) (<-chan struct{}, error) {
	n.mu.Lock()
	n.topics[topic] = struct{}{}
	n.mu.Unlock()
	return closedChan, nil
}

func (n *localNode) Unsubscribe(topic string) error {
	n.mu.Lock()
	delete(n.topics, topic)
	n.mu.Unlock()
	return nil
}

func (n *localNode) Run(ctx context.Context, h BusHandler) error {
	n.mu.Lock()
	n.handler = h
	n.mu.Unlock()
	<-ctx.Done()
	n.mu.Lock()
	n.handler = nil
	n.mu.Unlock()
	return nil
}

// MemoryPresence is the in-process Presence. Share one value between hubs
// to give them a common view, as a Redis-backed Presence does across nodes.
//
// Every connected user is tracked in their lobby, so a topic's entry is a
// short slice rather than a map: one key (a lobby) or two (a chat) is the
// common case, and idle memory per connection matters.
type MemoryPresence struct {
	mu     sync.RWMutex
	topics map[string][]presenceKey // guarded by mu
}

type presenceKey struct {
	key   string
	metas []Meta
}

// NewMemoryPresence returns an empty presence table.
func NewMemoryPresence() *MemoryPresence {
	return &MemoryPresence{topics: make(map[string][]presenceKey)}
}

var _ Presence = (*MemoryPresence)(nil)

func findKey(keys []presenceKey, key string) int {
	for i := range keys {
		if keys[i].key == key {
			return i
		}
	}
	return -1
}

func (p *MemoryPresence) Track(_ context.Context, topic, key string, meta Meta) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := p.topics[topic]
	if i := findKey(keys, key); i >= 0 {
		keys[i].metas = append(keys[i].metas, meta)
		return nil
	}
	p.topics[topic] = append(keys, presenceKey{key: key, metas: []Meta{meta}})
	return nil
}

// TrackNow is Track: the table is in memory.
func (p *MemoryPresence) TrackNow(topic, key string, meta Meta) {
	_ = p.Track(context.Background(), topic, key, meta)
}

// UntrackNow is Untrack: the table is in memory.
func (p *MemoryPresence) UntrackNow(topic, key, ref string) {
	_ = p.Untrack(context.Background(), topic, key, ref)
}

func (p *MemoryPresence) Untrack(_ context.Context, topic, key, ref string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := p.topics[topic]
	i := findKey(keys, key)
	if i < 0 {
		return nil
	}
	metas := keys[i].metas
	for j, m := range metas {
		if m.Ref == ref {
			metas = append(metas[:j:j], metas[j+1:]...)
			break
		}
	}
	if len(metas) > 0 {
		keys[i].metas = metas
		return nil
	}
	keys = append(keys[:i:i], keys[i+1:]...)
	if len(keys) == 0 {
		delete(p.topics, topic)
	} else {
		p.topics[topic] = keys
	}
	return nil
}

func (p *MemoryPresence) List(_ context.Context, topic string) (map[string][]Meta, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	keys := p.topics[topic]
	out := make(map[string][]Meta, len(keys))
	for _, k := range keys {
		out[k.key] = append([]Meta(nil), k.metas...)
	}
	return out, nil
}

// PresentLocal is Present: the table is in memory.
func (p *MemoryPresence) PresentLocal(topic, key string) (present, known bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return findKey(p.topics[topic], key) >= 0, true
}

func (p *MemoryPresence) Present(_ context.Context, topic, key string) (bool, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return findKey(p.topics[topic], key) >= 0, nil
}
