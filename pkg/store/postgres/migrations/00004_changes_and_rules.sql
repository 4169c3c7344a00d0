-- +goose Up
-- The change cursor: every change of a chat (a new message, an edit, a
-- delete, a read mark) takes the next value of one sequence, drawn under the
-- insert advisory lock so that changes become visible in seq order. A
-- message's seq is that of its latest change. Existing messages keep their
-- id as seq, so the sequence starts above the highest id.
CREATE SEQUENCE message_changes_seq;
ALTER TABLE messages
    ADD COLUMN seq        bigint      NULL,
    ADD COLUMN edited_at  timestamptz NULL,
    ADD COLUMN deleted_at timestamptz NULL;
UPDATE messages SET seq = id;
SELECT setval('message_changes_seq', COALESCE((SELECT max(id) FROM messages), 0) + 1, false);
ALTER TABLE messages
    ALTER COLUMN seq SET DEFAULT nextval('message_changes_seq'),
    ALTER COLUMN seq SET NOT NULL;
CREATE INDEX messages_room_seq ON messages (room, seq);

-- Each reader's newest read mark per chat, a change of its own.
CREATE TABLE chat_reads (
    room    text   NOT NULL,
    reader  text   NOT NULL,
    last_id bigint NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (room, reader)
);
CREATE INDEX chat_reads_room_seq ON chat_reads (room, seq);

-- Chats opened by a grant (chat policy "granted").
CREATE TABLE open_chats (
    room      text        PRIMARY KEY,
    opened_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE blocks (
    blocker    text        NOT NULL,
    blocked    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker, blocked)
);

-- until NULL: banned until lifted.
CREATE TABLE bans (
    user_id    text        PRIMARY KEY,
    until      timestamptz NULL,
    reason     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE bans;
DROP TABLE blocks;
DROP TABLE open_chats;
DROP TABLE chat_reads;
DROP INDEX messages_room_seq;
ALTER TABLE messages DROP COLUMN seq, DROP COLUMN edited_at, DROP COLUMN deleted_at;
DROP SEQUENCE message_changes_seq;
