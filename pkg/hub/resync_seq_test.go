package hub

import (
	"context"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/memstore"
)

// After lost fanout a since_seq join catches up from the change watermark
// sampled before the loss, like a last_id join from the id watermark.
func TestCatchUpSeqAfterBusDown(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	h := New(Config{Store: st, Bus: NewLocalBus().Node()})
	defer h.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, _, err := st.Save(ctx, store.NewMessage{Room: "chat:1:2", UserID: "1", OpponentID: "2", Body: "a"})
	if err != nil {
		t.Fatal(err)
	}
	go h.trackWatermark(ctx, 10*time.Millisecond)
	// A sample of the state above, taken well before the loss below.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, seq := h.safeWatermark(time.Now()); seq >= m.Seq {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no watermark sample with the message's seq")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := h.catchUpSeq(m.Seq + 5); got != m.Seq+5 {
		t.Errorf("catchUpSeq while healthy = %d", got)
	}
	h.busDown(time.Now())
	if got := h.catchUpSeq(m.Seq + 5); got != m.Seq {
		t.Errorf("catchUpSeq while down = %d, want the watermark %d", got, m.Seq)
	}
	if got := h.catchUpSeq(m.Seq - 1); got != m.Seq-1 {
		t.Errorf("an older cursor is kept: %d", got)
	}
	// Another node's announcement names no seq: its lost changes may be
	// older than this node's watermark, so cursors replay from the start.
	h.resyncRequested(ctx, 1, 0, 0)
	if got := h.catchUpSeq(m.Seq + 5); got != 0 {
		t.Errorf("catchUpSeq after an announcement = %d, want 0", got)
	}
}
