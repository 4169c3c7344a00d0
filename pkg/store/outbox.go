package store

import (
	"context"
	"encoding/json"
	"time"
)

// The webhook outbox lives in the store, beside the messages it is about,
// so that a message and the pending event announcing it commit in the same
// transaction: a node that crashes after acknowledging a message cannot
// have lost its event. Rows are coalesced per recipient: while an event for
// a user is pending (collecting), later messages to that user join it
// instead of adding rows, so five messages make one event.
//
// Unread-ness is never copied into the outbox. It is read from the messages
// when an event is claimed: an event whose triggering messages (those saved
// with NotifyAfter, which the stores flag) have all been read by then is
// dropped without a POST. One that is still due carries
// every unread message to the user from its first one on, those that came
// while the user was in the chat included: the receiver gets the user's
// unread state, not a log of triggers. A read therefore cancels a pending event
// simply by happening, and a read racing a send is not an error for anyone:
// the read commits, and the receiver at worst gets an event about a message
// that was read a moment ago (at-least-once, like everything else here).

// Event types.
const EventMessageUnread = "message.unread"

// Event states. Sent and cancelled events are deleted, not kept: the outbox
// holds only what is still to be done and what gave up.
const (
	// EventPending collects messages until it is due (stored_at of its
	// first message + notify-after).
	EventPending = "pending"
	// EventSending has its messages fixed and is being delivered, or waits
	// for its next attempt.
	EventSending = "sending"
	// EventDead exhausted its attempts or was refused by the receiver.
	EventDead = "dead"
)

// MaxEventMessages caps the messages one event carries (the oldest unread
// ones); a receiver wanting more reads /api/v1/users/{id}/unread.
const MaxEventMessages = 100

// Event is one webhook event.
type Event struct {
	ID       int64     `json:"id"`
	Type     string    `json:"type"`
	UserID   string    `json:"user_id"`
	State    string    `json:"state"`
	DueAt    time.Time `json:"due_at"`
	Attempts int       `json:"attempts"`
	// Messages are the unread messages the event announces, fixed when the
	// event is first claimed, so every attempt sends the same body.
	Messages  []Message `json:"messages"`
	LastError string    `json:"last_error,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Outcome is what an attempt at a claimed event came to.
type Outcome struct {
	// Kind says what happens to the event.
	Kind OutcomeKind
	// RetryIn is how long until the next attempt (Kind == Retry).
	RetryIn time.Duration
	// Error describes the failure (Retry, Dead); kept on the event.
	Error string
}

// OutcomeKind is Sent, Retry or Dead.
type OutcomeKind int

const (
	Sent  OutcomeKind = iota // delivered: the event is deleted
	Retry                    // attempt again after RetryIn
	Dead                     // give up: kept as EventDead
)

// Outbox is the durable queue of webhook events. The webhook sender uses
// it; the SQLite, PostgreSQL and memory stores implement it and pass
// storetest.RunOutbox. Events enter it through Save (NewMessage.NotifyAfter).
type Outbox interface {
	// ClaimEvents leases up to limit due events to owner for lease and
	// returns them with their messages. A pending event is sealed (its
	// messages fixed, later messages start a new event); an event none
	// of whose messages is still unread is deleted instead of returned
	// and counted in cancelled.
	// In a cluster every event is claimed by one owner at a time; a claim
	// whose owner never finishes it (the node died) is due again once
	// its lease ends.
	ClaimEvents(ctx context.Context, owner string, lease time.Duration, limit int) (claimed []Event, cancelled int, err error)
	// FinishEvent records the outcome of an attempt at an event owner
	// claimed. It reports false, and changes nothing, when owner no
	// longer holds the claim (its lease ended and another owner took it).
	FinishEvent(ctx context.Context, id int64, owner string, o Outcome) (bool, error)
	// DeadEvents lists up to limit dead events, newest first.
	DeadEvents(ctx context.Context, limit int) ([]Event, error)
	// RequeueEvent gives dead event id a fresh set of attempts, due now,
	// with the same messages (and the same read check before it is sent).
	// It reports false when no dead event has that id.
	RequeueEvent(ctx context.Context, id int64) (bool, error)
	// EventCounts counts events by state (pending, sending, dead).
	EventCounts(ctx context.Context) (map[string]int64, error)
}

// EncodeMessages and DecodeMessages store an event's messages as JSON, the
// same in every store.
func EncodeMessages(msgs []Message) (string, error) {
	b, err := json.Marshal(msgs)
	return string(b), err
}

// DecodeMessages is the inverse of EncodeMessages.
func DecodeMessages(s string) ([]Message, error) {
	var msgs []Message
	if s == "" {
		return []Message{}, nil
	}
	err := json.Unmarshal([]byte(s), &msgs)
	return msgs, err
}

// Notify is one recipient's share of a batch for the outbox: the first
// created message to UserID that asked for an event, and its delay.
type Notify struct {
	UserID  string
	FirstID int64
	After   time.Duration
}

// NotifyList folds the created messages of a batch that asked for an event
// into one entry per recipient, in first-seen order: a statement upserting
// them must not touch one row twice.
func NotifyList(batch []NewMessage, res []SaveResult) []Notify {
	var out []Notify
	var seen map[string]int
	for i, m := range batch {
		if m.NotifyAfter <= 0 || !res[i].Created {
			continue
		}
		if seen == nil {
			seen = make(map[string]int)
		}
		if j, ok := seen[m.OpponentID]; ok {
			out[j].FirstID = min(out[j].FirstID, res[i].Msg.ID)
			continue
		}
		seen[m.OpponentID] = len(out)
		out = append(out, Notify{UserID: m.OpponentID, FirstID: res[i].Msg.ID, After: m.NotifyAfter})
	}
	return out
}
