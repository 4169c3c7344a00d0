package store_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/memstore"
)

// flaky fails every call with ErrUnavailable while down is set.
type flaky struct {
	*memstore.Store
	down atomic.Bool
}

func (f *flaky) LastID(ctx context.Context) (int64, error) {
	if f.down.Load() {
		return 0, fmt.Errorf("%w: connection refused", store.ErrUnavailable)
	}
	return f.Store.LastID(ctx)
}

func (f *flaky) Save(ctx context.Context, m store.NewMessage) (store.Message, bool, error) {
	if f.down.Load() {
		return store.Message{}, false, fmt.Errorf("%w: connection refused", store.ErrUnavailable)
	}
	return f.Store.Save(ctx, m)
}

// TestWatchLogsOutages: 1,300 failed saves during an outage make one line
// when it starts and one, with the count, when it ends.
func TestWatchLogsOutages(t *testing.T) {
	var out bytes.Buffer
	f := &flaky{Store: memstore.New()}
	st := store.Watch(f, slog.New(slog.NewTextHandler(&out, nil)))
	defer st.Close()
	ctx := context.Background()
	f.down.Store(true)
	for range 1300 {
		st.Save(ctx, store.NewMessage{UserID: "1", Room: "chat:1:2", Body: "x"}) //nolint:errcheck
	}
	f.down.Store(false)
	if _, err := st.LastID(ctx); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "store outage started") || !strings.Contains(lines[1], "failures=1300") {
		t.Fatalf("log lines: %q", lines)
	}
}

// nowStore is a store that knows from memory who has nothing unread.
type nowStore struct{ store.Store }

func (nowStore) NothingUnread(user string) bool { return user == "idle" }

// TestWatchOffersNothingUnreadOnlyWhenTheStoreDoes: the hub answers a
// lobby join on the event loop only with a store that can; a watched store
// must not claim the ability for a store without it.
func TestWatchOffersNothingUnreadOnlyWhenTheStoreDoes(t *testing.T) {
	type nower interface{ NothingUnread(string) bool }
	log := slog.New(slog.DiscardHandler)
	ms := memstore.New()
	defer ms.Close()
	plain := struct{ store.Store }{ms} // the Store methods only
	if _, ok := store.Watch(plain, log).(nower); ok {
		t.Fatal("a watched store without NothingUnread offers it")
	}
	w, ok := store.Watch(nowStore{plain}, log).(nower)
	if !ok {
		t.Fatal("a watched store with NothingUnread hides it")
	}
	if !w.NothingUnread("idle") || w.NothingUnread("busy") {
		t.Fatal("NothingUnread not forwarded")
	}
}
