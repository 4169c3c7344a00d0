-- +goose Up
-- A client id is unique per sender and room, not per sender: the same id in
-- another chat is another message. Every existing row is unique under the old
-- key, so it is unique under the wider one too and the index always builds.
-- The new index is built before the old one goes, so no moment of the
-- migration leaves duplicates possible.
CREATE UNIQUE INDEX messages_user_room_client ON messages (user_id, room, client_id) WHERE client_id IS NOT NULL;
DROP INDEX messages_user_client;

-- +goose Down
-- Fails if a sender has since reused a client id in another room: the old key
-- cannot hold both messages, and which to drop is not the migration's call.
CREATE UNIQUE INDEX messages_user_client ON messages (user_id, client_id) WHERE client_id IS NOT NULL;
DROP INDEX messages_user_room_client;
