"use strict";
// The seed's full user story, end to end with the real phoenix.js client,
// over whatever transport `connect` opens: story.test.js runs it over
// WebSockets, longpoll.test.js over phoenix.js's LongPoll, on one node and
// across two nodes behind nginx.
const assert = require("node:assert/strict");
const { joinOk, pushOk, collect, leaveChannel, assertMessage, Presence, Collector } = require("./helpers");

const ROOM = "chat:1:2";

// story runs the story; connect(user, {name}) resolves to an open phoenix.js
// Socket for user.
async function story(connect) {
  // 2 sends to chat:1:2 while 1 is offline.
  const bob = await connect(2, { name: "Bob" });
  const bobChat = bob.channel(ROOM);
  const bobMsgs = collect(bobChat, "new_message");
  const bobReads = collect(bobChat, "read");
  const bobPresence = new Presence(bobChat);
  const bobSync = new Collector("bob presence");
  bobPresence.onSync(() => bobSync.push(bobPresence.list((id, p) => `${id}:${p.metas[0].name}`).sort()));
  await joinOk(bobChat);
  const offline = await pushOk(bobChat, "new_message", { body: "hey, you there?", client_id: "story-1" });
  assertMessage(offline, { user_id: "2", opponent_id: "1", room: ROOM, body: "hey, you there?" });

  // 1 logs in: lobby unread shows 1 message.
  const alice = await connect(1, { name: "Alice" });
  const aliceLobby = alice.channel("user:1");
  const notes = collect(aliceLobby, "notification");
  const lobby = await joinOk(aliceLobby);
  assert.equal(lobby.unread.length, 1, JSON.stringify(lobby));
  assert.equal(lobby.unread[0].room, ROOM);
  assert.equal(lobby.unread[0].opponent_id, "2");
  assert.equal(lobby.unread[0].unread, 1);
  assert.equal(lobby.unread[0].last_message.id, offline.id);

  // 1 opens the chat: history has it; presence shows both.
  const aliceChat = alice.channel(ROOM);
  const aliceMsgs = collect(aliceChat, "new_message");
  const alicePresence = new Presence(aliceChat);
  const aliceSync = new Collector("alice presence");
  alicePresence.onSync(() => aliceSync.push(alicePresence.list((id, p) => `${id}:${p.metas[0].name}`).sort()));
  const hist = await joinOk(aliceChat);
  assert.deepEqual(hist.messages.map((m) => m.id), [offline.id]);
  assert.equal(hist.has_more, false);
  await aliceSync.waitFor((l) => JSON.stringify(l) === JSON.stringify(["1:Alice", "2:Bob"]), "alice sees both present");
  await bobSync.waitFor((l) => JSON.stringify(l) === JSON.stringify(["1:Alice", "2:Bob"]), "bob sees alice join");

  // 1 reads it: bob gets the receipt; lobby unread gone after a rejoin.
  await pushOk(aliceChat, "read", { last_id: offline.id });
  assert.deepEqual(await bobReads.waitFor(() => true, "read receipt"), { user_id: "1", last_id: offline.id });
  const alice2 = await connect(1, { name: "Alice" });
  const lobby2 = await joinOk(alice2.channel("user:1"));
  assert.deepEqual(lobby2.unread, []);
  alice2.disconnect();

  // They chat both ways.
  const a1 = await pushOk(aliceChat, "new_message", { body: "yes! hi bob", client_id: "story-2" });
  await bobMsgs.waitFor((m) => m.id === a1.id, "alice's reply at bob");
  const b1 = await pushOk(bobChat, "new_message", { body: "great", client_id: "story-3" });
  await aliceMsgs.waitFor((m) => m.id === b1.id, "bob's message at alice");
  // No lobby notification while alice has the chat open.
  assert.deepEqual(notes.items, []);

  // 1 leaves the chat; bob's presence sees it. Only a sync after the
  // leave counts: bob's first sync, before alice came, looked the same,
  // and a message sent on it could beat alice's leave to the cluster.
  const beforeLeave = bobSync.items.length;
  assert.equal(await leaveChannel(aliceChat), "ok");
  await bobSync.waitFor((l, i) => i >= beforeLeave && JSON.stringify(l) === JSON.stringify(["2:Bob"]), "bob sees alice leave");

  // 2 sends: 1 gets a lobby notification.
  const b2 = await pushOk(bobChat, "new_message", { body: "come back", client_id: "story-4" });
  const n = await notes.waitFor(() => true, "lobby notification");
  assert.equal(n.room, ROOM);
  assertMessage(n.message, { id: b2.id, body: "come back", user_id: "2", opponent_id: "1", room: ROOM });
}

module.exports = { story, ROOM };
