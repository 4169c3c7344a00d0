"use strict";
// The server-to-server HTTP API (/api/v1, bearer ELCHAT_API_KEY) on a
// two-node cluster: requests go to node A, the phoenix.js clients sit on B.
const assert = require("node:assert/strict");
const { clusterTest, joinOk, chatTopic, collect, messageLog, presenceOf, waitUntil, assertMessage, WAIT_MS } = require("./lib/env");

clusterTest("api: messages, publish, presence, unread and online across nodes; wrong key is 401", { nodes: 2, presenceTTL: "3s", timeout: 60000 }, async (c) => {
  const [A, B] = c.nodes;
  const room = chatTopic(50, 51);

  // Wrong, missing or malformed key: 401 on every endpoint, nothing happens.
  const endpoints = [
    ["POST", "/api/v1/publish", { topic: "user:51", event: "x", payload: {} }],
    ["POST", "/api/v1/messages", { from: "50", to: "51", body: "sneaky" }],
    ["GET", `/api/v1/presence/${room}`],
    ["GET", "/api/v1/users/51/unread"],
    ["GET", "/api/v1/users/51/online"],
  ];
  for (const [m, p, body] of endpoints) {
    for (const key of ["wrong-key", "", c.apiKey + "x"]) {
      const r = await c.api(A, m, p, body, key);
      assert.equal(r.status, 401, `${m} ${p} with key ${JSON.stringify(key)}: ${r.text}`);
    }
    const noAuth = await fetch(`${A.httpUrl}${p}`, { method: m, body: body ? JSON.stringify(body) : undefined });
    assert.equal(noAuth.status, 401, `${m} ${p} without Authorization`);
  }
  assert.deepEqual((await c.api(A, "GET", "/api/v1/users/51/unread")).json, { total: 0, chats: [] }, "the 401 POST stored nothing");

  // Bob (51) on node B: lobby + chat. Carol (52) on B: lobby only.
  const bob = await c.connect(51, B, { name: "Bob" });
  const bLobby = bob.channel("user:51");
  await joinOk(bLobby);
  const bChat = bob.channel(room, {});
  const bMsgs = messageLog(bChat);
  await joinOk(bChat);
  const carol = await c.connect(52, B, { name: "Carol" });
  const cLobby = carol.channel("user:52");
  await joinOk(cLobby);
  const cNotes = collect(cLobby, "notification");

  // online: through node A for users connected on B.
  assert.deepEqual((await c.api(A, "GET", "/api/v1/users/51/online")).json, { user_id: "51", online: true });
  assert.deepEqual((await c.api(A, "GET", "/api/v1/users/99/online")).json, { user_id: "99", online: false });

  // presence of a chat whose members are on another node.
  const pr = await c.api(A, "GET", `/api/v1/presence/${room}`);
  assert.equal(pr.status, 200);
  assert.deepEqual(Object.keys(pr.json), ["51"]);
  assert.equal(pr.json["51"].metas[0].name, "Bob");
  assert.equal((await c.api(A, "GET", "/api/v1/presence/nonsense")).status, 400);

  // POST /messages on behalf of Alice (50) on node A: stored, acknowledged
  // with the message, delivered live to Bob on node B.
  const post = await c.api(A, "POST", "/api/v1/messages", { from: "50", to: "51", body: "from the backend", client_id: "api-1" });
  assert.equal(post.status, 201, post.text);
  assertMessage(post.json, { room, user_id: "50", opponent_id: "51", body: "from the backend", client_id: "api-1" });
  const live = await bMsgs.waitFor((m) => m.id === post.json.id, "Bob to receive the API message on node B", WAIT_MS);
  assert.equal(live.body, "from the backend");
  // Same client_id again: idempotent, same message, no second row.
  const again = await c.api(A, "POST", "/api/v1/messages", { from: "50", to: "51", body: "from the backend", client_id: "api-1" });
  assert.equal(again.json.id, post.json.id);
  // Stored: a fresh join (any node) has it, once.
  const alice = await c.connect(50, A, { name: "Alice" });
  const aChat = alice.channel(room, {});
  const aPres = presenceOf(aChat);
  const hist = await joinOk(aChat);
  assert.deepEqual(hist.messages.map((m) => m.id), [post.json.id]);
  // Presence through the API now lists both, from either node.
  await aPres.syncs.waitFor((l) => l.length === 2, "alice's presence", WAIT_MS);
  for (const n of [A, B]) assert.deepEqual(Object.keys((await c.api(n, "GET", `/api/v1/presence/${room}`)).json).sort(), ["50", "51"]);

  // Bad requests are 400, not stored.
  for (const body of [{ from: "50", to: "50", body: "self" }, { from: "50", to: "51", body: "  " }, { from: "50", to: "51", body: "x", extra: 1 }]) {
    assert.equal((await c.api(A, "POST", "/api/v1/messages", body)).status, 400, JSON.stringify(body));
  }

  // To Carol, who is online but not in the chat: lobby notification on B.
  const toCarol = await c.api(A, "POST", "/api/v1/messages", { from: "50", to: "52", body: "hey Carol" });
  assert.equal(toCarol.status, 201);
  const note = await cNotes.waitFor((n) => n.message.id === toCarol.json.id, "Carol's notification from an API message", WAIT_MS);
  assert.equal(note.room, chatTopic(50, 52));

  // unread: Dave (53) is offline; three messages, total 3, and his login agrees.
  for (let i = 0; i < 3; i++) assert.equal((await c.api(A, "POST", "/api/v1/messages", { from: "50", to: "53", body: `d${i}` })).status, 201);
  const un = await c.api(B, "GET", "/api/v1/users/53/unread");
  assert.equal(un.json.total, 3);
  assert.equal(un.json.chats.length, 1);
  assert.equal(un.json.chats[0].room, chatTopic(50, 53));
  assert.equal(un.json.chats[0].last_message.body, "d2");
  const dave = await c.connect(53, B);
  const dl = await joinOk(dave.channel("user:53"));
  assert.equal(dl.unread[0].unread, 3);
  assert.equal((await c.api(A, "GET", "/api/v1/users/53/online")).json.online, true, "online right after Dave's lobby join on B");

  // publish: an event to Bob's lobby and to the chat, posted on A, delivered on B.
  const bEv = collect(bLobby, "api_event");
  const chEv = collect(bChat, "api_event");
  const aEv = collect(aChat, "api_event");
  const pub = await c.api(A, "POST", "/api/v1/publish", { topic: "user:51", event: "api_event", payload: { k: [1, 2, 3] } });
  assert.equal(pub.status, 202, pub.text);
  assert.deepEqual(await bEv.waitFor(() => true, "published lobby event on node B", WAIT_MS), { k: [1, 2, 3] });
  await c.api(A, "POST", "/api/v1/publish", { topic: room, event: "api_event", payload: { chat: true } });
  assert.deepEqual(await chEv.waitFor(() => true, "published chat event on node B", WAIT_MS), { chat: true });
  assert.deepEqual(await aEv.waitFor(() => true, "published chat event on node A", WAIT_MS), { chat: true });
  await chEv.none(() => chEv.items.length > 1 || aEv.items.length > 1 || bEv.items.length > 1, "duplicate published events", 300);
  for (const body of [
    { topic: "user:51", event: "phx_reply", payload: {} },
    { topic: "user:51", event: "presence_diff", payload: {} },
    { topic: "bogus", event: "x", payload: {} },
    { topic: "user:51", event: "x", payload: [1] },
  ]) {
    assert.equal((await c.api(A, "POST", "/api/v1/publish", body)).status, 400, JSON.stringify(body));
  }

  // Offline again: online flips to false cluster-wide.
  bob.disconnect();
  await waitUntil(async () => (await c.api(A, "GET", "/api/v1/users/51/online")).json.online === false, "51 offline after disconnect", WAIT_MS, 100);
});
