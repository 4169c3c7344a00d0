package hub_test

import (
	"testing"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/hub/hubtest"
)

// The in-process implementations keep the same contract as the Redis ones:
// tests that use LocalBus to stand in for a cluster are only meaningful if
// it behaves like one.

func TestLocalBus(t *testing.T) {
	hubtest.RunBus(t, func(t *testing.T, nodes int) []hub.Bus {
		b := hub.NewLocalBus()
		out := make([]hub.Bus, nodes)
		for i := range out {
			out[i] = b.Node()
		}
		return out
	})
}

func TestMemoryPresence(t *testing.T) {
	hubtest.RunPresence(t, func(t *testing.T, nodes int) []hub.Presence {
		p := hub.NewMemoryPresence()
		out := make([]hub.Presence, nodes)
		for i := range out {
			out[i] = p
		}
		return out
	})
}
