// Package sqlite is the embedded Store: one file, <dataDir>/elchat.db, in WAL
// mode with synchronous=FULL so an acknowledged message survives power loss.
// Writes go through one connection (SQLite has a single writer anyway, and
// group commit makes that cheap); reads use a separate read-only pool that
// WAL lets run alongside the writer.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/elchat/elchat/pkg/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// FileName is the database file created inside the data directory.
const FileName = "elchat.db"

// LockName is the file in the data directory whose lock marks the
// directory as in use by one ElChat process.
const LockName = "elchat.lock"

// ErrInUse refuses a data directory another process has open.
var ErrInUse = errors.New("sqlite: data directory in use by another ElChat process")

// Options tunes a Store. The zero value is the production default.
type Options struct {
	// Batch configures group commit. Flushers is forced to 1: a second
	// flusher could only wait on SQLite's write lock.
	Batch store.BatchConfig
	// ReadConns sizes the read pool (default 4).
	ReadConns int
	// BusyTimeout is how long a connection waits on a lock held by another
	// process before failing with ErrUnavailable (default 10s).
	BusyTimeout time.Duration
}

// Store implements store.Store on SQLite.
type Store struct {
	w     *sql.DB // one connection; owned by the flusher and MarkRead
	r     *sql.DB // read-only pool
	batch *store.Batcher

	// Prepared once on the read pool: SQLite parsing and planning these on
	// every join was a third of a node's CPU per connect. Immutable.
	unreadStmt, historyStmt, sinceStmt *sql.Stmt

	lock   *os.File   // holds the data directory's flock until Close; nil off Unix
	unread recipients // who may have undelivered messages; see recipients

	closeOnce sync.Once
	closeErr  error // set once inside closeOnce
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) dataDir/elchat.db and migrates it.
func Open(ctx context.Context, dataDir string) (*Store, error) {
	return OpenWith(ctx, dataDir, Options{})
}

// OpenWith is Open with explicit options.
func OpenWith(ctx context.Context, dataDir string, o Options) (*Store, error) {
	if o.ReadConns <= 0 {
		o.ReadConns = 4
	}
	if o.BusyTimeout <= 0 {
		o.BusyTimeout = 10 * time.Second
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: create data dir: %w", err)
	}
	path := filepath.Join(dataDir, FileName)
	lock, err := lockDir(dataDir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok && lock != nil {
			lock.Close()
		}
	}()

	// Pragmas go in the DSN so every connection the pool (re)opens gets
	// them, not just the first one.
	busy := fmt.Sprintf("busy_timeout(%d)", o.BusyTimeout.Milliseconds())
	w, err := sql.Open("sqlite", dsn(path, "_txlock=immediate",
		"_pragma="+busy, "_pragma=journal_mode(WAL)", "_pragma=synchronous(FULL)"))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)

	if err := migrate(ctx, w); err != nil {
		w.Close()
		return nil, err
	}

	r, err := sql.Open("sqlite", dsn(path, "_pragma="+busy, "_pragma=query_only(1)"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open read pool: %w", err)
	}
	r.SetMaxOpenConns(o.ReadConns)
	r.SetMaxIdleConns(o.ReadConns)

	s := &Store{w: w, r: r, lock: lock}
	if err := s.unread.load(ctx, r); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	for _, p := range []struct {
		dst **sql.Stmt
		q   string
	}{{&s.unreadStmt, unreadSQL}, {&s.historyStmt, historySQL}, {&s.sinceStmt, sinceSQL}} {
		if *p.dst, err = r.PrepareContext(ctx, p.q); err != nil {
			r.Close()
			w.Close()
			return nil, fmt.Errorf("sqlite: prepare: %w", err)
		}
	}
	bc := o.Batch
	bc.Flushers = 1
	s.batch = store.NewBatcher(bc, s.flush)
	ok = true
	return s, nil
}

func dsn(path string, params ...string) string {
	u := url.URL{Scheme: "file", Opaque: url.PathEscape(path)}
	q := ""
	for i, p := range params {
		if i > 0 {
			q += "&"
		}
		q += p
	}
	return u.String() + "?" + q
}

