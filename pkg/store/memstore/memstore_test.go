package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/memstore"
	"github.com/elchat/elchat/pkg/store/storetest"
)

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := memstore.New()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestClosed(t *testing.T) {
	s := memstore.New()
	s.Close()
	ctx := context.Background()
	if _, _, err := s.Save(ctx, store.NewMessage{Room: "r", UserID: "a", OpponentID: "b"}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Save after Close = %v, want ErrClosed", err)
	}
	if _, err := s.History(ctx, "r", 0, 10); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("History after Close = %v, want ErrUnavailable", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Ping after Close = %v, want ErrUnavailable", err)
	}
}

// Reads stay cheap as a store grows: paging a busy room and listing unread
// chats must not walk every message ever saved.
func TestManyMessages(t *testing.T) {
	s := memstore.New()
	defer s.Close()
	ctx := context.Background()
	const n = 20000
	batch := make([]store.NewMessage, 0, n)
	for i := range n {
		batch = append(batch, store.NewMessage{Room: fmt.Sprint("room-", i%100), UserID: "a",
			OpponentID: fmt.Sprint("u", i%7), Body: "x", ClientID: fmt.Sprint(i)})
	}
	if _, err := s.SaveBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	for after := int64(0); ; {
		page, err := s.Since(ctx, "room-3", after, 50)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].ID
	}
	got, err := s.Unread(ctx, "u0")
	if err != nil || len(got) != 100 {
		t.Fatalf("Unread(u0) = %d chats, %v", len(got), err)
	}
	for _, c := range got {
		if _, err := s.MarkRead(ctx, c.Room, "u0", c.Last.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Unread(ctx, "u0"); err != nil || len(got) != 0 {
		t.Fatalf("Unread(u0) after reading all = %+v, %v", got, err)
	}
	if id, err := s.LastID(ctx); err != nil || id != n {
		t.Fatalf("LastID = %d, %v; want %d", id, err, n)
	}
}

func TestOutbox(t *testing.T) {
	storetest.RunOutbox(t, func(t *testing.T) storetest.OutboxStore {
		s := memstore.New()
		t.Cleanup(func() { s.Close() })
		return s
	})
}
