-- +goose Up
-- The change cursor: every change of a chat (a new message, an edit, a
-- delete, a read mark) takes the next value of change_seq. SQLite has one
-- writer, so changes become visible in seq order. A message's seq is that
-- of its latest change; existing messages keep their id as seq.
ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at INTEGER NULL;
ALTER TABLE messages ADD COLUMN deleted_at INTEGER NULL;
UPDATE messages SET seq = id;
CREATE INDEX messages_room_seq ON messages (room, seq);
CREATE TABLE change_seq (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO change_seq (id, value) VALUES (1, COALESCE((SELECT max(id) FROM messages), 0));

-- Each reader's newest read mark per chat, a change of its own.
CREATE TABLE chat_reads (
    room    TEXT    NOT NULL,
    reader  TEXT    NOT NULL,
    last_id INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room, reader)
);
CREATE INDEX chat_reads_room_seq ON chat_reads (room, seq);

-- Chats opened by a grant (chat policy "granted").
CREATE TABLE open_chats (
    room      TEXT    PRIMARY KEY,
    opened_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
);

CREATE TABLE blocks (
    blocker TEXT NOT NULL,
    blocked TEXT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);

-- until: Unix microseconds, NULL: banned until lifted.
CREATE TABLE bans (
    user_id TEXT    PRIMARY KEY,
    until   INTEGER NULL,
    reason  TEXT    NOT NULL DEFAULT ''
);

-- +goose Down
DROP TABLE bans;
DROP TABLE blocks;
DROP TABLE open_chats;
DROP TABLE chat_reads;
DROP TABLE change_seq;
DROP INDEX messages_room_seq;
ALTER TABLE messages DROP COLUMN deleted_at;
ALTER TABLE messages DROP COLUMN edited_at;
ALTER TABLE messages DROP COLUMN seq;
