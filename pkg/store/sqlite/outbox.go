package sqlite

import (
	"context"
	"database/sql"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

var _ store.Outbox = (*Store)(nil)

// SQLite has one writer, and the claim below runs on it: a message batch
// and a claim never interleave, so DO NOTHING is enough here (compare the
// PostgreSQL store's upsert).
const upsertEventSQL = `INSERT INTO webhook_events (type, user_id, state, first_message_id, due_at, next_at, updated_at)
VALUES ('` + store.EventMessageUnread + `', ?, 'pending', ?, ?, ?, ?)
ON CONFLICT (type, user_id) WHERE state = 'pending' DO NOTHING`

// notify adds the batch's events to the outbox inside tx; now is the
// batch's sent_at.
func notify(ctx context.Context, tx *sql.Tx, now time.Time, ns []store.Notify) error {
	for _, n := range ns {
		due := now.Add(n.After).UnixMicro()
		if _, err := tx.ExecContext(ctx, upsertEventSQL, n.UserID, n.FirstID, due, due, now.UnixMicro()); err != nil {
			return err
		}
	}
	return nil
}

// ClaimEvents implements store.Outbox. One node owns a SQLite file, so
// the lease only matters across a restart of that node.
func (s *Store) ClaimEvents(ctx context.Context, owner string, lease time.Duration, limit int) (_ []store.Event, cancelled int, err error) {
	now := time.Now().UTC()
	// Most polls find nothing due: ask the read pool first, so an idle
	// sender never takes the writer from the message batches.
	var due bool
	if err := s.r.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM webhook_events
WHERE state IN ('pending', 'sending') AND next_at <= ?)`, now.UnixMicro()).Scan(&due); err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	if !due {
		return nil, 0, nil
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	rows, err := tx.QueryContext(ctx, `SELECT id, type, user_id, state, first_message_id, last_message_id, messages, due_at, attempts
FROM webhook_events WHERE state IN ('pending', 'sending') AND next_at <= ? ORDER BY next_at LIMIT ?`, now.UnixMicro(), limit)
	if err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	type candidate struct {
		ev    store.Event
		state string
		first int64
		last  sql.NullInt64
		msgs  sql.NullString
	}
	var cands []candidate
	for rows.Next() {
		var (
			c   candidate
			due int64
		)
		if err := rows.Scan(&c.ev.ID, &c.ev.Type, &c.ev.UserID, &c.state, &c.first, &c.last, &c.msgs, &due, &c.ev.Attempts); err != nil {
			rows.Close()
			return nil, 0, ctxOr(ctx, err)
		}
		c.ev.DueAt = fromMicros(due)
		cands = append(cands, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	var out []store.Event
	for _, c := range cands {
		ev := c.ev
		ev.State, ev.Attempts = store.EventSending, ev.Attempts+1
		// Still worth sending while a message that asked for it (pending)
		// or one it carries (sealed) is unread.
		var unread bool
		var err error
		if c.state == store.EventPending {
			err = tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM messages
WHERE opponent_id = ? AND id >= ? AND notify AND NOT is_delivered)`, ev.UserID, c.first).Scan(&unread)
		} else if c.last.Valid {
			err = tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM messages
WHERE opponent_id = ? AND id BETWEEN ? AND ? AND NOT is_delivered)`, ev.UserID, c.first, c.last.Int64).Scan(&unread)
		}
		if err != nil {
			return nil, 0, ctxOr(ctx, err)
		}
		if unread && c.state == store.EventPending {
			if ev.Messages, err = s.eventMessages(ctx, tx, ev.UserID, c.first); err != nil {
				return nil, 0, ctxOr(ctx, err)
			}
		} else if unread && c.msgs.Valid {
			if ev.Messages, err = store.DecodeMessages(c.msgs.String); err != nil {
				return nil, 0, err
			}
		}
		unread = unread && len(ev.Messages) > 0
		if !unread {
			if _, err := tx.ExecContext(ctx, `DELETE FROM webhook_events WHERE id = ?`, ev.ID); err != nil {
				return nil, 0, ctxOr(ctx, err)
			}
			cancelled++
			continue
		}
		js, err := store.EncodeMessages(ev.Messages)
		if err != nil {
			return nil, 0, err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE webhook_events SET state = 'sending', messages = ?,
	last_message_id = ?, attempts = attempts + 1, claimed_by = ?, next_at = ?, updated_at = ?
WHERE id = ?`, js, ev.Messages[len(ev.Messages)-1].ID, owner, now.Add(lease).UnixMicro(), now.UnixMicro(), ev.ID); err != nil {
			return nil, 0, ctxOr(ctx, err)
		}
		out = append(out, ev)
	}
	if err := tx.Commit(); err != nil {
		return nil, 0, ctxOr(ctx, err)
	}
	return out, cancelled, nil
}