func migrate(ctx context.Context, db *sql.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, sub, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("sqlite: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	return nil
}

// Path returns the database file inside dataDir.
func Path(dataDir string) string { return filepath.Join(dataDir, FileName) }

// Save implements store.Store through the group-commit batcher.
// SaveAsync is Save without waiting (store.AsyncSaver).
func (s *Store) SaveAsync(ctx context.Context, m store.NewMessage, then func(store.Message, bool, error)) bool {
	return s.batch.SaveAsync(ctx, m, then)
}

func (s *Store) Save(ctx context.Context, m store.NewMessage) (store.Message, bool, error) {
	return s.batch.Save(ctx, m)
}

// SaveBatch writes batch in one transaction, bypassing the batcher; for
// imports and benchmarks.
func (s *Store) SaveBatch(ctx context.Context, batch []store.NewMessage) ([]store.SaveResult, error) {
	return store.SaveBatch(ctx, s.flush, batch)
}

const (
	cols = `id, room, user_id, opponent_id, body, client_id, sent_at, is_delivered, seq, edited_at, deleted_at`

	insertSQL = `INSERT INTO messages (room, user_id, opponent_id, body, client_id, sent_at, seq, notify)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (user_id, room, client_id) WHERE client_id IS NOT NULL DO NOTHING
RETURNING id`

	existingSQL = `SELECT ` + cols + ` FROM messages WHERE user_id = ? AND room = ? AND client_id = ?`
)

// flush is the batcher's FlushFunc: one IMMEDIATE transaction, one fsync.
// Its context is the batcher's own timeout, whose expiry means the database
// is too slow, so every failure is ErrUnavailable.
func (s *Store) flush(ctx context.Context, batch []store.NewMessage) (_ []store.SaveResult, err error) {
	// Before the transaction, so an Unread during it queries; after it
	// too, so an Unread that found nothing just before the commit cannot
	// forget a recipient (see recipients).
	s.unread.note(batch)
	defer s.unread.note(batch)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, store.Unavailable(err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	ins, err := tx.PrepareContext(ctx, insertSQL)
	if err != nil {
		return nil, store.Unavailable(err)
	}
	defer ins.Close()

	// One timestamp per batch: the messages became durable together.
	now := time.Now().UTC().Truncate(time.Microsecond)
	// One seq per message of the batch, drawn at once; a retry that
	// stores nothing leaves its seq unused.
	seq, err := nextSeq(ctx, tx, len(batch))
	if err != nil {
		return nil, store.Unavailable(err)
	}
	out := make([]store.SaveResult, len(batch))
	for i, m := range batch {
		var id int64
		seq := seq + int64(i)
		err := ins.QueryRowContext(ctx, m.Room, m.UserID, m.OpponentID, m.Body,
			nullString(m.ClientID), now.UnixMicro(), seq, m.NotifyAfter > 0).Scan(&id)
		switch {
		case err == nil:
			out[i] = store.SaveResult{Created: true, Msg: store.Message{
				ID: id, Room: m.Room, UserID: m.UserID, OpponentID: m.OpponentID,
				Body: m.Body, ClientID: m.ClientID, SentAt: now, Seq: seq,
			}}
		case errors.Is(err, sql.ErrNoRows):
			// DO NOTHING fired: a committed message of this sender in
			// this room already has this client id, and the retry gets
			// that one (store.SaveBatch refuses it if the bodies differ).
			prev, err := scanMessage(tx.QueryRowContext(ctx, existingSQL, m.UserID, m.Room, m.ClientID))
			if err != nil {
				return nil, store.Unavailable(err)
			}
			out[i] = store.SaveResult{Msg: prev}
		default:
			return nil, store.Unavailable(err)
		}
	}
	// The outbox rows commit with the messages they announce.
	if err := notify(ctx, tx, now, store.NotifyList(batch, out)); err != nil {
		return nil, store.Unavailable(err)
	}
	if err := tx.Commit(); err != nil {
		return nil, store.Unavailable(err)
	}
	return out, nil
}

// History implements store.Store.
func (s *Store) History(ctx context.Context, room string, before int64, limit int) ([]store.Message, error) {
	msgs, err := s.query(ctx, limit, s.historyStmt, room, store.HistoryBound(before))
	if err != nil {
		return nil, err
	}
	slices.Reverse(msgs) // newest first from the query, oldest first to the caller
	return msgs, nil
}

// Since implements store.Store.
func (s *Store) Since(ctx context.Context, room string, after int64, limit int) ([]store.Message, error) {
	return s.query(ctx, limit, s.sinceStmt, room, after)
}

var (
	historySQL = `SELECT ` + cols + ` FROM messages WHERE room = ? AND id < ? ORDER BY id DESC LIMIT ?`
	sinceSQL   = `SELECT ` + cols + ` FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?`
)

// query runs a paged read; the clamped limit is appended as the last arg.
func (s *Store) query(ctx context.Context, limit int, q *sql.Stmt, args ...any) ([]store.Message, error) {
	return store.Page(ctx, limit, func(limit int) ([]store.Message, error) {
		rows, err := q.QueryContext(ctx, append(args, limit)...)
		if err != nil {
			return nil, ctxOr(ctx, err)
		}
		defer rows.Close()
		msgs := make([]store.Message, 0, min(limit, 64))
		for rows.Next() {
			m, err := scanMessage(rows)
			if err != nil {
				return nil, ctxOr(ctx, err)
			}
			msgs = append(msgs, m)
		}
		if err := rows.Err(); err != nil {
			return nil, ctxOr(ctx, err)
		}
		return msgs, nil
	})
}

// MarkRead implements store.Store. It runs on the writer connection, so it
// queues behind an in-flight batch instead of fighting it for the lock. A
// read mark that moves forward is a change of the chat with its own seq.
func (s *Store) MarkRead(ctx context.Context, room, reader string, lastID int64) (_ int64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, ctxOr(ctx, err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	res, err := tx.ExecContext(ctx, `UPDATE messages SET is_delivered = 1
WHERE opponent_id = ? AND room = ? AND id <= ? AND NOT is_delivered`, reader, room, lastID)
	if err != nil {
		return 0, ctxOr(ctx, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, ctxOr(ctx, err)
	}
	if err := mark(ctx, tx, room, reader, lastID); err != nil {
		return 0, ctxOr(ctx, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, ctxOr(ctx, err)
	}
	return n, nil
}

// unreadSQL is shared in spirit with the PostgreSQL store: the partial index
// finds the undelivered messages, (room, id) finds each room's newest.
const unreadSQL = `WITH u AS (
	SELECT room, count(*) AS unread, max(id) AS last_unread
	FROM messages WHERE opponent_id = ? AND NOT is_delivered
	GROUP BY room
)
SELECT u.room, s.user_id, u.unread,
	m.id, m.room, m.user_id, m.opponent_id, m.body, m.client_id, m.sent_at, m.is_delivered,
	m.seq, m.edited_at, m.deleted_at
FROM u
JOIN messages s ON s.id = u.last_unread
JOIN messages m ON m.id = (SELECT max(id) FROM messages WHERE room = u.room)
ORDER BY m.id DESC`

// NothingUnread reports from memory that userID has no undelivered
// message (see recipients), so a lobby join need not ask Unread.
func (s *Store) NothingUnread(userID string) bool {
	_, listed := s.unread.lookup(userID)
	return !listed
}

// Unread implements store.Store.
func (s *Store) Unread(ctx context.Context, userID string) ([]store.UnreadChat, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	stamp, listed := s.unread.lookup(userID)
	if !listed {
		return []store.UnreadChat{}, nil
	}
	rows, err := s.unreadStmt.QueryContext(ctx, userID)
	if err != nil {
		return nil, ctxOr(ctx, err)
	}
	defer rows.Close()
	out := []store.UnreadChat{}
	for rows.Next() {
		var c store.UnreadChat
		var sc msgScan
		if err := rows.Scan(append([]any{&c.Room, &c.OpponentID, &c.Unread}, sc.dest(&c.Last)...)...); err != nil {
			return nil, ctxOr(ctx, err)
		}
		sc.finish(&c.Last)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, ctxOr(ctx, err)
	}
	if len(out) == 0 {
		s.unread.forget(userID, stamp)
	}
	return out, nil
}

// LastID implements store.Store.
func (s *Store) LastID(ctx context.Context) (int64, error) {
	var id int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM messages`).Scan(&id); err != nil {
		return 0, ctxOr(ctx, err)
	}
	return id, nil
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.r.PingContext(ctx); err != nil {
		return ctxOr(ctx, err)
	}
	var one int
	if err := s.r.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return ctxOr(ctx, err)
	}
	return nil
}

// Close flushes queued messages and closes the database. It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.batch.Close()
		s.closeErr = errors.Join(s.r.Close(), s.w.Close())
		if s.lock != nil {
			s.lock.Close() // the flock goes with the descriptor
		}
	})
	return s.closeErr
}

type scanner interface{ Scan(dest ...any) error }

func scanMessage(row scanner) (store.Message, error) {
	var (
		m  store.Message
		sc msgScan
	)
	if err := row.Scan(sc.dest(&m)...); err != nil {
		return store.Message{}, err
	}
	sc.finish(&m)
	return m, nil
}

// msgScan holds the columns of cols that need converting.
type msgScan struct {
	clientID          sql.NullString
	sentAt            int64
	editedAt, deleted sql.NullInt64
}

func (s *msgScan) dest(m *store.Message) []any {
	return []any{&m.ID, &m.Room, &m.UserID, &m.OpponentID, &m.Body, &s.clientID, &s.sentAt, &m.Delivered,
		&m.Seq, &s.editedAt, &s.deleted}
}

func (s *msgScan) finish(m *store.Message) {
	m.ClientID = s.clientID.String
	m.SentAt = fromMicros(s.sentAt)
	if s.editedAt.Valid {
		m.EditedAt = fromMicros(s.editedAt.Int64)
	}
	m.Deleted = s.deleted.Valid
}

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

// ctxOr reports the caller's own cancellation as such; anything else is the
// database failing.
func ctxOr(ctx context.Context, err error) error {
	return store.ContextOr(ctx, store.Unavailable(err))
}

// Pragma returns the writer connection's value of a PRAGMA, for diagnostics
// and tests; "" if it cannot be read.
func (s *Store) Pragma(ctx context.Context, name string) string {
	for _, r := range name {
		if (r < 'a' || r > 'z') && r != '_' {
			return "" // a pragma name is spliced into SQL: keep it a bare word
		}
	}
	var v string
	if err := s.w.QueryRowContext(ctx, "PRAGMA "+name).Scan(&v); err != nil {
		return ""
	}
	return v
}
