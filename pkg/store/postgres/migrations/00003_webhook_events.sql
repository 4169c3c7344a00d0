-- +goose Up
-- The webhook outbox. A pending row collects the unread messages to one
-- user (one pending row per user and type, enforced by webhook_events_open)
-- until next_at; last_message_id stays NULL until then; claiming seals it (state 'sending', messages fixed) and
-- leases it to one node by pushing next_at past the lease, so a node that
-- dies mid-delivery leaves a row that is simply due again later. Sent and
-- cancelled rows are deleted; dead ones stay for the API.
CREATE TABLE webhook_events (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type             text        NOT NULL,
    user_id          text        NOT NULL,
    state            text        NOT NULL CHECK (state IN ('pending', 'sending', 'dead')),
    first_message_id bigint      NOT NULL,
    last_message_id  bigint      NULL,
    messages         text        NULL,
    due_at           timestamptz NOT NULL,
    next_at          timestamptz NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    claimed_by       text        NULL,
    last_error       text        NOT NULL DEFAULT '',
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_events_open ON webhook_events (type, user_id) WHERE state = 'pending';
CREATE INDEX webhook_events_due ON webhook_events (next_at) WHERE state IN ('pending', 'sending');

-- notify marks the messages that asked for an event (recipient not in the
-- chat when they were saved): an event is cancelled once all of those are
-- read, whatever else is unread. A constant default makes this instant.
ALTER TABLE messages ADD COLUMN notify boolean NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE messages DROP COLUMN notify;
DROP TABLE webhook_events;