func (s *Store) eventMessages(ctx context.Context, tx *sql.Tx, user string, first int64) ([]store.Message, error) {
	rows, err := tx.QueryContext(ctx, `SELECT `+cols+` FROM messages
WHERE opponent_id = ? AND NOT is_delivered AND id >= ? ORDER BY id LIMIT ?`, user, first, store.MaxEventMessages)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var msgs []store.Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, rows.Err()
}

// FinishEvent implements store.Outbox.
func (s *Store) FinishEvent(ctx context.Context, id int64, owner string, o store.Outcome) (bool, error) {
	const held = ` WHERE id = ? AND claimed_by = ? AND state = 'sending'`
	now := time.Now().UTC()
	var (
		res sql.Result
		err error
	)
	switch o.Kind {
	case store.Sent:
		res, err = s.w.ExecContext(ctx, `DELETE FROM webhook_events`+held, id, owner)
	case store.Retry:
		res, err = s.w.ExecContext(ctx, `UPDATE webhook_events SET next_at = ?, claimed_by = NULL, last_error = ?, updated_at = ?`+held,
			now.Add(o.RetryIn).UnixMicro(), o.Error, now.UnixMicro(), id, owner)
	default:
		res, err = s.w.ExecContext(ctx, `UPDATE webhook_events SET state = 'dead', claimed_by = NULL, last_error = ?, updated_at = ?`+held,
			o.Error, now.UnixMicro(), id, owner)
	}
	if err != nil {
		return false, ctxOr(ctx, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, ctxOr(ctx, err)
	}
	return n == 1, nil
}

// DeadEvents implements store.Outbox.
func (s *Store) DeadEvents(ctx context.Context, limit int) ([]store.Event, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id, type, user_id, state, due_at, attempts, COALESCE(messages, ''), last_error, updated_at
FROM webhook_events WHERE state = 'dead' ORDER BY id DESC LIMIT ?`, store.ClampLimit(limit))
	if err != nil {
		return nil, ctxOr(ctx, err)
	}
	defer rows.Close()
	out := []store.Event{}
	for rows.Next() {
		var (
			e        store.Event
			msgs     string
			due, upd int64
		)
		if err := rows.Scan(&e.ID, &e.Type, &e.UserID, &e.State, &due, &e.Attempts, &msgs, &e.LastError, &upd); err != nil {
			return nil, ctxOr(ctx, err)
		}
		e.DueAt, e.UpdatedAt = fromMicros(due), fromMicros(upd)
		if e.Messages, err = store.DecodeMessages(msgs); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, ctxOr(ctx, err)
	}
	return out, nil
}

// RequeueEvent implements store.Outbox.
func (s *Store) RequeueEvent(ctx context.Context, id int64) (bool, error) {
	now := time.Now().UTC().UnixMicro()
	res, err := s.w.ExecContext(ctx, `UPDATE webhook_events SET state = 'sending', attempts = 0, next_at = ?,
	claimed_by = NULL, last_error = '', updated_at = ? WHERE id = ? AND state = 'dead'`, now, now, id)
	if err != nil {
		return false, ctxOr(ctx, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, ctxOr(ctx, err)
	}
	return n == 1, nil
}

// EventCounts implements store.Outbox.
func (s *Store) EventCounts(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{store.EventPending: 0, store.EventSending: 0, store.EventDead: 0}
	rows, err := s.r.QueryContext(ctx, `SELECT state, count(*) FROM webhook_events GROUP BY state`)
	if err != nil {
		return nil, ctxOr(ctx, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			st string
			n  int64
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, ctxOr(ctx, err)
		}
		out[st] = n
	}
	if err := rows.Err(); err != nil {
		return nil, ctxOr(ctx, err)
	}
	return out, nil
}
