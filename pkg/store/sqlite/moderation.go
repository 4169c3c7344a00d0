package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

// nextSeq draws n change seqs and returns the first.
func nextSeq(ctx context.Context, tx *sql.Tx, n int) (int64, error) {
	var last int64
	err := tx.QueryRowContext(ctx, `UPDATE change_seq SET value = value + ? WHERE id = 1 RETURNING value`, n).Scan(&last)
	return last - int64(n) + 1, err
}

// mark moves reader's read mark in room forward to lastID, as a change.
func mark(ctx context.Context, tx *sql.Tx, room, reader string, lastID int64) error {
	var cur int64
	err := tx.QueryRowContext(ctx, `SELECT last_id FROM chat_reads WHERE room = ? AND reader = ?`, room, reader).Scan(&cur)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return err
	case cur >= lastID:
		return nil
	}
	seq, err := nextSeq(ctx, tx, 1)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO chat_reads (room, reader, last_id, seq) VALUES (?, ?, ?, ?)
ON CONFLICT (room, reader) DO UPDATE SET last_id = excluded.last_id, seq = excluded.seq`, room, reader, lastID, seq)
	return err
}

// amend runs one edit or delete in a writer transaction.
func (s *Store) amend(ctx context.Context, a store.Amend, update string, args ...any) (_ store.Message, err error) {
	if err := ctx.Err(); err != nil {
		return store.Message{}, err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Message{}, ctxOr(ctx, err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	m, err := scanMessage(tx.QueryRowContext(ctx, `SELECT `+cols+` FROM messages WHERE id = ?`, a.ID))
	found := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return store.Message{}, ctxOr(ctx, err)
	}
	if err := store.CheckAmend(a, m, found); err != nil {
		return store.Message{}, err
	}
	seq, err := nextSeq(ctx, tx, 1)
	if err != nil {
		return store.Message{}, ctxOr(ctx, err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond).UnixMicro()
	m, err = scanMessage(tx.QueryRowContext(ctx, update+` WHERE id = ? RETURNING `+cols,
		append([]any{seq, now}, append(args, a.ID)...)...))
	if err != nil {
		return store.Message{}, ctxOr(ctx, err)
	}
	if err := tx.Commit(); err != nil {
		return store.Message{}, ctxOr(ctx, err)
	}
	return m, nil
}

// EditMessage implements store.Moderation.
func (s *Store) EditMessage(ctx context.Context, a store.Amend) (store.Message, error) {
	return s.amend(ctx, a, `UPDATE messages SET seq = ?, edited_at = ?, body = ?`, a.Body)
}

// DeleteMessage implements store.Moderation. The body is erased, not
// hidden, and a deleted message no longer counts as unread.
func (s *Store) DeleteMessage(ctx context.Context, a store.Amend) (store.Message, error) {
	return s.amend(ctx, a, `UPDATE messages SET seq = ?, deleted_at = ?, body = '', is_delivered = 1`)
}

// Changes implements store.Moderation. It reads in one transaction of the
// read pool, so the head and the page agree.
func (s *Store) Changes(ctx context.Context, room string, after int64, limit int) (_ []store.Change, _ int64, err error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	limit = store.ClampLimit(limit)
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	defer tx.Rollback()
	var head int64
	if err := tx.QueryRowContext(ctx, `SELECT max(
	(SELECT COALESCE(max(seq), 0) FROM messages WHERE room = ?),
	(SELECT COALESCE(max(seq), 0) FROM chat_reads WHERE room = ?))`, room, room).Scan(&head); err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	if after > head {
		return nil, head, store.ErrCursorAhead
	}
	if limit == 0 {
		return []store.Change{}, head, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+cols+` FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?`, room, after, limit)
	if err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	var msgs []store.Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			rows.Close()
			return nil, 0, ctxOr(ctx, err)
		}
		msgs = append(msgs, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	rows, err = tx.QueryContext(ctx, `SELECT seq, reader, last_id FROM chat_reads WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?`, room, after, limit)
	if err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	defer rows.Close()
	var reads []store.Change
	for rows.Next() {
		c := store.Change{Type: store.ChangeRead}
		if err := rows.Scan(&c.Seq, &c.UserID, &c.LastID); err != nil {
			return nil, 0, ctxOr(ctx, err)
		}
		reads = append(reads, c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	return store.MergeChanges(msgs, reads, limit), head, nil
}

// LastSeq implements store.Moderation.
func (s *Store) LastSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.r.QueryRowContext(ctx, `SELECT value FROM change_seq WHERE id = 1`).Scan(&seq); err != nil {
		return 0, ctxOr(ctx, err)
	}
	return seq, nil
}

// exec runs one write on the writer connection.
func (s *Store) exec(ctx context.Context, q string, args ...any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := s.w.ExecContext(ctx, q, args...); err != nil {
		return ctxOr(ctx, err)
	}
	return nil
}

// OpenChat implements store.Moderation.
func (s *Store) OpenChat(ctx context.Context, room string) error {
	return s.exec(ctx, `INSERT INTO open_chats (room) VALUES (?) ON CONFLICT DO NOTHING`, room)
}

// ChatOpen implements store.Moderation.
func (s *Store) ChatOpen(ctx context.Context, room string) (bool, error) {
	var one int
	err := s.r.QueryRowContext(ctx, `SELECT 1 FROM open_chats WHERE room = ?`, room).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, ctxOr(ctx, err)
	}
	return true, nil
}

// SetBlock implements store.Moderation.
func (s *Store) SetBlock(ctx context.Context, blocker, blocked string, on bool) error {
	if err := store.ValidUser(blocker, blocked); err != nil {
		return err
	}
	if on {
		return s.exec(ctx, `INSERT INTO blocks (blocker, blocked) VALUES (?, ?) ON CONFLICT DO NOTHING`, blocker, blocked)
	}
	return s.exec(ctx, `DELETE FROM blocks WHERE blocker = ? AND blocked = ?`, blocker, blocked)
}

// Blocks implements store.Moderation.
func (s *Store) Blocks(ctx context.Context, blocker string) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT blocked FROM blocks WHERE blocker = ? ORDER BY blocked`, blocker)
	if err != nil {
		return nil, ctxOr(ctx, err)
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var b string
		if err := rows.Scan(&b); err != nil {
			return nil, ctxOr(ctx, err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, ctxOr(ctx, err)
	}
	return out, nil
}

// Ban implements store.Moderation.
func (s *Store) Ban(ctx context.Context, user string, until time.Time, reason string) error {
	if err := store.ValidUser(user); err != nil {
		return err
	}
	var u sql.NullInt64
	if !until.IsZero() {
		u = sql.NullInt64{Int64: until.UnixMicro(), Valid: true}
	}
	return s.exec(ctx, `INSERT INTO bans (user_id, until, reason) VALUES (?, ?, ?)
ON CONFLICT (user_id) DO UPDATE SET until = excluded.until, reason = excluded.reason`, user, u, reason)
}

// Unban implements store.Moderation.
func (s *Store) Unban(ctx context.Context, user string) error {
	return s.exec(ctx, `DELETE FROM bans WHERE user_id = ?`, user)
}

// Bans implements store.Moderation.
func (s *Store) Bans(ctx context.Context, now time.Time) ([]store.Ban, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT user_id, until, reason FROM bans
WHERE until IS NULL OR until > ? ORDER BY user_id`, now.UnixMicro())
	if err != nil {
		return nil, ctxOr(ctx, err)
	}
	defer rows.Close()
	out := []store.Ban{}
	for rows.Next() {
		var (
			b     store.Ban
			until sql.NullInt64
		)
		if err := rows.Scan(&b.UserID, &until, &b.Reason); err != nil {
			return nil, ctxOr(ctx, err)
		}
		if until.Valid {
			b.Until = fromMicros(until.Int64)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, ctxOr(ctx, err)
	}
	return out, nil
}
