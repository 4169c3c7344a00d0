// Package postgres is the clustered Store on PostgreSQL via pgxpool. Saves
// are group committed: each batch is one INSERT ... SELECT FROM unnest(...)
// statement, so one round trip and one commit carry up to MaxBatch messages.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" database/sql driver, for goose
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/elchat/elchat/pkg/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Options tunes a Store. The zero value is the production default.
type Options struct {
	// Batch configures group commit (default 1 flusher, 512 per batch).
	Batch store.BatchConfig
	// MaxConns caps the pool (default: the URL's pool_max_conns, else
	// 16); it must leave room beyond the flushers for reads and MarkRead.
	MaxConns int32
	// ConnectTimeout bounds dialing one connection (default 5s), so an
	// unreachable server turns into ErrUnavailable quickly.
	ConnectTimeout time.Duration
	// Migrate applies pending migrations before Open returns.
	Migrate bool
}

// Store implements store.Store on PostgreSQL.
type Store struct {
	pool  *pgxpool.Pool
	batch *store.Batcher

	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Migrate applies the embedded migrations to the database at url. Several
// nodes may call it at once: a session advisory lock serialises them.
func Migrate(ctx context.Context, url string) error {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	defer db.Close()
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithDisableGlobalRegistry(true), goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("postgres: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("postgres: migrate: %w", classify(ctx, err))
	}
	return nil
}

// Open connects to url and checks the server answers. The pool reconnects by
// itself, so a Store outlives PostgreSQL restarts.
func Open(ctx context.Context, url string, o Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	switch {
	case o.MaxConns > 0:
		cfg.MaxConns = o.MaxConns
	case !strings.Contains(url, "pool_max_conns"):
		// pgxpool's own default (the CPU count, at least 4) starves
		// the group commit's flushers of read connections.
		cfg.MaxConns = 16
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > o.ConnectTimeout {
		cfg.ConnConfig.ConnectTimeout = o.ConnectTimeout
	}
	// Frequent health checks drop connections killed by a server restart
	// before a caller draws them.
	cfg.HealthCheckPeriod = 5 * time.Second

	if o.Migrate {
		if err := Migrate(ctx, url); err != nil {
			return nil, err
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, classify(ctx, err)
	}
	s := &Store{pool: pool}
	if o.Batch.Flushers <= 0 {
		// The insert lock (see flush) serialises batches anyway: a second
		// flusher only waits for it holding a connection, and takes
		// messages from the batch the first would have carried next. With
		// one, at 5,000 msgs/s, e2e p99 was 9.0-9.5 ms against 10.5-11.0
		// with two, for the same CPU and the same saturated throughput
		// (bench chat, same session).
		o.Batch.Flushers = 1
	}
	s.batch = store.NewBatcher(o.Batch, s.flush)
	return s, nil
}

// Save implements store.Store through the group-commit batcher.
// SaveAsync is Save without waiting (store.AsyncSaver).
func (s *Store) SaveAsync(ctx context.Context, m store.NewMessage, then func(store.Message, bool, error)) bool {
	return s.batch.SaveAsync(ctx, m, then)
}

func (s *Store) Save(ctx context.Context, m store.NewMessage) (store.Message, bool, error) {
	return s.batch.Save(ctx, m)
}

// SaveBatch writes batch in one statement, bypassing the batcher; for
// imports and benchmarks.
func (s *Store) SaveBatch(ctx context.Context, batch []store.NewMessage) ([]store.SaveResult, error) {
	return store.SaveBatch(ctx, s.flush, batch)
}

const cols = `id, room, user_id, opponent_id, body, client_id, sent_at, is_delivered, seq, edited_at, deleted_at`

// insertSQL draws the ids itself (input is materialised once because
// nextval is volatile) so the RETURNING rows, which come back in no promised
// order, can be joined to their input position. Rows that hit an existing
// client id return nothing and are looked up by existingSQL.
//
// The same statement adds the webhook outbox rows of the messages it
// inserted that ask for one ($6: NotifyAfter in seconds, 0: none), one
// per recipient (see upsertEventsSQL in outbox.go for the conflict rule):
// a second statement would be a second round trip inside the insert lock.
const insertSQL = `WITH input AS (
	SELECT nextval('messages_id_seq') AS id, t.ord, t.room, t.user_id, t.opponent_id, t.body,
		NULLIF(t.client_id, '') AS client_id, t.after
	FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[])
		WITH ORDINALITY AS t(room, user_id, opponent_id, body, client_id, after, ord)
), ins AS (
	INSERT INTO messages (id, room, user_id, opponent_id, body, client_id, notify)
	SELECT id, room, user_id, opponent_id, body, client_id, after > 0 FROM input ORDER BY ord
	ON CONFLICT (user_id, room, client_id) WHERE client_id IS NOT NULL DO NOTHING
	RETURNING id, sent_at, seq
), ev AS (` + upsertEventsSQL + `
)
SELECT input.ord, ins.id, ins.sent_at, ins.seq FROM ins JOIN input USING (id)`

const existingSQL = `SELECT ` + cols + ` FROM messages
WHERE client_id IS NOT NULL
	AND (user_id, room, client_id) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))`

// insertLockKey names the advisory lock that orders message inserts.
const insertLockKey int64 = 0x656c63686174 // "elchat"

// flush is the batcher's FlushFunc. The lock and the INSERT go to the
// server as one pipelined batch, which PostgreSQL runs as one implicit
// transaction that commits at the batch's end: one round trip per group
// commit instead of four (BEGIN, lock, INSERT, COMMIT), which at a few
// messages per batch was most of the node's CPU per stored message. The
// follow-up SELECT only reads rows that are already committed (ON
// CONFLICT waited for them), so it needs no transaction.
func (s *Store) flush(ctx context.Context, batch []store.NewMessage) ([]store.SaveResult, error) {
	n := len(batch)
	rooms, users, opps, bodies, cids := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	afters := make([]float64, n)
	for i, m := range batch {
		rooms[i], users[i], opps[i], bodies[i], cids[i] = m.Room, m.UserID, m.OpponentID, m.Body, m.ClientID
		afters[i] = max(0, m.NotifyAfter.Seconds())
	}

	out := make([]store.SaveResult, n)
	done := make([]bool, n)
	err := retry(ctx, func() error {
		clear(out)
		clear(done)
		// Ids must become visible in id order, or a reader catching up with
		// Since(after) could pass over a lower id that commits later (two
		// flushers, or two nodes). The transaction-scoped advisory lock makes
		// id allocation and commit one critical section cluster-wide; group
		// commit keeps that to one short section per batch.
		var b pgx.Batch
		b.Queue("SELECT pg_advisory_xact_lock($1)", insertLockKey)
		b.Queue(insertSQL, rooms, users, opps, bodies, cids, afters)
		br := s.pool.SendBatch(ctx, &b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		for rows.Next() {
			var (
				ord    int64
				id     int64
				sentAt time.Time
				seq    int64
			)
			if err := rows.Scan(&ord, &id, &sentAt, &seq); err != nil {
				return err
			}
			i := int(ord - 1)
			m := batch[i]
			out[i] = store.SaveResult{Created: true, Msg: store.Message{
				ID: id, Room: m.Room, UserID: m.UserID, OpponentID: m.OpponentID,
				Body: m.Body, ClientID: m.ClientID, SentAt: sentAt.UTC(), Seq: seq,
			}}
			done[i] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		// The rows came back before the commit, which happens at the end
		// of the batch: only a clean Close means they are durable.
		return br.Close()
	})
	// The flush context is the batcher's own timeout, not a caller's: its
	// expiry means the database is too slow, so it must not be reported as
	// a context error. Hence Background here.
	if err != nil {
		return nil, classify(context.Background(), err)
	}

	var cu, cr, cc []string
	for i, ok := range done {
		if !ok {
			cu, cr, cc = append(cu, users[i]), append(cr, rooms[i]), append(cc, cids[i])
		}
	}
	if len(cu) == 0 {
		return out, nil
	}
	existing := make(map[store.IdempotencyKey]store.Message, len(cu))
	err = retry(ctx, func() error {
		rows, err := s.pool.Query(ctx, existingSQL, cu, cr, cc)
		if err != nil {
			return err
		}
		msgs, err := pgx.CollectRows(rows, scanMessage)
		for _, m := range msgs {
			existing[store.IdempotencyKey{User: m.UserID, Room: m.Room, Client: m.ClientID}] = m
		}
		return err
	})
	if err != nil {
		return nil, classify(context.Background(), err)
	}
	for i, ok := range done {
		if ok {
			continue
		}
		k, _ := batch[i].Key()
		m, found := existing[k]
		if !found {
			return nil, fmt.Errorf("%w: message %s/%s/%s neither inserted nor found", store.ErrUnavailable, users[i], rooms[i], cids[i])
		}
		out[i] = store.SaveResult{Msg: m}
	}
	return out, nil
}

// retry runs fn again once when the first attempt failed before anything
// reached the server, typically on a pooled connection that a server
// restart killed; anything later could have had effects, so it is final.
func retry(ctx context.Context, fn func() error) error {
	err := fn()
	if err != nil && pgconn.SafeToRetry(err) && ctx.Err() == nil {
		err = fn()
	}
	return err
}

// History implements store.Store.
func (s *Store) History(ctx context.Context, room string, before int64, limit int) ([]store.Message, error) {
	msgs, err := s.query(ctx, limit, `SELECT `+cols+` FROM messages
WHERE room = $1 AND id < $2 ORDER BY id DESC LIMIT $3`, room, store.HistoryBound(before))
	if err != nil {
		return nil, err
	}
	slices.Reverse(msgs) // newest first from the query, oldest first to the caller
	return msgs, nil
}

// Since implements store.Store.
func (s *Store) Since(ctx context.Context, room string, after int64, limit int) ([]store.Message, error) {
	return s.query(ctx, limit, `SELECT `+cols+` FROM messages
WHERE room = $1 AND id > $2 ORDER BY id LIMIT $3`, room, after)
}

// query runs a paged read; the clamped limit is appended as the last arg.
func (s *Store) query(ctx context.Context, limit int, q string, args ...any) ([]store.Message, error) {
	return store.Page(ctx, limit, func(limit int) ([]store.Message, error) {
		args := append(args, limit)
		var msgs []store.Message
		err := retry(ctx, func() error {
			rows, err := s.pool.Query(ctx, q, args...)
			if err != nil {
				return err
			}
			msgs, err = pgx.CollectRows(rows, scanMessage)
			return err
		})
		if err != nil {
			return nil, classify(ctx, err)
		}
		return msgs, nil
	})
}

// MarkRead implements store.Store. The read mark is a change of the chat,
// so its seq is drawn under the insert lock like a message's.
func (s *Store) MarkRead(ctx context.Context, room, reader string, lastID int64) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int64
	err := retry(ctx, func() error {
		return s.locked(ctx, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `UPDATE messages SET is_delivered = true
WHERE opponent_id = $1 AND room = $2 AND id <= $3 AND NOT is_delivered`, reader, room, lastID)
			if err != nil {
				return err
			}
			n = tag.RowsAffected()
			_, err = tx.Exec(ctx, markSQL, room, reader, lastID)
			return err
		})
	})
	if err != nil {
		return 0, classify(ctx, err)
	}
	return n, nil
}

// unreadSQL finds undelivered messages through the partial index, then each
// room's newest message through (room, id).
const unreadSQL = `WITH u AS (
	SELECT room, count(*) AS unread, max(id) AS last_unread
	FROM messages WHERE opponent_id = $1 AND NOT is_delivered
	GROUP BY room
)
SELECT u.room, s.user_id, u.unread,
	m.id, m.room, m.user_id, m.opponent_id, m.body, m.client_id, m.sent_at, m.is_delivered,
	m.seq, m.edited_at, m.deleted_at
FROM u
JOIN messages s ON s.id = u.last_unread
JOIN messages m ON m.id = (SELECT max(id) FROM messages WHERE room = u.room)
ORDER BY m.id DESC`

// Unread implements store.Store.
func (s *Store) Unread(ctx context.Context, userID string) ([]store.UnreadChat, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []store.UnreadChat
	err := retry(ctx, func() error {
		rows, err := s.pool.Query(ctx, unreadSQL, userID)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.UnreadChat, error) {
			var (
				c      store.UnreadChat
				unread int64
			)
			sc := newMsgScan(&c.Last)
			err := row.Scan(append([]any{&c.Room, &c.OpponentID, &unread}, sc.dest()...)...)
			c.Unread = int(unread)
			sc.finish()
			return c, err
		})
		return err
	})
	if err != nil {
		return nil, classify(ctx, err)
	}
	if out == nil {
		out = []store.UnreadChat{}
	}
	return out, nil
}

