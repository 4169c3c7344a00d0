package memstore

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

// nextSeqLocked hands out the next change Seq, in room; the caller holds mu.
func (s *Store) nextSeqLocked(room string) int64 {
	s.seq++
	s.heads[room] = s.seq
	return s.seq
}

// markLocked records reader's read mark up to lastID in room as a change,
// if it moves the mark forward; the caller holds mu.
func (s *Store) markLocked(room, reader string, lastID int64) {
	marks := s.marks[room]
	if marks == nil {
		marks = make(map[string]int64)
		s.marks[room] = marks
		s.reads[room] = make(map[string]int64)
	}
	if marks[reader] >= lastID {
		return
	}
	marks[reader] = lastID
	s.reads[room][reader] = s.nextSeqLocked(room)
}

// amend runs one edit or delete under the write lock.
func (s *Store) amend(ctx context.Context, a store.Amend, apply func(m *store.Message)) (store.Message, error) {
	if err := ctx.Err(); err != nil {
		return store.Message{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.Message{}, errClosed
	}
	found := a.ID > 0 && a.ID <= int64(len(s.msgs))
	var m store.Message
	if found {
		m = s.msgs[a.ID-1]
	}
	if err := store.CheckAmend(a, m, found); err != nil {
		return store.Message{}, err
	}
	p := &s.msgs[a.ID-1]
	apply(p)
	p.Seq = s.nextSeqLocked(p.Room)
	return *p, nil
}

// EditMessage implements store.Moderation.
func (s *Store) EditMessage(ctx context.Context, a store.Amend) (store.Message, error) {
	now := time.Now().UTC().Truncate(time.Microsecond)
	return s.amend(ctx, a, func(m *store.Message) { m.Body, m.EditedAt = a.Body, now })
}

// DeleteMessage implements store.Moderation.
func (s *Store) DeleteMessage(ctx context.Context, a store.Amend) (store.Message, error) {
	return s.amend(ctx, a, func(m *store.Message) {
		m.Body, m.Deleted = "", true
		if !m.Delivered {
			m.Delivered = true
			byRoom := s.unread[m.OpponentID]
			ids := byRoom[m.Room]
			if i, ok := slices.BinarySearch(ids, m.ID); ok {
				ids = slices.Delete(ids, i, i+1)
				if len(ids) == 0 {
					delete(byRoom, m.Room)
				} else {
					byRoom[m.Room] = ids
				}
			}
		}
	})
}

// Changes implements store.Moderation. It walks the room's messages: this
// store is for tests.
func (s *Store) Changes(ctx context.Context, room string, after int64, limit int) ([]store.Change, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, 0, errClosed
	}
	head := s.heads[room]
	if after > head {
		return nil, head, store.ErrCursorAhead
	}
	limit = store.ClampLimit(limit)
	var msgs []store.Message
	for _, id := range s.rooms[room] {
		if m := s.msgs[id-1]; m.Seq > after {
			msgs = append(msgs, m)
		}
	}
	slices.SortFunc(msgs, func(a, b store.Message) int { return cmp.Compare(a.Seq, b.Seq) })
	var reads []store.Change
	for reader, seq := range s.reads[room] {
		if seq > after {
			reads = append(reads, store.Change{Seq: seq, Type: store.ChangeRead, UserID: reader, LastID: s.marks[room][reader]})
		}
	}
	slices.SortFunc(reads, func(a, b store.Change) int { return cmp.Compare(a.Seq, b.Seq) })
	return store.MergeChanges(msgs, reads, limit), head, nil
}

// LastSeq implements store.Moderation.
func (s *Store) LastSeq(ctx context.Context) (seq int64, err error) {
	err = s.guard(ctx, func() { seq = s.seq })
	return seq, err
}

// guard runs fn under the write lock unless the store is closed or ctx ended.
func (s *Store) guard(ctx context.Context, fn func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	fn()
	return nil
}

// OpenChat implements store.Moderation.
func (s *Store) OpenChat(ctx context.Context, room string) error {
	return s.guard(ctx, func() { s.opened[room] = true })
}

// ChatOpen implements store.Moderation.
func (s *Store) ChatOpen(ctx context.Context, room string) (open bool, err error) {
	err = s.guard(ctx, func() { open = s.opened[room] })
	return open, err
}

// SetBlock implements store.Moderation.
func (s *Store) SetBlock(ctx context.Context, blocker, blocked string, on bool) error {
	if err := store.ValidUser(blocker, blocked); err != nil {
		return err
	}
	return s.guard(ctx, func() {
		set := s.blocks[blocker]
		switch {
		case on && set == nil:
			s.blocks[blocker] = map[string]bool{blocked: true}
		case on:
			set[blocked] = true
		default:
			delete(set, blocked)
		}
	})
}

// Blocks implements store.Moderation.
func (s *Store) Blocks(ctx context.Context, blocker string) (out []string, err error) {
	err = s.guard(ctx, func() {
		out = make([]string, 0, len(s.blocks[blocker]))
		for b := range s.blocks[blocker] {
			out = append(out, b)
		}
	})
	slices.Sort(out)
	return out, err
}

// Ban implements store.Moderation.
func (s *Store) Ban(ctx context.Context, user string, until time.Time, reason string) error {
	if err := store.ValidUser(user); err != nil {
		return err
	}
	return s.guard(ctx, func() { s.bans[user] = store.Ban{UserID: user, Until: until.UTC(), Reason: reason} })
}

// Unban implements store.Moderation.
func (s *Store) Unban(ctx context.Context, user string) error {
	return s.guard(ctx, func() { delete(s.bans, user) })
}

// Bans implements store.Moderation.
func (s *Store) Bans(ctx context.Context, now time.Time) (out []store.Ban, err error) {
	err = s.guard(ctx, func() {
		out = []store.Ban{}
		for _, b := range s.bans {
			if b.Until.IsZero() || b.Until.After(now) {
				out = append(out, b)
			}
		}
	})
	slices.SortFunc(out, func(a, b store.Ban) int { return cmp.Compare(a.UserID, b.UserID) })
	return out, err
}
