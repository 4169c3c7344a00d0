package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// This file holds what the stores keep beyond messages: the changes of a
// chat (edits, deletes, read marks) behind a per-chat change cursor, and
// the rules of who may talk to whom (chat grants, blocks, bans).

// Errors of EditMessage and DeleteMessage. Each wraps ErrRefused: the
// request can never succeed as it is, and nothing was changed.
var (
	ErrRefused = errors.New("refused")
	// ErrNotFound: no message with that id in that chat (a message of
	// another chat is not found either, so ids of other chats leak nothing).
	ErrNotFound = fmt.Errorf("%w: message not found", ErrRefused)
	// ErrNotAuthor: only the author may edit or delete their message.
	ErrNotAuthor = fmt.Errorf("%w: not the author of the message", ErrRefused)
	// ErrEditWindow: the message is older than the edit window.
	ErrEditWindow = fmt.Errorf("%w: edit window has passed", ErrRefused)
	// ErrDeleted: the message was deleted and can no longer change.
	ErrDeleted = fmt.Errorf("%w: message was deleted", ErrRefused)
	// ErrCursorAhead: a change cursor later than anything the chat holds,
	// so it never came from this chat.
	ErrCursorAhead = fmt.Errorf("%w: since_seq is ahead of the chat", ErrRefused)
)

// Amend names a message to edit or delete and the rules the change must
// meet. The store checks them in the transaction that changes the message.
type Amend struct {
	ID int64
	// Room, when set, is the chat the message must belong to; empty is
	// moderation by id alone.
	Room string
	// Author, when set, must be the message's sender; empty is moderation
	// (the host app's API), which may change any message.
	Author string
	// NotBefore, when set, refuses a message sent before it (ErrEditWindow).
	NotBefore time.Time
	// Body is the new body (EditMessage only), already validated.
	Body string
}

// Change is one entry of a chat's change log, in Seq order: a message in
// its current state (new, edited or a tombstone: Deleted set, Body empty)
// or a reader's read mark.
type Change struct {
	Seq     int64    `json:"seq"`
	Type    string   `json:"type"` // ChangeMessage or ChangeRead
	Message *Message `json:"message,omitempty"`
	UserID  string   `json:"user_id,omitempty"` // ChangeRead: the reader
	LastID  int64    `json:"last_id,omitempty"` // ChangeRead: read up to this id
}

// Types of Change.
const (
	ChangeMessage = "message"
	ChangeRead    = "read"
)

// Moderation is the part of Store behind edits, deletes, the change
// cursor, chat grants, blocks and bans. Every Store implements it.
type Moderation interface {
	// EditMessage replaces the body of a message and gives it a new Seq.
	// Refusals wrap ErrRefused and change nothing.
	EditMessage(ctx context.Context, a Amend) (Message, error)
	// DeleteMessage turns a message into a tombstone (its body is erased,
	// it counts as read) with a new Seq, and returns the tombstone.
	DeleteMessage(ctx context.Context, a Amend) (Message, error)
	// Changes returns up to limit changes of room with Seq > after, in Seq
	// order: each changed message once, in its current state, and each
	// reader's newest read mark. head is the room's latest Seq; an after
	// beyond it gets ErrCursorAhead.
	Changes(ctx context.Context, room string, after int64, limit int) (changes []Change, head int64, err error)
	// LastSeq returns the highest change seq handed out so far (0 when
	// none). A clustered node samples it with LastID, so that after lost
	// fanout change cursors catch up from before the loss.
	LastSeq(ctx context.Context) (int64, error)

	// OpenChat records that room was opened by a grant: from now on
	// either side may join without one. Idempotent.
	OpenChat(ctx context.Context, room string) error
	// ChatOpen reports whether OpenChat was called for room.
	ChatOpen(ctx context.Context, room string) (bool, error)

	// SetBlock makes blocker block (on) or stop blocking blocked.
	// Idempotent.
	SetBlock(ctx context.Context, blocker, blocked string, on bool) error
	// Blocks lists the users blocker blocks.
	Blocks(ctx context.Context, blocker string) ([]string, error)

	// Ban refuses user until until (zero: until Unban), with reason.
	Ban(ctx context.Context, user string, until time.Time, reason string) error
	// Unban lifts user's ban. Idempotent.
	Unban(ctx context.Context, user string) error
	// Bans lists the bans in force at now.
	Bans(ctx context.Context, now time.Time) ([]Ban, error)
}

// Ban is a user refused until Until (zero: for good).
type Ban struct {
	UserID string    `json:"user_id"`
	Until  time.Time `json:"until,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// CheckAmend applies a's rules to m, the stored message: the one place the
// three stores decide an edit or delete.
func CheckAmend(a Amend, m Message, found bool) error {
	switch {
	case !found || (a.Room != "" && m.Room != a.Room):
		return ErrNotFound
	case a.Author != "" && m.UserID != a.Author:
		return ErrNotAuthor
	case m.Deleted:
		return ErrDeleted
	case !a.NotBefore.IsZero() && m.SentAt.Before(a.NotBefore):
		return ErrEditWindow
	}
	return nil
}

// MergeChanges merges message and read changes (each in Seq order) into
// one page of at most limit, in Seq order.
func MergeChanges(msgs []Message, reads []Change, limit int) []Change {
	out := make([]Change, 0, min(limit, len(msgs)+len(reads)))
	i, j := 0, 0
	for len(out) < limit && (i < len(msgs) || j < len(reads)) {
		if j >= len(reads) || (i < len(msgs) && msgs[i].Seq < reads[j].Seq) {
			m := msgs[i]
			out = append(out, Change{Seq: m.Seq, Type: ChangeMessage, Message: &m})
			i++
		} else {
			out = append(out, reads[j])
			j++
		}
	}
	return out
}

// ValidUser rejects user ids a store cannot hold.
func ValidUser(ids ...string) error {
	for _, id := range ids {
		if id == "" {
			return fmt.Errorf("%w: empty user id", ErrInvalid)
		}
		if err := (NewMessage{Room: "r", UserID: id, OpponentID: "o"}).Validate(); err != nil {
			return err
		}
	}
	return nil
}
