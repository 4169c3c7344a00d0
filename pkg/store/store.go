// Package store keeps chat history. Three implementations satisfy Store and
// pass the same suite (storetest): an embedded SQLite file for development
// and small installs, PostgreSQL for clusters, and memstore, which keeps
// nothing across restarts and exists so tests need no database. All three
// also keep the webhook outbox (Outbox, outbox.go) beside the messages, and
// pass its suite (storetest.RunOutbox).
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrUnavailable wraps every failure caused by the database being
// unreachable or refusing work, so callers can tell it apart from bad input.
var ErrUnavailable = errors.New("store unavailable")

// ErrClientIDReused refuses a Save whose (UserID, Room, ClientID) is already
// taken by a message with a different Body: that is not a retry but a client
// reusing an id, and handing back the stored message would answer it with
// someone else's content. It wraps ErrInvalid, not ErrUnavailable: the same
// message can never succeed, so callers must not retry it.
var ErrClientIDReused = fmt.Errorf("%w: client_id already used for a different message", ErrInvalid)

// Message is a stored chat message. ID is assigned by the store, grows with
// time within a room, and is the cursor for paging, catch-up and read marks.
type Message struct {
	ID         int64     `json:"id"`
	Room       string    `json:"room"`
	UserID     string    `json:"user_id"`
	OpponentID string    `json:"opponent_id"`
	Body       string    `json:"body"`
	ClientID   string    `json:"client_id,omitempty"`
	SentAt     time.Time `json:"sent_at"`
	Delivered  bool      `json:"is_delivered"`
	// Seq is the chat's change cursor at this message's latest change
	// (its creation, edit or delete); see Moderation.Changes.
	Seq      int64     `json:"seq"`
	EditedAt time.Time `json:"edited_at,omitzero"`
	// Deleted marks a tombstone: the body is gone for good.
	Deleted bool `json:"deleted,omitempty"`
}

// NewMessage is a message to store. ClientID, when set, makes Save
// idempotent per sender and chat: a second Save with the same
// (UserID, Room, ClientID) and the same Body returns the first stored message
// and stores nothing; with a different Body it fails with ErrClientIDReused
// and stores nothing. The same ClientID in another Room is another message.
type NewMessage struct {
	Room       string
	UserID     string
	OpponentID string
	Body       string
	ClientID   string
	// NotifyAfter, when positive, asks for a message.unread webhook event
	// to the recipient due NotifyAfter after the message is stored, unless
	// it is read by then. The event row commits with the message (see
	// Outbox); an event already pending for the recipient takes it in.
	// Retries (created == false) add nothing.
	NotifyAfter time.Duration
}

// UnreadChat summarises one room with messages the user has not read.
type UnreadChat struct {
	Room       string  `json:"room"`
	OpponentID string  `json:"opponent_id"`
	Unread     int     `json:"unread"`
	Last       Message `json:"last_message"`
}

// AsyncSaver is an optional ability of a Store: SaveAsync queues m for
// the next group commit without waiting and calls then with Save's
// results from the committing goroutine (see Batcher.SaveAsync). It
// returns false, without calling then, when m cannot be queued at once.
type AsyncSaver interface {
	SaveAsync(ctx context.Context, m NewMessage, then func(msg Message, created bool, err error)) bool
}

// Store is the durable side of ElChat. Every method is safe for concurrent
// use. Errors caused by the database (not by arguments) wrap ErrUnavailable.
type Store interface {
	// Save stores m durably before returning. Concurrent calls are group
	// committed: many callers share one transaction. On a ClientID retry
	// (same UserID, Room, ClientID and Body) it returns the original message
	// with created == false; a retry with another Body gets
	// ErrClientIDReused. Invalid messages get ErrInvalid.
	Save(ctx context.Context, m NewMessage) (msg Message, created bool, err error)
	// History returns up to limit messages of room with ID < before (before
	// <= 0 means the newest), oldest first.
	History(ctx context.Context, room string, before int64, limit int) ([]Message, error)
	// Since returns up to limit messages of room with ID > after, oldest first.
	Since(ctx context.Context, room string, after int64, limit int) ([]Message, error)
	// MarkRead marks delivered every message of room sent to reader with
	// ID <= lastID and returns how many changed.
	MarkRead(ctx context.Context, room, reader string, lastID int64) (int64, error)
	// Unread lists the rooms where userID has undelivered messages, newest
	// activity first.
	Unread(ctx context.Context, userID string) ([]UnreadChat, error)
	// LastID returns the highest message id stored so far (0 when empty).
	// A node notes it periodically so that after losing cluster fanout it
	// knows from where clients must catch up.
	LastID(ctx context.Context) (int64, error)
	// Ping reports whether the database answers.
	Ping(ctx context.Context) error
	// Close flushes pending batches and releases the database.
	Close() error

	Moderation
}
