package hub_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/hub"
)

func TestEditAndDelete(t *testing.T) {
	nodes := cluster(t, 2, hub.Config{MaxBodyBytes: 64})
	a := nodes[0].connect("1")
	b := nodes[1].connect("2")
	ajr, _ := a.join("chat:1:2", nil)
	bjr, _ := b.join("chat:1:2", nil)
	c := nodes[0].connect("1")
	cjr, _ := c.join("chat:1:3", nil)
	send := func(cl *client, jr, room, body string) map[string]any {
		ref := cl.send(jr, room, "new_message", map[string]any{"body": body})
		return cl.replyTo(ref, "ok")
	}
	m := send(a, ajr, "chat:1:2", "helo")
	elsewhere := send(c, cjr, "chat:1:3", "other chat")
	a.rec.take()
	b.rec.take()

	ref := a.send(ajr, "chat:1:2", "edit_message", map[string]any{"id": m["id"], "body": "hello"})
	ed := a.replyTo(ref, "ok")
	if ed["body"] != "hello" || ed["id"] != m["id"] || ed["seq"].(float64) <= m["seq"].(float64) || ed["edited_at"] == nil {
		t.Fatalf("edit reply %v (sent %v)", ed, m)
	}
	got := events(b.rec.take(), "message_updated")
	if len(got) != 1 || payloadOf(t, got[0].Payload)["body"] != "hello" {
		t.Fatalf("other side's message_updated: %+v", got)
	}

	// Refusals change nothing.
	for _, tc := range []struct {
		who     *client
		jr      string
		event   string
		payload map[string]any
		want    string
	}{
		{b, bjr, "edit_message", map[string]any{"id": m["id"], "body": "mine now"}, "not the author of the message"},
		{b, bjr, "delete_message", map[string]any{"id": m["id"]}, "not the author of the message"},
		{a, ajr, "edit_message", map[string]any{"id": 99999, "body": "x"}, "message not found"},
		{a, ajr, "delete_message", map[string]any{"id": elsewhere["id"]}, "message not found"},
		{a, ajr, "edit_message", map[string]any{"id": m["id"], "body": strings.Repeat("x", 65)}, "body longer than 64 bytes"},
		{a, ajr, "edit_message", map[string]any{"id": m["id"], "body": " "}, "body is empty"},
		{a, ajr, "edit_message", map[string]any{"id": m["id"]}, "body must be a string"},
		{a, ajr, "edit_message", map[string]any{"id": "x", "body": "y"}, "id must be a message id and body a string"},
		{a, ajr, "delete_message", map[string]any{"id": -1}, "id must be a message id"},
	} {
		ref := tc.who.send(tc.jr, "chat:1:2", tc.event, tc.payload)
		if got := tc.who.errorReason(ref); got != tc.want {
			t.Errorf("%s %v: %q, want %q", tc.event, tc.payload, got, tc.want)
		}
	}
	_, hist := b.join("chat:1:2", nil)
	msgs := hist["messages"].([]any)
	if len(msgs) != 1 || msgs[0].(map[string]any)["body"] != "hello" {
		t.Fatalf("history after refusals: %v", msgs)
	}

	ref = a.send(ajr, "chat:1:2", "delete_message", map[string]any{"id": m["id"]})
	del := a.replyTo(ref, "ok")
	if del["id"] != m["id"] || del["room"] != "chat:1:2" {
		t.Fatalf("delete reply %v", del)
	}
	if got := events(b.rec.take(), "message_deleted"); len(got) != 1 {
		t.Fatalf("other side's message_deleted: %+v", got)
	}
	bjr, hist = b.join("chat:1:2", nil)
	tomb := hist["messages"].([]any)[0].(map[string]any)
	if tomb["deleted"] != true || tomb["body"] != "" {
		t.Fatalf("tombstone in history: %v", tomb)
	}
	ref = a.send(ajr, "chat:1:2", "edit_message", map[string]any{"id": m["id"], "body": "back"})
	if got := a.errorReason(ref); got != "message was deleted" {
		t.Errorf("edit of a tombstone: %q", got)
	}

	// Moderation through the hub (the HTTP API's path).
	m2 := send(b, bjr, "chat:1:2", "rude")
	a.rec.take()
	if _, err := nodes[0].hub.ModerateMessage(int64(m2["id"].(float64)), "[redacted]", false); err != nil {
		t.Fatal(err)
	}
	if got := events(a.rec.take(), "message_updated"); len(got) != 1 || payloadOf(t, got[0].Payload)["body"] != "[redacted]" {
		t.Fatalf("moderated edit: %+v", got)
	}
	if _, err := nodes[1].hub.ModerateMessage(99999, "", true); err == nil || err.Error() != "message not found" {
		t.Errorf("moderate a missing id: %v", err)
	}
}

