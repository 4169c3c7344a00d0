package sqlite_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/sqlite"
)

// A second process on the same data directory would store messages this
// one never hears of; the directory's lock refuses it, and is released by
// Close.
func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if s2, err := sqlite.Open(ctx, dir); !errors.Is(err, sqlite.ErrInUse) {
		if s2 != nil {
			s2.Close()
		}
		t.Fatalf("second open of %s: err = %v, want ErrInUse", dir, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = sqlite.Open(ctx, dir)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s.Close()
}

// Undelivered messages stored before a restart are listed after it: the
// store's memory of who has something unread starts from the file.
func TestUnreadAfterReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Save(ctx, store.NewMessage{Room: "chat:a:b", UserID: "a", OpponentID: "b", Body: "while you were away"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = sqlite.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, err := s.Unread(ctx, "b")
	if err != nil || len(u) != 1 || u[0].Unread != 1 {
		t.Fatalf("Unread(b) after reopen = %+v, %v; want 1 chat with 1 unread", u, err)
	}
	if u, err := s.Unread(ctx, "a"); err != nil || len(u) != 0 {
		t.Fatalf("Unread(a) = %+v, %v; want none", u, err)
	}
}

// A reader that marks everything read and asks for its unread chats
// races with new messages to the same user: a message whose Save has
// returned must be listed by the next Unread, however the other reader's
// "nothing unread" answers interleave with the commit. The reader only
// marks ids the writer has already seen listed, so the writer's check is
// exact.
func TestUnreadRacingWithSaves(t *testing.T) {
	s := open(t, sqlite.Options{})
	ctx := context.Background()
	const rounds = 200
	var seen atomic.Int64 // highest id the writer found listed
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if id := seen.Load(); id > 0 {
				if _, err := s.MarkRead(ctx, "chat:a:b", "b", id); err != nil {
					t.Error(err)
					return
				}
			}
			if _, err := s.Unread(ctx, "b"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	for i := range rounds {
		m, _, err := s.Save(ctx, store.NewMessage{Room: "chat:a:b", UserID: "a", OpponentID: "b", Body: "hi"})
		if err != nil {
			t.Fatal(err)
		}
		u, err := s.Unread(ctx, "b")
		if err != nil {
			t.Fatal(err)
		}
		if len(u) != 1 || u[0].Last.ID < m.ID {
			t.Fatalf("round %d: message %d stored, Unread(b) = %+v", i, m.ID, u)
		}
		seen.Store(m.ID)
	}
}