// LastID implements store.Store.
func (s *Store) LastID(ctx context.Context) (int64, error) {
	var id int64
	if err := s.pool.QueryRow(ctx, `SELECT COALESCE(MAX(id), 0) FROM messages`).Scan(&id); err != nil {
		return 0, classify(ctx, err)
	}
	return id, nil
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return classify(ctx, err)
	}
	return nil
}

// Close flushes queued messages and closes the pool. It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.batch.Close()
		s.pool.Close()
	})
	return nil
}

func scanMessage(row pgx.CollectableRow) (store.Message, error) {
	var m store.Message
	sc := newMsgScan(&m)
	err := row.Scan(sc.dest()...)
	sc.finish()
	return m, err
}

// msgScan reads the columns of cols into a Message.
type msgScan struct {
	m                 *store.Message
	clientID          *string
	editedAt, deleted *time.Time
}

func newMsgScan(m *store.Message) *msgScan { return &msgScan{m: m} }

func (s *msgScan) dest() []any {
	m := s.m
	return []any{&m.ID, &m.Room, &m.UserID, &m.OpponentID, &m.Body, &s.clientID, &m.SentAt, &m.Delivered,
		&m.Seq, &s.editedAt, &s.deleted}
}

func (s *msgScan) finish() {
	m := s.m
	if s.clientID != nil {
		m.ClientID = *s.clientID
	}
	m.SentAt = m.SentAt.UTC()
	if s.editedAt != nil {
		m.EditedAt = s.editedAt.UTC()
	}
	m.Deleted = s.deleted != nil
}

// classify maps an error to the store's vocabulary: the caller's own
// cancellation stays a context error, data the server rejects is
// ErrInvalid, and everything else (refused or lost connections, timeouts,
// server shutdown, closed pool) is ErrUnavailable.
func classify(ctx context.Context, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(pgErr.Code) == 5 && pgErr.Code[:2] == "22" { // data exception
		return store.ContextOr(ctx, fmt.Errorf("%w: %v", store.ErrInvalid, err))
	}
	return store.ContextOr(ctx, store.Unavailable(err))
}