func TestEditWindow(t *testing.T) {
	e := newEnvWith(t, hub.Config{PushRate: 1e6, PushBurst: 1e6, EditWindow: 50 * time.Millisecond})
	a := e.connect("1")
	ajr, _ := a.join("chat:1:2", nil)
	ref := a.send(ajr, "chat:1:2", "new_message", map[string]any{"body": "quick"})
	m := a.replyTo(ref, "ok")
	time.Sleep(80 * time.Millisecond)
	ref = a.send(ajr, "chat:1:2", "edit_message", map[string]any{"id": m["id"], "body": "late"})
	if got := a.errorReason(ref); got != "edit window has passed" {
		t.Errorf("late edit: %q", got)
	}
	ref = a.send(ajr, "chat:1:2", "delete_message", map[string]any{"id": m["id"]})
	if got := a.errorReason(ref); got != "edit window has passed" {
		t.Errorf("late delete: %q", got)
	}
	// Moderation has no window.
	if _, err := e.hub.ModerateMessage(int64(m["id"].(float64)), "", true); err != nil {
		t.Fatal(err)
	}
}

// changeList decodes a join or history reply made by since_seq.
type changeList struct {
	Changes []struct {
		Seq     int64          `json:"seq"`
		Type    string         `json:"type"`
		Message map[string]any `json:"message"`
		UserID  string         `json:"user_id"`
		LastID  int64          `json:"last_id"`
	} `json:"changes"`
	HasMore bool  `json:"has_more"`
	Seq     int64 `json:"seq"`
}

func decodeChanges(t *testing.T, resp map[string]any) changeList {
	t.Helper()
	b, _ := json.Marshal(resp)
	var cl changeList
	if err := json.Unmarshal(b, &cl); err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestChangeCursorAcrossNodes(t *testing.T) {
	nodes := cluster(t, 2, hub.Config{CatchUpLimit: 2})
	a := nodes[0].connect("1")
	ajr, first := a.join("chat:1:2", map[string]any{"since_seq": 0})
	if cl := decodeChanges(t, first); len(cl.Changes) != 0 || cl.HasMore || cl.Seq != 0 {
		t.Fatalf("empty chat: %+v", cl)
	}
	ref := a.send(ajr, "chat:1:2", "new_message", map[string]any{"body": "one"})
	m1 := a.replyTo(ref, "ok")
	ref = a.send(ajr, "chat:1:2", "new_message", map[string]any{"body": "two"})
	m2 := a.replyTo(ref, "ok")
	cursor := int64(m2["seq"].(float64))
	a.c.Closed() // away

	// On the other node, while a is away: b reads, a's other tab edits
	// and deletes.
	b := nodes[1].connect("2")
	bjr, _ := b.join("chat:1:2", nil)
	b.replyTo(b.send(bjr, "chat:1:2", "read", map[string]any{"last_id": m2["id"]}), "ok")
	a2 := nodes[1].connect("1")
	a2jr, _ := a2.join("chat:1:2", nil)
	a2.replyTo(a2.send(a2jr, "chat:1:2", "edit_message", map[string]any{"id": m1["id"], "body": "one!"}), "ok")
	a2.replyTo(a2.send(a2jr, "chat:1:2", "delete_message", map[string]any{"id": m2["id"]}), "ok")

	back := nodes[0].connect("1")
	var seen []string
	after := cursor
	for range 5 {
		var resp map[string]any
		if after == cursor {
			_, resp = back.join("chat:1:2", map[string]any{"since_seq": after})
		} else {
			resp = back.replyTo(back.send("", "chat:1:2", "history", map[string]any{"since_seq": after}), "ok")
		}
		cl := decodeChanges(t, resp)
		for _, c := range cl.Changes {
			if c.Seq <= after {
				t.Fatalf("change %d not after %d", c.Seq, after)
			}
			switch c.Type {
			case "read":
				seen = append(seen, "read:"+c.UserID)
			case "message":
				seen = append(seen, c.Message["body"].(string)+map[bool]string{true: "(deleted)"}[c.Message["deleted"] == true])
			}
			after = c.Seq
		}
		if cl.Seq != after {
			t.Fatalf("reply seq %d, want %d", cl.Seq, after)
		}
		if !cl.HasMore {
			break
		}
	}
	if got := strings.Join(seen, " "); got != "read:2 one! (deleted)" {
		t.Fatalf("changes while away: %q", got)
	}

	// A cursor from the future is refused and changes nothing.
	ref = back.send("=", "chat:1:2", "phx_join", map[string]any{"since_seq": after + 1000})
	if got := back.errorReason(ref); got != "since_seq is ahead of the chat" {
		t.Errorf("future cursor: %q", got)
	}
	ref = back.send("=", "chat:1:2", "phx_join", map[string]any{"since_seq": -1})
	if got := back.errorReason(ref); got != "since_seq must not be negative" {
		t.Errorf("negative cursor: %q", got)
	}
	// last_id keeps working.
	_, old := back.join("chat:1:2", map[string]any{"last_id": 0})
	if len(old["messages"].([]any)) != 2 {
		t.Errorf("last_id join: %v", old)
	}
}
