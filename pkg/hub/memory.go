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
	topics  map[string]struct{}              // guarded by mu
	deliver func(topic string, frame []byte) // guarded by mu; nil until Run
}

var _ Bus = (*localNode)(nil)

func (n *localNode) Publish(topic string, frame []byte) error {
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
		d := o.deliver
		o.mu.RUnlock()
		if ok && d != nil {
			d(topic, frame)
		}
	}
	return nil
}

func (n *localNode) Subscribe(topic string) error {
	n.mu.Lock()
	n.topics[topic] = struct{}{}
	n.mu.Unlock()
	return nil
}

func (n *localNode) Unsubscribe(topic string) error {
	n.mu.Lock()
	delete(n.topics, topic)
	n.mu.Unlock()
	return nil
}

func (n *localNode) Run(ctx context.Context, deliver func(topic string, frame []byte)) error {
	n.mu.Lock()
	n.deliver = deliver
	n.mu.Unlock()
	<-ctx.Done()
	n.mu.Lock()
	n.deliver = nil
	n.mu.Unlock()
	return nil
}

// MemoryPresence is the in-process Presence. Share one value between hubs
// to give them a common view, as a Redis-backed Presence does across nodes.
type MemoryPresence struct {
	mu     sync.RWMutex
	topics map[string]map[string][]Meta // guarded by mu: topic → key → metas
}

// NewMemoryPresence returns an empty presence table.
func NewMemoryPresence() *MemoryPresence {
	return &MemoryPresence{topics: make(map[string]map[string][]Meta)}
}

var _ Presence = (*MemoryPresence)(nil)

func (p *MemoryPresence) Track(_ context.Context, topic, key string, meta Meta) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := p.topics[topic]
	if keys == nil {
		keys = make(map[string][]Meta, 2)
		p.topics[topic] = keys
	}
	keys[key] = append(keys[key], meta)
	return nil
}

func (p *MemoryPresence) Untrack(_ context.Context, topic, key, ref string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := p.topics[topic]
	metas := keys[key]
	for i, m := range metas {
		if m.Ref == ref {
			metas = append(metas[:i:i], metas[i+1:]...)
			break
		}
	}
	if len(metas) == 0 {
		delete(keys, key)
		if len(keys) == 0 {
			delete(p.topics, topic)
		}
		return nil
	}
	keys[key] = metas
	return nil
}

func (p *MemoryPresence) List(_ context.Context, topic string) (map[string][]Meta, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	keys := p.topics[topic]
	out := make(map[string][]Meta, len(keys))
	for k, metas := range keys {
		out[k] = append([]Meta(nil), metas...)
	}
	return out, nil
}

func (p *MemoryPresence) Present(_ context.Context, topic, key string) (bool, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.topics[topic][key]) > 0, nil
}
