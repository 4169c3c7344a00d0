"use strict";
// phoenix.js's LongPoll across two real nodes (one Redis, one PostgreSQL)
// behind nginx with deploy/nginx/elchat.conf, whose long-poll upstream is
// plain round-robin: no stickiness. Polls and posts land on either node;
// the one that does not own the session forwards them to the owner. When
// the owner dies, the client gets 410, opens a new session on the node
// that is left and catches up with last_id.
const assert = require("node:assert/strict");
const { clusterTest, joinOk, pushOk, chatTopic, messageLog, waitUntil, httpGet, LongPoll, NGINX } = require("./lib/env");
const { story } = require("../interop/story");

const skip = !NGINX && !process.env.CI && "nginx not installed";
const lp = { transport: LongPoll, longpollerTimeout: 20000 };

async function metric(node, name) {
  const r = await httpGet(`${node.httpUrl}/metrics`, { timeout: 2000 });
  const m = new RegExp(`^${name}\\s+([0-9.e+]+)`, "m").exec(r.body);
  return m ? Number(m[1]) : 0;
}

clusterTest("longpoll cluster: the seed's story over LongPoll through nginx round-robin across two nodes", { nodes: 2, nginx: true, skip }, async (c) => {
  await story((user, opts) => c.connect(user, "nginx", { ...opts, socketOpts: lp }));
  const forwarded = (await metric(c.nodes[0], "elchat_longpoll_forwarded_total")) + (await metric(c.nodes[1], "elchat_longpoll_forwarded_total"));
  assert.ok(forwarded > 0, "some polls or posts landed on the node that does not own their session and were forwarded");
});

clusterTest("longpoll cluster: a burst of pushes through round-robin keeps its order, both ways", { nodes: 2, nginx: true, skip }, async (c) => {
  const room = chatTopic(1, 2);
  const alice = await c.connect(1, "nginx", { name: "Alice", socketOpts: lp });
  const bob = await c.connect(2, "nginx", { name: "Bob", socketOpts: lp });
  const aChat = alice.channel(room);
  const bChat = bob.channel(room);
  const aMsgs = messageLog(aChat);
  const bMsgs = messageLog(bChat);
  await joinOk(aChat);
  await joinOk(bChat);
  // 30 pushes in one tick: phoenix.js batches them into POSTs that nginx
  // spreads over both nodes; the owner feeds them to the hub in order.
  const acks = await Promise.all(Array.from({ length: 30 }, (_, i) => pushOk(aChat, "new_message", { body: `burst ${i}`, client_id: `burst-${i}` })));
  const ids = acks.map((m) => m.id);
  assert.deepEqual(ids, [...ids].sort((x, y) => x - y), "stored in push order");
  await waitUntil(() => bMsgs.byId.size >= 30, "bob gets the whole burst", 10000);
  assert.deepEqual(bMsgs.items.map((m) => m.body), acks.map((m) => m.body), "bob receives the burst in push order");
  // And the sender's own copies arrive in the same order.
  await waitUntil(() => aMsgs.byId.size >= 30, "alice gets her own broadcasts", 10000);
  assert.deepEqual(aMsgs.items.map((m) => m.id), ids);
});

clusterTest("longpoll cluster: the owner of a session dies; the client reopens on the other node and catches up with last_id", { nodes: 2, nginx: true, skip, timeout: 90000, env: { ELCHAT_LONGPOLL_WINDOW: "2s", ELCHAT_LONGPOLL_TIMEOUT: "5s" } }, async (c) => {
  const room = chatTopic(1, 2);
  const alice = await c.connect(1, "nginx", { name: "Alice", socketOpts: lp });
  assert.ok(alice.conn instanceof LongPoll);
  // Which node owns alice's session?
  let owner = -1;
  await waitUntil(async () => {
    const n = await Promise.all(c.nodes.map((x) => metric(x, "elchat_longpoll_sessions")));
    owner = n.findIndex((v) => v > 0);
    return owner >= 0;
  }, "a node to own alice's session");
  const other = c.nodes[1 - owner];
  // Bob on WebSocket, on the node that survives.
  const bob = await c.connect(2, other, { name: "Bob" });
  let maxSeen = 0;
  const aChat = alice.channel(room, () => ({ last_id: maxSeen }));
  const aMsgs = messageLog(aChat);
  // Ids alice has: live messages and every (re)join reply's catch-up.
  const seen = new Set();
  const seenAll = (ids) => ids.every((id) => seen.has(id));
  aChat.on("new_message", (m) => {
    seen.add(m.id);
    maxSeen = Math.max(maxSeen, m.id);
  });
  aChat.joinPush.receive("ok", (r) => {
    for (const m of (r && r.messages) || []) {
      seen.add(m.id);
      maxSeen = Math.max(maxSeen, m.id);
    }
  });
  await joinOk(aChat);
  const bChat = bob.channel(room);
  await joinOk(bChat);
  const m1 = await pushOk(bChat, "new_message", { body: "before", client_id: "lp-kill-1" });
  await aMsgs.waitFor((m) => m.id === m1.id, "alice gets bob's first message");

  await c.nodes[owner].stop("SIGKILL");
  const sent = [];
  for (let i = 0; i < 5; i++) sent.push(await pushOk(bChat, "new_message", { body: `while away ${i}`, client_id: `lp-kill-${i + 2}` }));
  // Alice's transport sees the session gone, reconnects through nginx to
  // the node left, rejoins with last_id and gets what she missed.
  await alice.closes.waitFor(() => true, "alice's long-poll transport to close", 15000);
  await waitUntil(() => seenAll(sent.map((m) => m.id)), "alice to recover every message sent while her session's node was down", 20000);
  assert.equal(aChat.state, "joined");
  // The new session outlives full poll windows (2s here) on its node.
  await new Promise((r) => setTimeout(r, 4500));
  const m3 = await pushOk(bChat, "new_message", { body: "later", client_id: "lp-kill-later" });
  await waitUntil(() => seen.has(m3.id), "alice gets a message after a full poll window", 5000);
  const m2 = await pushOk(aChat, "new_message", { body: "back", client_id: "lp-kill-back" });
  assert.equal(m2.user_id, "1");
  assert.ok((await metric(other, "elchat_longpoll_sessions")) >= 1, "the new session lives on the node left");
});
