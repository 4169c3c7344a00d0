package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/elchat/elchat/pkg/store"
)

var _ store.Outbox = (*Store)(nil)

// upsertEventsSQL runs inside a message batch's statement. An existing
// pending row is left as it is (the messages carry their own notify flag)
// but locked: DO UPDATE locks the rows it conflicts with even when its
// WHERE lets it update none, without writing a new row version. The lock
// matters: a node sealing that row (ClaimEvents, FOR UPDATE) either runs
// before this transaction, and this insert then opens a new pending row
// for the messages the seal could not see, or after it commits, and sees
// them. DO NOTHING would lock nothing, and a seal could miss a message
// that no later event covers. (Measured with TestFigures/batch: locking,
// updating and DO NOTHING cost the same; what costs is the conflict check
// itself, about 3 µs per away recipient in a batch, and the round trip a
// separate statement would add.)
//
// It is the ev part of insertSQL, reading that statement's input and ins:
// one row per recipient of the inserted messages that asked for an event,
// due NotifyAfter after now() (the transaction's start, which is also the
// messages' sent_at).
const upsertEventsSQL = `
	INSERT INTO webhook_events (type, user_id, state, first_message_id, due_at, next_at)
	SELECT '` + store.EventMessageUnread + `', input.opponent_id, 'pending', min(ins.id),
		now() + make_interval(secs => max(input.after)), now() + make_interval(secs => max(input.after))
	FROM ins JOIN input USING (id) WHERE input.after > 0 GROUP BY input.opponent_id
	ON CONFLICT (type, user_id) WHERE state = 'pending' DO UPDATE SET updated_at = excluded.updated_at WHERE false`

// claimSQL picks due rows no other node holds: SKIP LOCKED lets several
// nodes claim at once without waiting on each other, which spreads the
// sending over the cluster. A claim never waits on a message batch (it
// skips rows a batch has locked and reads only committed messages); a
// batch that touches a row being sealed waits for the claim, which is why
// the claim transaction does no I/O but its own queries and stays short.
// Neither waits on the other in a cycle, so they cannot deadlock.
const claimSQL = `SELECT id, type, user_id, state, first_message_id, last_message_id, messages, due_at, attempts
FROM webhook_events WHERE state IN ('pending', 'sending') AND next_at <= now()
ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED`

const eventMessagesSQL = `SELECT ` + cols + ` FROM messages
WHERE opponent_id = $1 AND NOT is_delivered AND id >= $2 ORDER BY id LIMIT $3`

type candidate struct {
	id       int64
	typ      string
	user     string
	state    string
	first    int64
	last     *int64
	msgs     *string
	due      time.Time
	attempts int
}

