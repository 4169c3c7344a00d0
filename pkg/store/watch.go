package store

import (
	"context"
	"errors"
	"log/slog"

	"github.com/elchat/elchat/internal/logx"
)

// Watch returns st with its outages logged: one Warn line when calls
// start failing because of the database (ErrUnavailable or a deadline),
// one Info line with the outage's length and failure count when a call
// succeeds again. Refusals caused by the arguments (ErrInvalid) are not
// outages. The node's hub samples LastID every few seconds, so the end of
// an outage is noticed even when no client writes.
func Watch(st Store, log *slog.Logger) Store {
	w := &watched{Store: st, o: logx.NewOutage(log, "store")}
	if n, ok := st.(nothingUnread); ok {
		// Only a store that can answer from memory offers it, so the hub
		// sees which kind it has.
		return &watchedNow{watched: w, now: n}
	}
	return w
}

// nothingUnread is the optional ability of a store to tell from memory
// that a user has nothing unread (see the hub's lobby join).
type nothingUnread interface{ NothingUnread(user string) bool }

// watchedNow is watched for a store with NothingUnread.
type watchedNow struct {
	*watched
	now nothingUnread
}

func (w *watchedNow) NothingUnread(user string) bool { return w.now.NothingUnread(user) }

type watched struct {
	Store
	o *logx.Outage
}

func (w *watched) note(err error) {
	switch {
	case err == nil:
		w.o.OK()
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		w.o.Fail(err)
	}
}

func (w *watched) Save(ctx context.Context, m NewMessage) (Message, bool, error) {
	msg, created, err := w.Store.Save(ctx, m)
	w.note(err)
	return msg, created, err
}

func (w *watched) History(ctx context.Context, room string, before int64, limit int) ([]Message, error) {
	ms, err := w.Store.History(ctx, room, before, limit)
	w.note(err)
	return ms, err
}

func (w *watched) Since(ctx context.Context, room string, after int64, limit int) ([]Message, error) {
	ms, err := w.Store.Since(ctx, room, after, limit)
	w.note(err)
	return ms, err
}

func (w *watched) MarkRead(ctx context.Context, room, reader string, lastID int64) (int64, error) {
	n, err := w.Store.MarkRead(ctx, room, reader, lastID)
	w.note(err)
	return n, err
}

func (w *watched) Unread(ctx context.Context, userID string) ([]UnreadChat, error) {
	u, err := w.Store.Unread(ctx, userID)
	w.note(err)
	return u, err
}

func (w *watched) LastID(ctx context.Context) (int64, error) {
	id, err := w.Store.LastID(ctx)
	w.note(err)
	return id, err
}

func (w *watched) Ping(ctx context.Context) error {
	err := w.Store.Ping(ctx)
	w.note(err)
	return err
}

// SaveAsync forwards to a store that commits asynchronously, noting the
// outcome like Save; false (the caller saves synchronously) otherwise.
func (w *watched) SaveAsync(ctx context.Context, m NewMessage, then func(Message, bool, error)) bool {
	a, ok := w.Store.(AsyncSaver)
	if !ok {
		return false
	}
	return a.SaveAsync(ctx, m, func(msg Message, created bool, err error) {
		w.note(err)
		then(msg, created, err)
	})
}
