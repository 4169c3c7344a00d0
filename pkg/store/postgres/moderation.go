package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/elchat/elchat/pkg/store"
)

// locked runs fn in a transaction holding the insert advisory lock: every
// change that draws a seq does so inside it, so changes become visible in
// seq order and a reader paging with Changes(after) never passes over a
// lower seq that commits later.
func (s *Store) locked(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", insertLockKey); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// markSQL moves a reader's read mark forward, as a new change.
const markSQL = `INSERT INTO chat_reads (room, reader, last_id, seq)
VALUES ($1, $2, $3, nextval('message_changes_seq'))
ON CONFLICT (room, reader) DO UPDATE SET last_id = excluded.last_id, seq = excluded.seq
WHERE chat_reads.last_id < excluded.last_id`

// amend runs one edit or delete: the row is locked, checked and changed
// in one transaction.
func (s *Store) amend(ctx context.Context, a store.Amend, update string, args ...any) (store.Message, error) {
	if err := ctx.Err(); err != nil {
		return store.Message{}, err
	}
	var out store.Message
	refused := false
	err := retry(ctx, func() error {
		return s.locked(ctx, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `SELECT `+cols+` FROM messages WHERE id = $1 FOR UPDATE`, a.ID)
			if err != nil {
				return err
			}
			cur, err := pgx.CollectRows(rows, scanMessage)
			if err != nil {
				return err
			}
			var m store.Message
			if len(cur) == 1 {
				m = cur[0]
			}
			if err := store.CheckAmend(a, m, len(cur) == 1); err != nil {
				refused = true
				return err
			}
			rows, err = tx.Query(ctx, update+` WHERE id = $1 RETURNING `+cols, append([]any{a.ID}, args...)...)
			if err != nil {
				return err
			}
			out, err = pgx.CollectExactlyOneRow(rows, scanMessage)
			return err
		})
	})
	if refused {
		return store.Message{}, err
	}
	if err != nil {
		return store.Message{}, classify(ctx, err)
	}
	return out, nil
}

// EditMessage implements store.Moderation.
func (s *Store) EditMessage(ctx context.Context, a store.Amend) (store.Message, error) {
	return s.amend(ctx, a, `UPDATE messages SET body = $2, edited_at = now(),
	seq = nextval('message_changes_seq')`, a.Body)
}

// DeleteMessage implements store.Moderation. The body is erased, not
// hidden, and a deleted message no longer counts as unread.
func (s *Store) DeleteMessage(ctx context.Context, a store.Amend) (store.Message, error) {
	return s.amend(ctx, a, `UPDATE messages SET body = '', deleted_at = now(), is_delivered = true,
	seq = nextval('message_changes_seq')`)
}

// Changes implements store.Moderation.
func (s *Store) Changes(ctx context.Context, room string, after int64, limit int) ([]store.Change, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	limit = store.ClampLimit(limit)
	var (
		head  int64
		msgs  []store.Message
		reads []store.Change
	)
	err := retry(ctx, func() error {
		// One snapshot for the head and both halves of the page.
		tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return err
		}
		defer tx.Rollback(context.Background()) //nolint:errcheck // read-only
		if err := tx.QueryRow(ctx, `SELECT GREATEST(
	(SELECT COALESCE(max(seq), 0) FROM messages WHERE room = $1),
	(SELECT COALESCE(max(seq), 0) FROM chat_reads WHERE room = $1))`, room).Scan(&head); err != nil {
			return err
		}
		if after > head || limit == 0 {
			return nil
		}
		rows, err := tx.Query(ctx, `SELECT `+cols+` FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3`, room, after, limit)
		if err != nil {
			return err
		}
		if msgs, err = pgx.CollectRows(rows, scanMessage); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT seq, reader, last_id FROM chat_reads WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3`, room, after, limit)
		if err != nil {
			return err
		}
		reads, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Change, error) {
			c := store.Change{Type: store.ChangeRead}
			return c, row.Scan(&c.Seq, &c.UserID, &c.LastID)
		})
		return err
	})
	if err != nil {
		return nil, 0, classify(ctx, err)
	}
	if after > head {
		return nil, head, store.ErrCursorAhead
	}
	return store.MergeChanges(msgs, reads, limit), head, nil
}

// LastSeq implements store.Moderation. The sequence's own state is read:
// a seq drawn by a transaction still running counts, which only moves the
// watermark later by what is in flight.
func (s *Store) LastSeq(ctx context.Context) (int64, error) {
	var seq int64
	err := s.pool.QueryRow(ctx, `SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM message_changes_seq`).Scan(&seq)
	if err != nil {
		return 0, classify(ctx, err)
	}
	return seq, nil
}

// exec runs one statement with the store's retry and error vocabulary.
func (s *Store) exec(ctx context.Context, q string, args ...any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := retry(ctx, func() error {
		_, err := s.pool.Exec(ctx, q, args...)
		return err
	})
	if err != nil {
		return classify(ctx, err)
	}
	return nil
}

// OpenChat implements store.Moderation.
func (s *Store) OpenChat(ctx context.Context, room string) error {
	return s.exec(ctx, `INSERT INTO open_chats (room) VALUES ($1) ON CONFLICT DO NOTHING`, room)
}

// ChatOpen implements store.Moderation.
func (s *Store) ChatOpen(ctx context.Context, room string) (bool, error) {
	var one int
	err := s.pool.QueryRow(ctx, `SELECT 1 FROM open_chats WHERE room = $1`, room).Scan(&one)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, classify(ctx, err)
	}
	return true, nil
}

// SetBlock implements store.Moderation.
func (s *Store) SetBlock(ctx context.Context, blocker, blocked string, on bool) error {
	if err := store.ValidUser(blocker, blocked); err != nil {
		return err
	}
	if on {
		return s.exec(ctx, `INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING`, blocker, blocked)
	}
	return s.exec(ctx, `DELETE FROM blocks WHERE blocker = $1 AND blocked = $2`, blocker, blocked)
}

// Blocks implements store.Moderation.
func (s *Store) Blocks(ctx context.Context, blocker string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked`, blocker)
	if err != nil {
		return nil, classify(ctx, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, classify(ctx, err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// Ban implements store.Moderation.
func (s *Store) Ban(ctx context.Context, user string, until time.Time, reason string) error {
	if err := store.ValidUser(user); err != nil {
		return err
	}
	var u *time.Time
	if !until.IsZero() {
		u = &until
	}
	return s.exec(ctx, `INSERT INTO bans (user_id, until, reason) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET until = excluded.until, reason = excluded.reason`, user, u, reason)
}

// Unban implements store.Moderation.
func (s *Store) Unban(ctx context.Context, user string) error {
	return s.exec(ctx, `DELETE FROM bans WHERE user_id = $1`, user)
}

// Bans implements store.Moderation.
func (s *Store) Bans(ctx context.Context, now time.Time) ([]store.Ban, error) {
	rows, err := s.pool.Query(ctx, `SELECT user_id, until, reason FROM bans
WHERE until IS NULL OR until > $1 ORDER BY user_id`, now)
	if err != nil {
		return nil, classify(ctx, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Ban, error) {
		var (
			b     store.Ban
			until *time.Time
		)
		err := row.Scan(&b.UserID, &until, &b.Reason)
		if until != nil {
			b.Until = until.UTC()
		}
		return b, err
	})
	if err != nil {
		return nil, classify(ctx, err)
	}
	if out == nil {
		out = []store.Ban{}
	}
	return out, nil
}
