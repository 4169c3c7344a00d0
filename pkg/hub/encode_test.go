package hub_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/hub"
	"github.com/elchat/elchat/pkg/store"
)

// sameJSON decodes both documents, numbers kept exact, and compares them.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	dec := func(p []byte) any {
		d := json.NewDecoder(bytes.NewReader(p))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		return v
	}
	return reflect.DeepEqual(dec(a), dec(b))
}

func TestEncodeMessageAgreesWithJSON(t *testing.T) {
	sent := time.Date(2026, 12, 1, 18, 4, 5, 123456789, time.UTC)
	for _, m := range []store.Message{
		{ID: 1, Room: "chat:1:2", UserID: "1", OpponentID: "2", Body: "hi", SentAt: sent, Seq: 1},
		{ID: 1 << 60, Room: "chat:a:b", UserID: "a", OpponentID: "b", Body: "<b>&\"\\\n\t\x01 é 👋 \u2028", ClientID: "c-1",
			SentAt: sent.In(time.FixedZone("x", 5*3600+1800)), Delivered: true, Seq: 9, EditedAt: sent.Add(time.Minute)},
		{ID: 3, Room: "chat:1:2", UserID: "1", OpponentID: "2", SentAt: time.Unix(1700000000, 0).UTC(), Seq: 4, Deleted: true, EditedAt: sent},
		{ID: 4, Room: "r", UserID: "u", OpponentID: "o", Body: "bad \xff utf-8"},
	} {
		got, err := hub.EncodeMessage(&m)
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !sameJSON(t, got, want) {
			t.Errorf("encodeMessage\n%s\nencoding/json\n%s", got, want)
		}
	}
	// A time encoding/json cannot write is refused as it refuses it.
	if _, err := hub.EncodeMessage(&store.Message{SentAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}); err == nil {
		t.Error("a year past 9999 was encoded")
	}
}

// FuzzEncodeMessage: the hand-written encoder and encoding/json agree on
// every message.
func FuzzEncodeMessage(f *testing.F) {
	f.Add(int64(1), "chat:1:2", "1", "2", "hello", "", int64(1764612245123456789), int64(0), int64(3), false, false)
	f.Add(int64(-5), "r\"", "<u>", "o&", "a\\b\x00\xff\u2028", "id", int64(0), int64(-62135596800), int64(0), true, true)
	f.Fuzz(func(t *testing.T, id int64, room, user, opp, body, clientID string, sent, edited, seq int64, delivered, deleted bool) {
		m := store.Message{ID: id, Room: room, UserID: user, OpponentID: opp, Body: body, ClientID: clientID,
			SentAt: time.Unix(0, sent).UTC(), Delivered: delivered, Seq: seq, Deleted: deleted}
		if edited != 0 {
			m.EditedAt = time.Unix(edited, 0).In(time.FixedZone("z", int(edited%86400)))
		}
		got, gerr := hub.EncodeMessage(&m)
		want, werr := json.Marshal(m)
		if (gerr != nil) != (werr != nil) {
			t.Fatalf("%+v: encodeMessage error %v, encoding/json error %v", m, gerr, werr)
		}
		if gerr == nil && !sameJSON(t, got, want) {
			t.Fatalf("encodeMessage\n%s\nencoding/json\n%s", got, want)
		}
	})
}
