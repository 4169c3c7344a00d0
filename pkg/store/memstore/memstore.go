// Package memstore is a Store that keeps everything in memory, for tests
// that need a store but no database (the hub's, chiefly). It follows the
// same contract as the SQLite and PostgreSQL stores and passes the same
// suite (storetest): ids increase across rooms, Save is idempotent on
// (UserID, Room, ClientID) with the same body rule, and input is validated
// alike. Nothing survives Close or the process, and nothing is bounded: a
// Store holds every message it was given.
package memstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/store"
)

// Store implements store.Store in memory. The zero value is not usable; call
// New.
type Store struct {
	mu     sync.RWMutex
	closed bool
	// msgs holds every message, msgs[i].ID == i+1: ids are dense, so an id
	// indexes its message.
	msgs []store.Message
	// notify[i] tells whether msgs[i] asked for a webhook event.
	notify []bool
	rooms  map[string][]int64 // room → its message ids, ascending
	keys   map[store.IdempotencyKey]int64
	// unread[reader][room] lists, ascending, the ids of messages of room
	// sent to reader and not yet delivered; emptied rooms are deleted.
	unread map[string]map[string][]int64

	// The webhook outbox (outbox.go): events by id, and the pending one
	// of each user.
	events    map[int64]*event
	pending   map[string]int64
	nextEvent int64
	// The change log (moderation.go).
	seq    int64                       // last Seq handed out
	heads  map[string]int64            // room → its latest Seq
	reads  map[string]map[string]int64 // room → reader → Seq of their read mark
	marks  map[string]map[string]int64 // room → reader → last id read
	opened map[string]bool             // rooms opened by a grant
	blocks map[string]map[string]bool  // blocker → blocked
	bans   map[string]store.Ban
}

var _ store.Store = (*Store)(nil)

// New returns an empty Store.
func New() *Store {
	return &Store{
		rooms:   make(map[string][]int64),
		keys:    make(map[store.IdempotencyKey]int64),
		unread:  make(map[string]map[string][]int64),
		events:  make(map[int64]*event),
		pending: make(map[string]int64),
		heads:   make(map[string]int64),
		reads:   make(map[string]map[string]int64),
		marks:   make(map[string]map[string]int64),
		opened:  make(map[string]bool),
		blocks:  make(map[string]map[string]bool),
		bans:    make(map[string]store.Ban),
	}
}

// errClosed is what every method but Save returns after Close, the way a
// closed database connection is an outage for the other stores.
var errClosed = fmt.Errorf("%w: %w", store.ErrUnavailable, store.ErrClosed)

// Save implements store.Store. It checks its arguments in the batcher's
// order: invalid input, then an ended ctx, then a closed store.
func (s *Store) Save(ctx context.Context, m store.NewMessage) (store.Message, bool, error) {
	if err := m.Validate(); err != nil {
		return store.Message{}, false, err
	}
	res, err := s.SaveBatch(ctx, []store.NewMessage{m})
	if err != nil {
		return store.Message{}, false, err
	}
	r := res[0]
	return r.Msg, r.Created, r.Err
}

// SaveBatch saves batch atomically, with the same folding of duplicates as
// the database stores' SaveBatch.
func (s *Store) SaveBatch(ctx context.Context, batch []store.NewMessage) ([]store.SaveResult, error) {
	return store.SaveBatch(ctx, s.flush, batch)
}

// flush is the store.FlushFunc: batch holds no two messages with one key.
func (s *Store) flush(_ context.Context, batch []store.NewMessage) ([]store.SaveResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	// One timestamp per batch, at the precision of the database stores.
	now := time.Now().UTC().Truncate(time.Microsecond)
	out := make([]store.SaveResult, len(batch))
	for i, m := range batch {
		k, hasKey := m.Key()
		if hasKey {
			if id, dup := s.keys[k]; dup {
				out[i] = store.SaveResult{Msg: s.msgs[id-1]}
				continue
			}
		}
		id := int64(len(s.msgs)) + 1
		msg := store.Message{ID: id, Room: m.Room, UserID: m.UserID, OpponentID: m.OpponentID,
			Body: m.Body, ClientID: m.ClientID, SentAt: now, Seq: s.nextSeqLocked(m.Room)}
		s.msgs = append(s.msgs, msg)
		s.notify = append(s.notify, m.NotifyAfter > 0)
		s.rooms[m.Room] = append(s.rooms[m.Room], id)
		if hasKey {
			s.keys[k] = id
		}
		byRoom := s.unread[m.OpponentID]
		if byRoom == nil {
			byRoom = make(map[string][]int64)
			s.unread[m.OpponentID] = byRoom
		}
		byRoom[m.Room] = append(byRoom[m.Room], id)
		out[i] = store.SaveResult{Msg: msg, Created: true}
	}
	s.notifyLocked(now, store.NotifyList(batch, out))
	return out, nil
}