// ClaimEvents implements store.Outbox.
func (s *Store) ClaimEvents(ctx context.Context, owner string, lease time.Duration, limit int) ([]store.Event, int, error) {
	var (
		out       []store.Event
		cancelled int
	)
	err := retry(ctx, func() error {
		out, cancelled = nil, 0
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(context.Background()) //nolint:errcheck // no-op after Commit
		rows, err := tx.Query(ctx, claimSQL, limit)
		if err != nil {
			return err
		}
		cands, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (candidate, error) {
			var c candidate
			err := row.Scan(&c.id, &c.typ, &c.user, &c.state, &c.first, &c.last, &c.msgs, &c.due, &c.attempts)
			return c, err
		})
		if err != nil {
			return err
		}
		for _, c := range cands {
			ev := store.Event{ID: c.id, Type: c.typ, UserID: c.user, State: store.EventSending,
				DueAt: c.due.UTC(), Attempts: c.attempts + 1}
			// Still worth sending while a message that asked for it
			// (pending) or one it carries (sealed) is unread.
			var unread bool
			var err error
			if c.state == store.EventPending {
				err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM messages
WHERE opponent_id = $1 AND id >= $2 AND notify AND NOT is_delivered)`, c.user, c.first).Scan(&unread)
			} else if c.last != nil {
				err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM messages
WHERE opponent_id = $1 AND id BETWEEN $2 AND $3 AND NOT is_delivered)`, c.user, c.first, *c.last).Scan(&unread)
			}
			if err != nil {
				return err
			}
			if unread && c.state == store.EventPending {
				rows, err := tx.Query(ctx, eventMessagesSQL, c.user, c.first, store.MaxEventMessages)
				if err != nil {
					return err
				}
				if ev.Messages, err = pgx.CollectRows(rows, scanMessage); err != nil {
					return err
				}
			} else if unread && c.msgs != nil {
				if ev.Messages, err = store.DecodeMessages(*c.msgs); err != nil {
					return err
				}
			}
			unread = unread && len(ev.Messages) > 0
			if !unread {
				if _, err := tx.Exec(ctx, `DELETE FROM webhook_events WHERE id = $1`, c.id); err != nil {
					return err
				}
				cancelled++
				continue
			}
			js, err := store.EncodeMessages(ev.Messages)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE webhook_events SET state = 'sending', messages = $2,
	last_message_id = $3, attempts = attempts + 1, claimed_by = $4,
	next_at = now() + make_interval(secs => $5), updated_at = now()
WHERE id = $1`, c.id, js, ev.Messages[len(ev.Messages)-1].ID, owner, lease.Seconds()); err != nil {
				return err
			}
			out = append(out, ev)
		}
		return tx.Commit(ctx)
	})
	if err != nil {
		return nil, 0, classify(ctx, err)
	}
	return out, cancelled, nil
}

// FinishEvent implements store.Outbox.
func (s *Store) FinishEvent(ctx context.Context, id int64, owner string, o store.Outcome) (bool, error) {
	const held = ` WHERE id = $1 AND claimed_by = $2 AND state = 'sending'`
	var (
		q    string
		args = []any{id, owner}
	)
	switch o.Kind {
	case store.Sent:
		q = `DELETE FROM webhook_events` + held
	case store.Retry:
		q = `UPDATE webhook_events SET next_at = now() + make_interval(secs => $3), claimed_by = NULL,
	last_error = $4, updated_at = now()` + held
		args = append(args, o.RetryIn.Seconds(), o.Error)
	default:
		q = `UPDATE webhook_events SET state = 'dead', claimed_by = NULL, last_error = $3, updated_at = now()` + held
		args = append(args, o.Error)
	}
	var n int64
	err := retry(ctx, func() error {
		tag, err := s.pool.Exec(ctx, q, args...)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return false, classify(ctx, err)
	}
	return n == 1, nil
}

// DeadEvents implements store.Outbox.
func (s *Store) DeadEvents(ctx context.Context, limit int) ([]store.Event, error) {
	var out []store.Event
	err := retry(ctx, func() error {
		rows, err := s.pool.Query(ctx, `SELECT id, type, user_id, state, due_at, attempts,
	COALESCE(messages, ''), last_error, updated_at
FROM webhook_events WHERE state = 'dead' ORDER BY id DESC LIMIT $1`, store.ClampLimit(limit))
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Event, error) {
			var (
				e    store.Event
				msgs string
			)
			if err := row.Scan(&e.ID, &e.Type, &e.UserID, &e.State, &e.DueAt, &e.Attempts, &msgs, &e.LastError, &e.UpdatedAt); err != nil {
				return e, err
			}
			e.DueAt, e.UpdatedAt = e.DueAt.UTC(), e.UpdatedAt.UTC()
			var err error
			e.Messages, err = store.DecodeMessages(msgs)
			return e, err
		})
		return err
	})
	if err != nil {
		return nil, classify(ctx, err)
	}
	if out == nil {
		out = []store.Event{}
	}
	return out, nil
}

// RequeueEvent implements store.Outbox.
func (s *Store) RequeueEvent(ctx context.Context, id int64) (bool, error) {
	var n int64
	err := retry(ctx, func() error {
		tag, err := s.pool.Exec(ctx, `UPDATE webhook_events SET state = 'sending', attempts = 0, next_at = now(),
	claimed_by = NULL, last_error = '', updated_at = now() WHERE id = $1 AND state = 'dead'`, id)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return false, classify(ctx, err)
	}
	return n == 1, nil
}

// EventCounts implements store.Outbox.
func (s *Store) EventCounts(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{store.EventPending: 0, store.EventSending: 0, store.EventDead: 0}
	err := retry(ctx, func() error {
		rows, err := s.pool.Query(ctx, `SELECT state, count(*) FROM webhook_events GROUP BY state`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				st string
				n  int64
			)
			if err := rows.Scan(&st, &n); err != nil {
				return err
			}
			out[st] = n
		}
		return rows.Err()
	})
	if err != nil {
		return nil, classify(ctx, err)
	}
	return out, nil
}
