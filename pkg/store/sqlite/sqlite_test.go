package sqlite_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/sqlite"
	"github.com/elchat/elchat/pkg/store/storetest"
)

func open(t testing.TB, o sqlite.Options) *sqlite.Store {
	t.Helper()
	s, err := sqlite.OpenWith(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, sqlite.Options{}) })
}

func TestPragmas(t *testing.T) {
	dir := t.TempDir()
	s, err := sqlite.Open(context.Background(), filepath.Join(dir, "nested", "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(sqlite.Path(filepath.Join(dir, "nested", "data"))); err != nil {
		t.Fatalf("database file not created: %v", err)
	}
	for pragma, want := range map[string]string{
		"journal_mode": "wal",
		"synchronous":  "2", // FULL
		"busy_timeout": "10000",
	} {
		if got := s.Pragma(t.Context(), pragma); got != want {
			t.Errorf("PRAGMA %s = %q, want %q", pragma, got, want)
		}
	}
}

// Reopening must find the data and not re-run migrations.
func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := s.Save(ctx, store.NewMessage{Room: "r", UserID: "a", OpponentID: "b", Body: "kept", ClientID: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = sqlite.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, created, err := s.Save(ctx, store.NewMessage{Room: "r", UserID: "a", OpponentID: "b", Body: "kept", ClientID: "k"})
	if err != nil || created || got != m {
		t.Errorf("retry after reopen = %+v, %v, %v; want %+v", got, created, err, m)
	}
}

// A database created before client ids were scoped to the room upgrades in
// place and keeps honouring the retries of what it holds.
func TestMigrateClientIDPerRoom(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	db, err := sql.Open("sqlite", sqlite.Path(dir))
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	old := store.Message{ID: 1, Room: "chat:1:2", UserID: "1", OpponentID: "2", Body: "private note",
		ClientID: "c-1", SentAt: time.UnixMicro(1700000000123456).UTC()}
	if _, err := db.ExecContext(ctx, `INSERT INTO messages (id, room, user_id, opponent_id, body, client_id, sent_at)
VALUES (?, ?, ?, ?, ?, ?, ?)`, old.ID, old.Room, old.UserID, old.OpponentID, old.Body, old.ClientID, old.SentAt.UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := sqlite.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.CheckUpgradedClientID(t, s, old)
}

func TestGroupCommitBatches(t *testing.T) {
	var mu sync.Mutex
	var batches, maxSize int
	s := open(t, sqlite.Options{Batch: store.BatchConfig{Observer: func(n int, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		batches++
		maxSize = max(maxSize, n)
	}}})
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			if _, _, err := s.Save(context.Background(), store.NewMessage{Room: "r", UserID: "u", OpponentID: "p", Body: "x"}); err != nil {
				t.Error(i, err)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if batches >= 200 || maxSize < 2 {
		t.Errorf("200 concurrent saves took %d batches (largest %d): no group commit", batches, maxSize)
	}
	t.Logf("200 saves in %d batches, largest %d", batches, maxSize)
}

func BenchmarkSave(b *testing.B) {
	storetest.BenchmarkSave(b, open(b, sqlite.Options{}))
}

// BenchmarkSaveUnbatched is the baseline group commit is measured against:
// one transaction, one fsync per message.
func BenchmarkSaveUnbatched(b *testing.B) {
	s := open(b, sqlite.Options{Batch: store.BatchConfig{MaxBatch: 1}})
	storetest.BenchmarkSave(b, s)
}

func BenchmarkSaveBatch(b *testing.B) {
	for _, size := range []int{1, 64, 512} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			storetest.BenchmarkSaveBatch(b, open(b, sqlite.Options{}), size)
		})
	}
}

func TestOutbox(t *testing.T) {
	storetest.RunOutbox(t, func(t *testing.T) storetest.OutboxStore { return open(t, sqlite.Options{}) })
}
