package storetest

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

// moderationTests cover store.Moderation: edits, deletes, the change
// cursor, grants, blocks and bans.
var moderationTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"EditMessage", testEditMessage},
	{"EditRefusals", testEditRefusals},
	{"DeleteMessage", testDeleteMessage},
	{"ChangesCursor", testChangesCursor},
	{"ChangesPaging", testChangesPaging},
	{"ChangesCursorAhead", testChangesCursorAhead},
	{"ChangesWhileWriting", testChangesWhileWriting},
	{"LastSeq", testLastSeq},
	{"OpenChat", testOpenChat},
	{"Blocks", testBlocks},
	{"Bans", testBans},
}

func testEditMessage(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	m := mustSave(t, s, msg("r", "alice", "bob", "helo", "c1"))
	got, err := s.EditMessage(ctx, store.Amend{ID: m.ID, Room: "r", Author: "alice", Body: "hello", NotBefore: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if got.Body != "hello" || got.ID != m.ID || got.Seq <= m.Seq || got.EditedAt.IsZero() || got.Deleted {
		t.Errorf("EditMessage = %+v (saved %+v)", got, m)
	}
	hist, err := s.History(ctx, "r", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 1 || hist[0] != got {
		t.Errorf("History after edit = %+v, want [%+v]", hist, got)
	}
	// Moderation edits any message.
	red, err := s.EditMessage(ctx, store.Amend{ID: m.ID, Room: "r", Body: "[redacted]"})
	if err != nil || red.Body != "[redacted]" || red.Seq <= got.Seq {
		t.Errorf("moderation edit = %+v, %v", red, err)
	}
}

func testEditRefusals(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	m := mustSave(t, s, msg("r", "alice", "bob", "one", ""))
	other := mustSave(t, s, msg("r2", "alice", "carol", "two", ""))
	for _, tc := range []struct {
		name string
		a    store.Amend
		want error
	}{
		{"missing id", store.Amend{ID: other.ID + 1000, Room: "r", Author: "alice", Body: "x"}, store.ErrNotFound},
		{"zero id", store.Amend{ID: 0, Room: "r", Author: "alice", Body: "x"}, store.ErrNotFound},
		{"other chat", store.Amend{ID: other.ID, Room: "r", Author: "alice", Body: "x"}, store.ErrNotFound},
		{"not author", store.Amend{ID: m.ID, Room: "r", Author: "bob", Body: "x"}, store.ErrNotAuthor},
		{"window", store.Amend{ID: m.ID, Room: "r", Author: "alice", Body: "x", NotBefore: time.Now().Add(time.Hour)}, store.ErrEditWindow},
	} {
		if _, err := s.EditMessage(ctx, tc.a); !errors.Is(err, tc.want) || !errors.Is(err, store.ErrRefused) {
			t.Errorf("%s: EditMessage = %v, want %v", tc.name, err, tc.want)
		}
		if _, err := s.DeleteMessage(ctx, tc.a); !errors.Is(err, tc.want) {
			t.Errorf("%s: DeleteMessage = %v, want %v", tc.name, err, tc.want)
		}
	}
	hist := since(t, s, "r")
	if len(hist) != 1 || hist[0] != m {
		t.Errorf("refused amends changed the message: %+v, want %+v", hist, m)
	}
}

func testDeleteMessage(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	m1 := mustSave(t, s, msg("r", "alice", "bob", "secret", ""))
	m2 := mustSave(t, s, msg("r", "alice", "bob", "keep", ""))
	del, err := s.DeleteMessage(ctx, store.Amend{ID: m1.ID, Room: "r", Author: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !del.Deleted || del.Body != "" || del.ID != m1.ID || del.Seq <= m2.Seq {
		t.Errorf("DeleteMessage = %+v", del)
	}
	hist := since(t, s, "r")
	if len(hist) != 2 || hist[0] != del || hist[0].Body != "" {
		t.Errorf("History after delete = %+v", hist)
	}
	for _, a := range []store.Amend{{ID: m1.ID, Room: "r", Author: "alice", Body: "again"}, {ID: m1.ID, Room: "r"}} {
		if _, err := s.EditMessage(ctx, a); !errors.Is(err, store.ErrDeleted) {
			t.Errorf("edit of a tombstone = %v, want ErrDeleted", err)
		}
		if _, err := s.DeleteMessage(ctx, a); !errors.Is(err, store.ErrDeleted) {
			t.Errorf("delete of a tombstone = %v, want ErrDeleted", err)
		}
	}
	// A deleted message no longer counts as unread.
	unread, err := s.Unread(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if len(unread) != 1 || unread[0].Unread != 1 {
		t.Errorf("Unread after delete = %+v, want one chat with 1", unread)
	}
	if _, err := s.DeleteMessage(ctx, store.Amend{ID: m2.ID, Room: "r"}); err != nil {
		t.Fatal(err)
	}
	if unread, err := s.Unread(ctx, "bob"); err != nil || len(unread) != 0 {
		t.Errorf("Unread after deleting all = %+v, %v", unread, err)
	}
}

func testChangesCursor(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	m1 := mustSave(t, s, msg("r", "alice", "bob", "one", ""))
	m2 := mustSave(t, s, msg("r", "bob", "alice", "two", ""))
	mustSave(t, s, msg("elsewhere", "alice", "carol", "x", ""))
	all, head, err := s.Changes(ctx, "r", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Message.ID != m1.ID || all[1].Message.ID != m2.ID || head != m2.Seq {
		t.Fatalf("Changes(0) = %+v head %d", all, head)
	}
	cursor := head
	// While the client is away: an edit, a read, a delete, a new message.
	ed, err := s.EditMessage(ctx, store.Amend{ID: m1.ID, Room: "r", Author: "alice", Body: "one!"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkRead(ctx, "r", "alice", m2.ID); err != nil {
		t.Fatal(err)
	}
	del, err := s.DeleteMessage(ctx, store.Amend{ID: m2.ID, Room: "r", Author: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	m3 := mustSave(t, s, msg("r", "alice", "bob", "three", ""))
	// A read mark that does not move forward is no change.
	if _, err := s.MarkRead(ctx, "r", "alice", m2.ID); err != nil {
		t.Fatal(err)
	}
	got, head, err := s.Changes(ctx, "r", cursor, 100)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for i, c := range got {
		if i > 0 && c.Seq <= got[i-1].Seq {
			t.Errorf("changes out of order: %+v", got)
		}
		switch c.Type {
		case store.ChangeMessage:
			kinds = append(kinds, c.Message.Body+"/"+map[bool]string{true: "deleted", false: "live"}[c.Message.Deleted])
		case store.ChangeRead:
			kinds = append(kinds, "read:"+c.UserID)
			if c.LastID != m2.ID {
				t.Errorf("read change = %+v, want last_id %d", c, m2.ID)
			}
		}
	}
	want := "one!/live read:alice /deleted three/live"
	if strings.Join(kinds, " ") != want {
		t.Errorf("Changes(after %d) = %v, want %s", cursor, kinds, want)
	}
	if len(got) == 4 && (*got[0].Message != ed || *got[2].Message != del || got[3].Message.ID != m3.ID) {
		t.Errorf("changed messages differ from what the calls returned: %+v", got)
	}
	if head != got[len(got)-1].Seq {
		t.Errorf("head = %d, want the last change's seq %d", head, got[len(got)-1].Seq)
	}
	if rest, h, err := s.Changes(ctx, "r", head, 100); err != nil || len(rest) != 0 || h != head {
		t.Errorf("Changes(head) = %+v, %d, %v; want none", rest, h, err)
	}
}

func testChangesPaging(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	var saved []store.Message
	for i := range 7 {
		saved = append(saved, mustSave(t, s, msg("r", "alice", "bob", string(rune('a'+i)), "")))
		if _, err := s.MarkRead(ctx, "r", "alice", saved[i].ID); err != nil && i > 0 {
			t.Fatal(err)
		}
	}
	var seen []store.Change
	after := int64(0)
	for range 20 {
		page, _, err := s.Changes(ctx, "r", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 3 {
			t.Fatalf("page of %d, limit 3", len(page))
		}
		seen = append(seen, page...)
		after = page[len(page)-1].Seq
	}
	all, _, err := s.Changes(ctx, "r", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(all) {
		t.Fatalf("paged %d changes, all at once %d", len(seen), len(all))
	}
	for i := range all {
		if seen[i].Seq != all[i].Seq {
			t.Errorf("change %d: paged seq %d, at once %d", i, seen[i].Seq, all[i].Seq)
		}
	}
	if page, _, err := s.Changes(ctx, "r", 0, 0); err != nil || len(page) != 0 {
		t.Errorf("Changes(limit 0) = %+v, %v", page, err)
	}
}

func testChangesCursorAhead(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	m := mustSave(t, s, msg("r", "alice", "bob", "one", ""))
	if _, head, err := s.Changes(ctx, "r", m.Seq+1, 10); !errors.Is(err, store.ErrCursorAhead) || head != m.Seq {
		t.Errorf("Changes(future) = head %d, %v; want ErrCursorAhead, head %d", head, err, m.Seq)
	}
	if _, _, err := s.Changes(ctx, "empty", 1, 10); !errors.Is(err, store.ErrCursorAhead) {
		t.Errorf("Changes(empty room, 1) = %v, want ErrCursorAhead", err)
	}
	if page, head, err := s.Changes(ctx, "empty", 0, 10); err != nil || len(page) != 0 || head != 0 {
		t.Errorf("Changes(empty room, 0) = %+v, %d, %v", page, head, err)
	}
}

func testOpenChat(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	if open, err := s.ChatOpen(ctx, "chat:a:b"); err != nil || open {
		t.Errorf("ChatOpen before = %v, %v", open, err)
	}
	for range 2 {
		if err := s.OpenChat(ctx, "chat:a:b"); err != nil {
			t.Fatal(err)
		}
	}
	if open, err := s.ChatOpen(ctx, "chat:a:b"); err != nil || !open {
		t.Errorf("ChatOpen after = %v, %v", open, err)
	}
	if open, err := s.ChatOpen(ctx, "chat:a:c"); err != nil || open {
		t.Errorf("ChatOpen(other) = %v, %v", open, err)
	}
}

func testBlocks(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	for _, b := range []string{"bob", "carol", "bob"} {
		if err := s.SetBlock(ctx, "alice", b, true); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Blocks(ctx, "alice")
	if err != nil || strings.Join(got, ",") != "bob,carol" {
		t.Errorf("Blocks = %v, %v; want bob,carol", got, err)
	}
	if got, err := s.Blocks(ctx, "bob"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("Blocks(bob) = %#v, %v; want empty", got, err)
	}
	for range 2 {
		if err := s.SetBlock(ctx, "alice", "bob", false); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Blocks(ctx, "alice"); err != nil || strings.Join(got, ",") != "carol" {
		t.Errorf("Blocks after unblock = %v, %v", got, err)
	}
	if err := s.SetBlock(ctx, "", "bob", true); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("SetBlock(empty) = %v, want ErrInvalid", err)
	}
}

func testBans(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	if err := s.Ban(ctx, "mallory", time.Time{}, "spam"); err != nil {
		t.Fatal(err)
	}
	if err := s.Ban(ctx, "trudy", now.Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Ban(ctx, "old", now.Add(-time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	got, err := s.Bans(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Ban{{UserID: "mallory", Reason: "spam"}, {UserID: "trudy", Until: now.Add(time.Hour)}}
	if len(got) != 2 || got[0] != want[0] || !got[1].Until.Equal(want[1].Until) || got[1].UserID != "trudy" {
		t.Errorf("Bans = %+v, want %+v", got, want)
	}
	if got, _ := s.Bans(ctx, now.Add(2*time.Hour)); len(got) != 1 {
		t.Errorf("Bans later = %+v, want only the permanent one", got)
	}
	if err := s.Unban(ctx, "mallory"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Bans(ctx, now); len(got) != 1 || got[0].UserID != "trudy" {
		t.Errorf("Bans after Unban = %+v", got)
	}
}

// A reader that follows the change cursor while messages, edits and read
// marks are written concurrently misses none of them: a change never
// becomes visible after a later seq was seen.
func testChangesWhileWriting(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	const writers, each = 4, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				m, _, err := s.Save(ctx, msg("r", fmt.Sprint("w", w), "reader", fmt.Sprint(i), ""))
				if err != nil {
					t.Error(err)
					return
				}
				if i%5 == 0 {
					if _, err := s.EditMessage(ctx, store.Amend{ID: m.ID, Room: "r", Body: "edited"}); err != nil {
						t.Error(err)
						return
					}
				}
				if i%7 == 0 {
					if _, err := s.MarkRead(ctx, "r", "reader", m.ID); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	seen := map[int64]bool{}
	var after int64
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		for range 100 {
			page, _, err := s.Changes(ctx, "r", after, 7)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, c := range page {
				if c.Type == store.ChangeMessage {
					seen[c.Message.ID] = true
				}
				after = c.Seq
			}
		}
	}
	// Every message's latest change is at or below the cursor, and every
	// message was seen: nothing was skipped.
	all := since(t, s, "r")
	if len(all) != writers*each {
		t.Fatalf("stored %d messages, want %d", len(all), writers*each)
	}
	for _, m := range all {
		if !seen[m.ID] {
			t.Errorf("message %d (seq %d) never seen by a reader at cursor %d", m.ID, m.Seq, after)
		}
		if m.Seq > after {
			t.Errorf("message %d changed at seq %d after the final cursor %d", m.ID, m.Seq, after)
		}
	}
}

func testLastSeq(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	if seq, err := s.LastSeq(ctx); err != nil || seq != 0 {
		t.Errorf("LastSeq of an empty store = %d, %v", seq, err)
	}
	m := mustSave(t, s, msg("r", "alice", "bob", "one", ""))
	if seq, err := s.LastSeq(ctx); err != nil || seq < m.Seq {
		t.Errorf("LastSeq = %d, %v; want >= %d", seq, err, m.Seq)
	}
	ed, err := s.EditMessage(ctx, store.Amend{ID: m.ID, Room: "r", Body: "two"})
	if err != nil {
		t.Fatal(err)
	}
	if seq, err := s.LastSeq(ctx); err != nil || seq < ed.Seq {
		t.Errorf("LastSeq after an edit = %d, %v; want >= %d", seq, err, ed.Seq)
	}
}
