package memstore

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

var _ store.Outbox = (*Store)(nil)

// event is one outbox row; guarded by Store.mu.
type event struct {
	store.Event
	// Message ids: the first the event covers and, once sealed, the last
	// it carries.
	first, last int64
	next        time.Time
	owner       string
}

// notifyLocked adds a batch's events; the caller holds mu.
func (s *Store) notifyLocked(now time.Time, ns []store.Notify) {
	for _, n := range ns {
		if _, ok := s.pending[n.UserID]; ok {
			continue
		}
		s.nextEvent++
		due := now.Add(n.After)
		s.events[s.nextEvent] = &event{
			Event: store.Event{ID: s.nextEvent, Type: store.EventMessageUnread, UserID: n.UserID,
				State: store.EventPending, DueAt: due, UpdatedAt: now},
			first: n.FirstID, next: due,
		}
		s.pending[n.UserID] = s.nextEvent
	}
}

// unreadLocked reports whether message id is to user and unread.
func (s *Store) unreadLocked(user string, id int64) bool {
	m := s.msgs[id-1]
	return m.OpponentID == user && !m.Delivered
}

// ClaimEvents implements store.Outbox.
func (s *Store) ClaimEvents(ctx context.Context, owner string, lease time.Duration, limit int) ([]store.Event, int, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, 0, errClosed
	}
	now := time.Now().UTC()
	var due []*event
	for _, e := range s.events {
		if e.State != store.EventDead && !e.next.After(now) {
			due = append(due, e)
		}
	}
	slices.SortFunc(due, func(a, b *event) int { return cmp.Or(a.next.Compare(b.next), cmp.Compare(a.ID, b.ID)) })
	var (
		out       []store.Event
		cancelled int
	)
	for _, e := range due {
		if len(out) == limit {
			break
		}
		// Still worth sending while a message that asked for it (pending)
		// or one it carries (sealed) is unread.
		unread := false
		if e.State == store.EventPending {
			for id := e.first; id <= int64(len(s.msgs)) && !unread; id++ {
				unread = s.notify[id-1] && s.unreadLocked(e.UserID, id)
			}
		} else {
			for id := e.first; id <= e.last && !unread; id++ {
				unread = s.unreadLocked(e.UserID, id)
			}
		}
		if unread && e.State == store.EventPending {
			var msgs []store.Message
			for id := e.first; id <= int64(len(s.msgs)) && len(msgs) < store.MaxEventMessages; id++ {
				if s.unreadLocked(e.UserID, id) {
					msgs = append(msgs, s.msgs[id-1])
				}
			}
			e.Messages, e.last = msgs, msgs[len(msgs)-1].ID
			delete(s.pending, e.UserID)
		}
		if !unread {
			if e.State == store.EventPending {
				delete(s.pending, e.UserID)
			}
			delete(s.events, e.ID)
			cancelled++
			continue
		}
		e.State, e.owner, e.next, e.UpdatedAt = store.EventSending, owner, now.Add(lease), now
		e.Attempts++
		ev := e.Event
		ev.Messages = slices.Clone(e.Messages)
		out = append(out, ev)
	}
	return out, cancelled, nil
}

// FinishEvent implements store.Outbox.
func (s *Store) FinishEvent(ctx context.Context, id int64, owner string, o store.Outcome) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, errClosed
	}
	e, ok := s.events[id]
	if !ok || e.State != store.EventSending || e.owner != owner {
		return false, nil
	}
	now := time.Now().UTC()
	e.owner, e.UpdatedAt = "", now
	switch o.Kind {
	case store.Sent:
		delete(s.events, id)
	case store.Retry:
		e.next, e.LastError = now.Add(o.RetryIn), o.Error
	default:
		e.State, e.LastError = store.EventDead, o.Error
	}
	return true, nil
}

// DeadEvents implements store.Outbox.
func (s *Store) DeadEvents(ctx context.Context, limit int) ([]store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	out := []store.Event{}
	for _, e := range s.events {
		if e.State == store.EventDead {
			ev := e.Event
			ev.Messages = slices.Clone(e.Messages)
			out = append(out, ev)
		}
	}
	slices.SortFunc(out, func(a, b store.Event) int { return cmp.Compare(b.ID, a.ID) })
	return out[:min(len(out), store.ClampLimit(limit))], nil
}

// RequeueEvent implements store.Outbox.
func (s *Store) RequeueEvent(ctx context.Context, id int64) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, errClosed
	}
	e, ok := s.events[id]
	if !ok || e.State != store.EventDead {
		return false, nil
	}
	now := time.Now().UTC()
	e.State, e.Attempts, e.next, e.owner, e.LastError, e.UpdatedAt = store.EventSending, 0, now, "", "", now
	return true, nil
}

// EventCounts implements store.Outbox.
func (s *Store) EventCounts(ctx context.Context) (map[string]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	out := map[string]int64{store.EventPending: 0, store.EventSending: 0, store.EventDead: 0}
	for _, e := range s.events {
		out[e.State]++
	}
	return out, nil
}