// History implements store.Store.
func (s *Store) History(ctx context.Context, room string, before int64, limit int) ([]store.Message, error) {
	return s.page(ctx, room, limit, func(ids []int64, limit int) []int64 {
		end := firstAbove(ids, store.HistoryBound(before)-1) // ids[:end] are < before
		return ids[max(0, end-limit):end]
	})
}

// Since implements store.Store.
func (s *Store) Since(ctx context.Context, room string, after int64, limit int) ([]store.Message, error) {
	return s.page(ctx, room, limit, func(ids []int64, limit int) []int64 {
		start := firstAbove(ids, after)
		return ids[start:min(len(ids), start+limit)]
	})
}

// page serves History and Since: window picks, from the room's ascending
// ids, the at most limit ones to return.
func (s *Store) page(ctx context.Context, room string, limit int, window func(ids []int64, limit int) []int64) ([]store.Message, error) {
	return store.Page(ctx, limit, func(limit int) ([]store.Message, error) {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.closed {
			return nil, errClosed
		}
		return s.copyOut(window(s.rooms[room], limit)), nil
	})
}

// firstAbove returns the index of the first id in ids (ascending) that is
// greater than id.
func firstAbove(ids []int64, id int64) int {
	return sort.Search(len(ids), func(i int) bool { return ids[i] > id })
}

// copyOut returns the messages of ids; the caller holds mu.
func (s *Store) copyOut(ids []int64) []store.Message {
	out := make([]store.Message, len(ids))
	for i, id := range ids {
		out[i] = s.msgs[id-1]
	}
	return out
}

// MarkRead implements store.Store.
func (s *Store) MarkRead(ctx context.Context, room, reader string, lastID int64) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errClosed
	}
	s.markLocked(room, reader, lastID)
	byRoom := s.unread[reader]
	ids := byRoom[room]
	n := firstAbove(ids, lastID)
	if n == 0 {
		return 0, nil
	}
	for _, id := range ids[:n] {
		s.msgs[id-1].Delivered = true
	}
	if n == len(ids) {
		delete(byRoom, room)
		if len(byRoom) == 0 {
			delete(s.unread, reader)
		}
	} else {
		byRoom[room] = ids[n:]
	}
	return int64(n), nil
}

// Unread implements store.Store. It costs the number of rooms with unread
// messages for userID, not the number of messages.
func (s *Store) Unread(ctx context.Context, userID string) ([]store.UnreadChat, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	out := make([]store.UnreadChat, 0, len(s.unread[userID]))
	for room, ids := range s.unread[userID] {
		all := s.rooms[room]
		out = append(out, store.UnreadChat{
			Room: room,
			// The sender of the newest unread message, as the SQL stores.
			OpponentID: s.msgs[ids[len(ids)-1]-1].UserID,
			Unread:     len(ids),
			Last:       s.msgs[all[len(all)-1]-1],
		})
	}
	slices.SortFunc(out, func(a, b store.UnreadChat) int { return cmp.Compare(b.Last.ID, a.Last.ID) })
	return out, nil
}

// NothingUnread reports that userID has no undelivered message: the
// store is memory, so it always knows.
func (s *Store) NothingUnread(userID string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.closed && len(s.unread[userID]) == 0
}

// LastID implements store.Store.
func (s *Store) LastID(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, errClosed
	}
	return int64(len(s.msgs)), nil
}

// Ping implements store.Store: it fails only after Close.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errClosed
	}
	return nil
}

// Close drops the messages. Later calls fail: Save with store.ErrClosed,
// the others with an error wrapping store.ErrUnavailable. It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.msgs, s.notify, s.rooms, s.keys, s.unread, s.events, s.pending = nil, nil, nil, nil, nil, nil, nil
	s.heads, s.reads, s.marks, s.opened, s.blocks, s.bans = nil, nil, nil, nil, nil, nil
	return nil
}
