-- +goose Up
-- The webhook outbox; see the PostgreSQL migration of the same number.
-- Times are Unix microseconds, as in messages.
CREATE TABLE webhook_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    type             TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'dead')),
    first_message_id INTEGER NOT NULL,
    last_message_id  INTEGER NULL,
    messages         TEXT    NULL,
    due_at           INTEGER NOT NULL,
    next_at          INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    claimed_by       TEXT    NULL,
    last_error       TEXT    NOT NULL DEFAULT '',
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX webhook_events_open ON webhook_events (type, user_id) WHERE state = 'pending';
CREATE INDEX webhook_events_due ON webhook_events (next_at) WHERE state IN ('pending', 'sending');

-- notify marks the messages that asked for an event; see the PostgreSQL
-- migration.
ALTER TABLE messages ADD COLUMN notify INTEGER NOT NULL DEFAULT 0 CHECK (notify IN (0, 1));

-- +goose Down
ALTER TABLE messages DROP COLUMN notify;
DROP TABLE webhook_events;
