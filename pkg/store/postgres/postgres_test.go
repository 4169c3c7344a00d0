package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/store"
	"github.com/elchat/elchat/pkg/store/postgres"
	"github.com/elchat/elchat/pkg/store/storetest"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func open(t testing.TB, url string, o postgres.Options) *postgres.Store {
	t.Helper()
	ctx := context.Background()
	if err := postgres.Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	s, err := postgres.Open(ctx, url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, testenv.Postgres(t), postgres.Options{})
	})
}

// Nodes of a cluster migrate at start-up, possibly at the same moment.
func TestMigrateConcurrentAndRepeated(t *testing.T) {
	url := testenv.Postgres(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = postgres.Migrate(context.Background(), url) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := postgres.Migrate(context.Background(), url); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	s, err := postgres.Open(context.Background(), url, postgres.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Save(context.Background(), store.NewMessage{Room: "r", UserID: "a", OpponentID: "b", Body: "x"}); err != nil {
		t.Fatal(err)
	}
}

// A database created before client ids were scoped to the room upgrades in
// place and keeps honouring the retries of what it holds.
func TestMigrateClientIDPerRoom(t *testing.T) {
	url := testenv.Postgres(t)
	ctx := context.Background()
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	old := store.Message{Room: "chat:1:2", UserID: "1", OpponentID: "2", Body: "private note", ClientID: "c-1"}
	if err := db.QueryRowContext(ctx, `INSERT INTO messages (room, user_id, opponent_id, body, client_id)
VALUES ($1, $2, $3, $4, $5) RETURNING id, sent_at`, old.Room, old.UserID, old.OpponentID, old.Body, old.ClientID).Scan(&old.ID, &old.SentAt); err != nil {
		t.Fatal(err)
	}
	old.SentAt = old.SentAt.UTC()
	s, err := postgres.Open(ctx, url, postgres.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.CheckUpgradedClientID(t, s, old)
}

func TestOpenUnreachable(t *testing.T) {
	srv := testenv.StartPostgresServer(t)
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := postgres.Open(ctx, srv.URL(), postgres.Options{})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open on a stopped server = %v, want ErrUnavailable", err)
	}
}

// A PostgreSQL restart must surface as ErrUnavailable while it is down and
// heal by itself once it is back, without reopening the Store.
func TestUnavailableAndRecovery(t *testing.T) {
	srv := testenv.StartPostgresServer(t)
	s := open(t, srv.URL(), postgres.Options{})
	ctx := context.Background()
	nm := func(i int) store.NewMessage {
		return store.NewMessage{Room: "r", UserID: "a", OpponentID: "b", Body: "x", ClientID: strconv.Itoa(i)}
	}
	// Warm the pool so it holds connections the restart will kill.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if _, _, err := s.Save(ctx, nm(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()

	for _, kill := range []bool{false, true} {
		if kill {
			srv.Kill()
		} else {
			srv.Stop()
		}
		down, cancel := context.WithTimeout(ctx, 20*time.Second)
		if _, _, err := s.Save(down, nm(100)); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Save while down = %v, want ErrUnavailable", err)
		}
		if _, err := s.History(down, "r", 0, 10); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("History while down = %v, want ErrUnavailable", err)
		}
		if _, err := s.MarkRead(down, "r", "b", 1); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("MarkRead while down = %v, want ErrUnavailable", err)
		}
		if _, err := s.Unread(down, "b"); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Unread while down = %v, want ErrUnavailable", err)
		}
		if err := s.Ping(down); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Ping while down = %v, want ErrUnavailable", err)
		}
		cancel()

		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		// The first calls after the restart must already succeed.
		for i := range 8 {
			wg.Go(func() {
				if _, _, err := s.Save(ctx, nm(200+i)); err != nil {
					t.Errorf("Save after restart (kill=%v): %v", kill, err)
				}
			})
		}
		wg.Wait()
		if _, err := s.History(ctx, "r", 0, 100); err != nil {
			t.Errorf("History after restart: %v", err)
		}
		if err := s.Ping(ctx); err != nil {
			t.Errorf("Ping after restart: %v", err)
		}
	}
	// The Save attempted while down either never happened or, via its
	// client id, is resolved by a retry: never duplicated.
	if _, _, err := s.Save(ctx, nm(100)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Since(ctx, "r", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8+8+1 {
		t.Errorf("stored %d messages, want 17", len(got))
	}
}

func BenchmarkSave(b *testing.B) {
	storetest.BenchmarkSave(b, open(b, testenv.Postgres(b), postgres.Options{}))
}

// BenchmarkSaveUnbatched is the baseline: one statement, one commit per
// message, with as many concurrent writers as there are callers.
func BenchmarkSaveUnbatched(b *testing.B) {
	s := open(b, testenv.Postgres(b), postgres.Options{MaxConns: 80,
		Batch: store.BatchConfig{MaxBatch: 1, Flushers: 64}})
	storetest.BenchmarkSave(b, s)
}

func BenchmarkSaveBatch(b *testing.B) {
	for _, size := range []int{1, 64, 512} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			storetest.BenchmarkSaveBatch(b, open(b, testenv.Postgres(b), postgres.Options{}), size)
		})
	}
}

func TestOutbox(t *testing.T) {
	storetest.RunOutbox(t, func(t *testing.T) storetest.OutboxStore {
		return open(t, testenv.Postgres(t), postgres.Options{})
	})
}
