package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestExposition(t *testing.T) {
	m := New()
	m.Join("lobby")
	m.Join("chat")
	m.Join("chat")
	m.MessageIn()
	m.FramesOut(3)
	m.Connected()
	m.HandshakeRejected("token expired")
	m.StoreBatch(12, 3*time.Millisecond)
	m.BusPublished(4, time.Millisecond)
	m.GaugeFunc("elchat_connections", "open sockets", func() float64 { return 7 })

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`elchat_joins_total{kind="chat"} 2`,
		`elchat_joins_total{kind="lobby"} 1`,
		`elchat_messages_in_total 1`,
		`elchat_frames_out_total 3`,
		`elchat_connects_total 1`,
		`elchat_handshakes_rejected_total{reason="token expired"} 1`,
		`elchat_store_batch_size_sum 12`,
		`elchat_store_batch_seconds_count 1`,
		`elchat_bus_publish_batch_size_sum 4`,
		`elchat_bus_publish_lag_seconds_count 1`,
		`elchat_connections 7`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// The per-message instruments must not allocate.
func TestHotPathAllocations(t *testing.T) {
	m := New()
	if n := testing.AllocsPerRun(1000, func() {
		m.MessageIn()
		m.FramesOut(2)
		m.Join("chat")
		m.BusPublished(1, time.Microsecond)
	}); n != 0 {
		t.Fatalf("%v allocations per message", n)
	}
}
