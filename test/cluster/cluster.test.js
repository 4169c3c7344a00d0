"use strict";
// Three real ElChat nodes on one Redis and one PostgreSQL, a real nginx with
// deploy/nginx/elchat.conf in front, and the real phoenix.js client.
const assert = require("node:assert/strict");
const { clusterTest, joinOk, pushOk, chatTopic, messageLog, presenceOf, collect, NGINX, WAIT_MS } = require("./lib/env");

// The chat story across three nodes, run on one Redis and on a Redis
// Cluster (three primaries, three replicas: sharded pub/sub, partitioned
// presence keys).
async function chatStory(c) {
  const [A, B, C] = c.nodes;
  const room = chatTopic(1, 2);

  // Alice on node A, Bob on node B (direct, deterministic).
  const alice = await c.connect(1, A, { name: "Alice" });
  const bob = await c.connect(2, B, { name: "Bob" });
  const aLobby = alice.channel("user:1");
  const bLobby = bob.channel("user:2");
  assert.deepEqual(await joinOk(aLobby), { unread: [] });
  assert.deepEqual(await joinOk(bLobby), { unread: [] });
  const aNotes = collect(aLobby, "notification");
  const bNotes = collect(bLobby, "notification");

  const aChat = alice.channel(room, {});
  const bChat = bob.channel(room, {});
  const aMsgs = messageLog(aChat);
  const bMsgs = messageLog(bChat);
  const aPres = presenceOf(aChat);
  const bPres = presenceOf(bChat);
  const r1 = await joinOk(aChat);
  assert.deepEqual(r1, { messages: [], has_more: false });
  await joinOk(bChat);

  // Presence across nodes: each side's Presence.onSync lists both users.
  const both = (list) => list.map((e) => e.id).sort().join(",") === "1,2";
  await aPres.syncs.waitFor(both, "Alice's Presence to list users 1 and 2", WAIT_MS);
  await bPres.syncs.waitFor(both, "Bob's Presence to list users 1 and 2", WAIT_MS);
  const names = Object.fromEntries(aPres.list((id, { metas }) => [id, metas[0].name]));
  assert.deepEqual(names, { 1: "Alice", 2: "Bob" });

  // Messages both ways, across nodes.
  const m1 = await pushOk(aChat, "new_message", { body: "hi Bob, from node A", client_id: "a-1" });
  assert.equal(m1.user_id, "1");
  assert.equal(m1.room, room);
  const got1 = await bMsgs.waitFor((m) => m.id === m1.id, "Bob to receive Alice's message from node A", WAIT_MS);
  assert.equal(got1.body, "hi Bob, from node A");
  const m2 = await pushOk(bChat, "new_message", { body: "hi Alice, from node B", client_id: "b-1" });
  const got2 = await aMsgs.waitFor((m) => m.id === m2.id, "Alice to receive Bob's message from node B", WAIT_MS);
  assert.equal(got2.body, "hi Alice, from node B");
  assert.ok(m2.id > m1.id, "ids grow");
  // Both in the chat: no lobby notifications.
  await aNotes.none(() => true, "notification while Alice is in the chat", 300);
  await bNotes.none(() => true, "notification while Bob is in the chat", 0);

  // Carol on node C has only her lobby open: Alice's message to her arrives
  // as a lobby notification on another node.
  const carol = await c.connect(3, C, { name: "Carol" });
  const cLobby = carol.channel("user:3");
  await joinOk(cLobby);
  const cNotes = collect(cLobby, "notification");
  const acChat = alice.channel(chatTopic(1, 3), {});
  await joinOk(acChat);
  const m3 = await pushOk(acChat, "new_message", { body: "ping Carol", client_id: "a-c-1" });
  const note = await cNotes.waitFor((n) => n.message && n.message.id === m3.id, "Carol's lobby notification on node C", WAIT_MS);
  assert.equal(note.room, chatTopic(1, 3));
  assert.equal(note.message.body, "ping Carol");

  // Dave is offline; Alice writes him twice. When he logs in (through
  // nginx, any node) his lobby join reply lists the unread chat.
  const adChat = alice.channel(chatTopic(1, 4), {});
  await joinOk(adChat);
  await pushOk(adChat, "new_message", { body: "dave 1" });
  const last = await pushOk(adChat, "new_message", { body: "dave 2" });
  const dave = await c.connect(4, "nginx", { name: "Dave" });
  const dLobby = dave.channel("user:4");
  const unread = await joinOk(dLobby);
  assert.equal(unread.unread.length, 1, JSON.stringify(unread));
  assert.equal(unread.unread[0].room, chatTopic(1, 4));
  assert.equal(unread.unread[0].unread, 2);
  assert.equal(unread.unread[0].opponent_id, "1");
  assert.equal(unread.unread[0].last_message.id, last.id);

  // Through nginx: Dave opens the chat and talks to Alice (on node A).
  const dChat = dave.channel(chatTopic(1, 4), {});
  const dMsgs = messageLog(dChat);
  const adMsgs = messageLog(adChat);
  const dPres = presenceOf(dChat);
  const hist = await joinOk(dChat);
  assert.deepEqual(hist.messages.map((m) => m.body), ["dave 1", "dave 2"]);
  await dPres.syncs.waitFor((l) => l.map((e) => e.id).sort().join(",") === "1,4", "Dave's presence to list 1 and 4", WAIT_MS);
  const m5 = await pushOk(dChat, "new_message", { body: "hello via nginx" });
  await adMsgs.waitFor((m) => m.id === m5.id, "Alice to get Dave's message sent through nginx", WAIT_MS);
  const m6 = await pushOk(adChat, "new_message", { body: "back to Dave" });
  await dMsgs.waitFor((m) => m.id === m6.id, "Dave (through nginx) to get Alice's reply", WAIT_MS);

  // Leaving is seen across nodes: Bob leaves, Alice's Presence drops him.
  // Only a sync after the leave counts: Alice's first one, before Bob
  // joined, listed her alone too.
  const beforeLeave = aPres.syncs.items.length;
  bChat.leave();
  await aPres.syncs.waitFor((l, i) => i >= beforeLeave && l.map((e) => e.id).join(",") === "1", "Alice's presence to drop Bob after he left on node B", WAIT_MS);

  // And the sockets really were spread: A has Alice, B Bob, C Carol.
  const counts = await c.clientsOn();
  assert.ok(counts[0] >= 1 && counts[1] >= 1 && counts[2] >= 1, `clients per node ${JSON.stringify(counts)}`);
}

const skip = !NGINX && !process.env.CI && "nginx not installed";
clusterTest("cluster: two users on different nodes chat, see each other's presence, get notifications and unread", { nodes: 3, nginx: true, skip }, chatStory);
clusterTest("redis cluster: the same story with the nodes on a Redis Cluster of three primaries and three replicas", { nodes: 3, nginx: true, redisCluster: true, skip, timeout: 120000 }, chatStory);
