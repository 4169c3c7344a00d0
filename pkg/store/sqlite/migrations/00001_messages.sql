-- +goose Up
-- sent_at holds Unix microseconds (UTC): SQLite has no timestamp type, and an
-- integer keeps the same precision PostgreSQL's timestamptz has.
CREATE TABLE messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    room         TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    opponent_id  TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    client_id    TEXT    NULL,
    sent_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    is_delivered INTEGER NOT NULL DEFAULT 0 CHECK (is_delivered IN (0, 1))
);
CREATE UNIQUE INDEX messages_user_client ON messages (user_id, client_id) WHERE client_id IS NOT NULL;
CREATE INDEX messages_room_id ON messages (room, id);
CREATE INDEX messages_unread ON messages (opponent_id, room, id) WHERE NOT is_delivered;

-- +goose Down
DROP TABLE messages;
