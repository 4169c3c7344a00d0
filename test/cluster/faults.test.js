"use strict";
// Faults under traffic, with real processes: kill -9 of a node behind nginx,
// a Redis restart, a PostgreSQL stop. Every acknowledged message (ok reply)
// must survive and reach the recipient (live or through last_id catch-up).
const assert = require("node:assert/strict");
const net = require("node:net");
const { clusterTest, joinOk, pushChannel, chatTopic, messageLog, presenceOf, waitUntil, httpStatus, sleep, NGINX, WAIT_MS } = require("./lib/env");

const TTL_MS = 3000;
const external = !!(process.env.ELCHAT_TEST_REDIS_URL || process.env.ELCHAT_TEST_DATABASE_URL);

// steadySender pushes new_message on channel every intervalMs (one at a time,
// like a user) until stop() and records every reply.
function steadySender(channel, label, intervalMs = 100, maxCount = 3000) {
  const s = { acked: new Map(), results: [], stopped: false, sent: 0 };
  s.done = (async () => {
    while (!s.stopped && s.sent < maxCount) {
      const t0 = Date.now();
      const cid = `${label}-${s.sent++}`;
      const r = await pushChannel(channel, "new_message", { body: `${label} #${s.sent}`, client_id: cid }, 10000);
      const rec = { cid, status: r.status, response: r.response, at: t0, took: Date.now() - t0 };
      s.results.push(rec);
      if (r.status === "ok") s.acked.set(r.response.id, r.response);
      const wait = intervalMs - (Date.now() - t0);
      if (wait > 0) await sleep(wait);
    }
  })();
  s.stop = async () => {
    s.stopped = true;
    await s.done;
  };
  s.count = (status, since = 0) => s.results.filter((r) => r.status === status && r.at >= since).length;
  return s;
}

// idsFrom collects message ids of a chat: live new_message events and every
// (re)join reply of the channel.
function trackIds(channel, log) {
  const ids = new Set();
  log.waiters.push(() => {
    for (const m of log.items) ids.add(m.id);
  });
  channel.joinPush.receive("ok", (resp) => {
    for (const m of (resp && resp.messages) || []) ids.add(m.id);
    channel.rejoins = (channel.rejoins || 0) + 1;
  });
  return ids;
}

function missing(expected, got) {
  return [...expected].filter((id) => !got.has(id)).sort((a, b) => a - b);
}

// historyIds reads the whole chat (last_id 0 catch-up) on a fresh socket.
async function historyIds(c, node, user, room) {
  const s = await c.connect(user, node);
  const ch = s.channel(room, { last_id: 0 });
  const r = await joinOk(ch);
  assert.equal(r.has_more, false, "catch-up fits in one reply");
  s.disconnect();
  return new Set(r.messages.map((m) => m.id));
}

clusterTest(
  "faults: kill -9 of a node under traffic: clients come back through nginx, catch up with last_id, ghost presence expires",
  { nodes: 3, nginx: true, presenceTTL: "3s", timeout: 60000, skip: !NGINX && !process.env.CI && "nginx not installed" },
  async (c) => {
    const room = chatTopic(10, 11);
    // The victim connects through nginx; find the node it landed on.
    let maxSeen = 0;
    const victim = await c.connect(11, "nginx", { name: "Victim" });
    const vLobby = victim.channel("user:11");
    await joinOk(vLobby);
    const vChat = victim.channel(room, () => ({ last_id: maxSeen }));
    const vLog = messageLog(vChat);
    vChat.on("new_message", (m) => (maxSeen = Math.max(maxSeen, m.id)));
    vChat.joinPush.receive("ok", (r) => {
      for (const m of (r && r.messages) || []) maxSeen = Math.max(maxSeen, m.id);
    });
    await joinOk(vChat);
    const vIds = trackIds(vChat, vLog);
    const counts = await waitUntil(async () => {
      const n = await c.clientsOn();
      return n.filter((x) => x === 1).length === 1 ? n : null;
    }, "the victim's node to show one client");
    const vi = counts.indexOf(1);
    const victimNode = c.nodes[vi];
    const senderNode = c.nodes[(vi + 1) % 3];

    const sender = await c.connect(10, senderNode, { name: "Sender" });
    const sChat = sender.channel(room, {});
    const sPres = presenceOf(sChat);
    await joinOk(sChat);
    const synced = await sPres.syncs.waitFor((l) => l.length === 2, "sender's Presence to list sender and victim", WAIT_MS);
    const ghostRefs = synced.find((e) => e.id === "11").refs;
    assert.equal(ghostRefs.length, 1);

    const s = steadySender(sChat, "k9", 100);
    await waitUntil(() => s.acked.size >= 10, "10 acked messages before the kill");
    const killAt = Date.now();
    await victimNode.stop("SIGKILL");

    // The victim's socket drops, phoenix.js reconnects through nginx to a
    // surviving node and rejoins the chat with last_id.
    await victim.closes.waitFor((e) => e.at >= killAt, "victim socket to close", WAIT_MS);
    await waitUntil(() => vChat.rejoins >= 2 && vChat.state === "joined", "victim to rejoin the chat on another node", 15000);
    const rejoinedAt = Date.now();
    const after = await c.clientsOn();
    assert.equal(after[vi], null, "killed node is down");

    // Ghost presence: the killed node's meta leaves the sender's Presence
    // within the TTL (+1s heartbeat, +2s margin); the victim's new meta stays.
    const leave = await sPres.leaves.waitFor((l) => l.id === "11" && l.refs.includes(ghostRefs[0]), "onLeave of the dead node's meta", TTL_MS + 1000 + 2000 + 3000);
    const ghostMs = leave.at - killAt;
    assert.ok(ghostMs <= TTL_MS + 1000 + 2000, `ghost presence lived ${ghostMs}ms > TTL ${TTL_MS}ms + 3s`);
    const cur = await sPres.syncs.waitFor((l) => {
      const v = l.find((e) => e.id === "11");
      return v && !v.refs.includes(ghostRefs[0]) && v.refs.length >= 1;
    }, "presence to list the victim's new meta only", WAIT_MS);
    assert.ok(cur);

    // Keep traffic going after the rejoin, then stop.
    const n0 = s.acked.size;
    await waitUntil(() => s.acked.size >= n0 + 10, "10 more acked messages after the rejoin", 10000);
    await s.stop();
    assert.equal(s.count("timeout"), 0, `no push timed out: ${JSON.stringify(s.results.filter((r) => r.status !== "ok"))}`);
    const acked = new Set(s.acked.keys());
    await waitUntil(() => missing(acked, vIds).length === 0, `victim to have every acked message (missing ${missing(acked, vIds).slice(0, 20)})`, 10000);

    const hist = await historyIds(c, c.nodes[(vi + 2) % 3], 10, room);
    assert.deepEqual(missing(acked, hist), [], "every acked message is in history");
    assert.deepEqual(missing(hist, vIds), [], "victim saw every stored message (no gaps)");
    process.stdout.write(`# kill -9: ${acked.size} acked, ghost presence gone after ${ghostMs}ms (TTL ${TTL_MS}ms), rejoin ${rejoinedAt - killAt}ms after kill\n`);
  }
);

clusterTest(
  "faults: Redis restart under traffic: /readyz 503 then 200, cross-node delivery resumes, last_id catch-up has every acked message",
  { nodes: 2, presenceTTL: "3s", timeout: 60000, skip: external && "uses its own Redis" },
  async (c) => {
    const [A, B] = c.nodes;
    const room = chatTopic(20, 21);
    const sender = await c.connect(20, A);
    const recv = await c.connect(21, B);
    const sChat = sender.channel(room, {});
    await joinOk(sChat);
    // Join params as an app writes them: a rejoin asks for what came after
    // the newest message the client has.
    let rIds = new Set();
    const rChat = recv.channel(room, () => (rIds.size ? { last_id: Math.max(...rIds) } : {}));
    const rLog = messageLog(rChat);
    await joinOk(rChat);
    rIds = trackIds(rChat, rLog);
    for (const n of [A, B]) assert.equal(await httpStatus(`${n.httpUrl}/readyz`), 200);

    const s = steadySender(sChat, "rr", 100);
    await waitUntil(() => rLog.items.length >= 5, "5 messages across nodes before the outage");
    const stopAt = Date.now();
    await c.redis.stop("SIGKILL");
    for (const n of [A, B]) await waitUntil(async () => (await httpStatus(`${n.httpUrl}/readyz`)) === 503, `node ${n.index} /readyz 503 while Redis is down`, 5000, 100);
    await sleep(Math.max(0, 2000 - (Date.now() - stopAt)));
    for (const n of [A, B]) assert.equal(await httpStatus(`${n.httpUrl}/readyz`), 503, `node ${n.index} still not ready during the outage`);
    const outageAcked = s.count("ok", stopAt);
    assert.ok(outageAcked >= 5, `PostgreSQL is up, so sends keep being acked during the Redis outage (${outageAcked})`);

    await c.redis.restart();
    const upAt = Date.now();
    for (const n of [A, B]) await waitUntil(async () => (await httpStatus(`${n.httpUrl}/readyz`)) === 200, `node ${n.index} /readyz 200 after Redis is back`, 15000, 100);
    const readyMs = Date.now() - upAt;
    // Delivery resumes by itself: a message acked after recovery arrives live on B.
    const maxAckedAtUp = Math.max(...s.acked.keys());
    const resumed = await rLog.waitFor((m) => m.id > maxAckedAtUp, "live cross-node delivery to resume after the Redis restart", 15000);
    const resumeMs = resumed._at ? Date.now() - upAt : null;
    // Presence is re-asserted in the new (empty) Redis.
    await waitUntil(async () => {
      const out = await c.redis.rawCmd(["HLEN", `${c.prefix}presence:${room}`]);
      return Number(out.trim()) === 2;
    }, "both chat presences re-asserted in the restarted Redis", 10000, 100);

    const n0 = s.acked.size;
    await waitUntil(() => s.acked.size >= n0 + 5, "5 more acked messages", 10000);
    await s.stop();
    assert.equal(s.count("timeout") + s.count("error"), 0, `no push failed: ${JSON.stringify(s.results.filter((r) => r.status !== "ok"))}`);
    const acked = new Set(s.acked.keys());
    // The node asks its clients to rejoin once Redis is back (phx_error
    // "resync"), and the rejoin's last_id fetches what the outage dropped:
    // the open channel heals without the app doing anything.
    await waitUntil(() => missing(acked, rIds).length === 0, `recipient to have every acked message after the resync rejoin (missing ${missing(acked, rIds).slice(0, 20)}, rejoins ${rChat.rejoins})`, 15000);
    assert.ok(rChat.rejoins >= 2, `the open channel rejoined after the outage (joins: ${rChat.rejoins})`);
    const lostLive = missing(acked, new Set(rLog.items.map((m) => m.id))).length;
    process.stdout.write(`# redis restart: ${acked.size} acked, ${lostLive} missed live (recovered by the resync rejoin), ready ${readyMs}ms after restart, live delivery back after ~${resumeMs}ms\n`);
  }
);

// cuttableProxy forwards TCP to target until cut(): then it drops every
// connection and refuses new ones until restore(). It stands for a network
// fault between one node and Redis while the other nodes keep theirs.
async function cuttableProxy(targetUrl) {
  const target = new URL(targetUrl);
  const socks = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) return client.destroy();
    const up = net.connect(Number(target.port), target.hostname);
    for (const s of [client, up]) {
      socks.add(s);
      s.on("close", () => socks.delete(s));
      s.on("error", () => {});
    }
    client.pipe(up);
    up.pipe(client);
    client.on("close", () => up.destroy());
    up.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `redis://127.0.0.1:${server.address().port}${target.pathname}`,
    cut() {
      cut = true;
      for (const s of socks) s.destroy();
    },
    restore() {
      cut = false;
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

clusterTest(
  "faults: one node loses Redis while the others keep it: once it is back, the other nodes' clients catch up on what it published meanwhile",
  {
    nodes: 2,
    presenceTTL: "30s",
    timeout: 60000,
    skip: external && "uses its own Redis",
    nodeEnv: async (i, c) => {
      if (i !== 0) return {};
      c.proxy = await cuttableProxy(c.redis.url);
      return { ELCHAT_REDIS_URL: c.proxy.url };
    },
  },
  async (c) => {
    const [A, B] = c.nodes; // A reaches Redis through the proxy
    try {
      const room = chatTopic(30, 31);
      const sender = await c.connect(30, A);
      const recv = await c.connect(31, B);
      const sChat = sender.channel(room, {});
      await joinOk(sChat);
      let rIds = new Set();
      const rChat = recv.channel(room, () => (rIds.size ? { last_id: Math.max(...rIds) } : {}));
      const rLog = messageLog(rChat);
      await joinOk(rChat);
      rIds = trackIds(rChat, rLog);

      const s = steadySender(sChat, "pp", 100);
      await waitUntil(() => rLog.items.length >= 5, "5 messages across nodes before the cut");
      const cutAt = Date.now();
      c.proxy.cut();
      await waitUntil(async () => (await httpStatus(`${A.httpUrl}/readyz`)) === 503, "node A not ready while its Redis link is cut", 10000, 100);
      assert.equal(await httpStatus(`${B.httpUrl}/readyz`), 200, "node B keeps its Redis");
      await waitUntil(() => s.count("ok", cutAt) >= 10, "A keeps acknowledging (PostgreSQL is up) while its frames are lost", 10000);
      c.proxy.restore();
      await waitUntil(async () => (await httpStatus(`${A.httpUrl}/readyz`)) === 200, "node A ready again", 15000, 100);
      const n0 = s.acked.size;
      await waitUntil(() => s.acked.size >= n0 + 5, "5 more acked messages after the link is back", 10000);
      await s.stop();
      const acked = new Set(s.acked.keys());
      const lostLive = missing(acked, new Set(rLog.items.map((m) => m.id))).length;
      assert.ok(lostLive > 0, "the cut made B's client miss some of A's messages live (else this test proves nothing)");
      await waitUntil(
        () => missing(acked, rIds).length === 0,
        `B's client to have every acked message after A's resync announcement (missing ${missing(acked, rIds).slice(0, 20)}, joins ${rChat.rejoins})`,
        20000
      );
      assert.ok(rChat.rejoins >= 2, `B's open channel rejoined (joins: ${rChat.rejoins})`);
      process.stdout.write(`# partial outage: ${acked.size} acked, ${lostLive} missed live on B, all recovered by the announced resync\n`);
    } finally {
      c.proxy.close();
    }
  }
);

clusterTest(
  "faults: PostgreSQL stop under traffic: error replies (no timeouts), nothing acked lost, service resumes",
  { nodes: 2, presenceTTL: "3s", timeout: 90000, skip: external && "uses its own PostgreSQL" },
  async (c) => {
    const [A, B] = c.nodes;
    const room = chatTopic(30, 31);
    const sender = await c.connect(30, A);
    const recv = await c.connect(31, B);
    const sChat = sender.channel(room, {});
    await joinOk(sChat);
    const rChat = recv.channel(room, {});
    const rLog = messageLog(rChat);
    await joinOk(rChat);

    const s = steadySender(sChat, "pg", 100);
    await waitUntil(() => s.acked.size >= 5, "5 acked messages before the outage");
    const stopAt = Date.now();
    await c.pg.stop("SIGINT");
    const stoppedAt = Date.now();
    await waitUntil(() => s.count("error", stoppedAt) >= 3, "3 error replies while PostgreSQL is down", 20000, 100);
    assert.equal(await httpStatus(`${A.httpUrl}/readyz`), 503, "/readyz is 503 while the store is down");
    const errs = s.results.filter((r) => r.status === "error");
    for (const e of errs) assert.equal(e.response.reason, "store unavailable", JSON.stringify(e));
    const slowest = Math.max(...errs.map((e) => e.took));

    await c.pg.restart();
    const upAt = Date.now();
    await waitUntil(() => s.results.some((r) => r.status === "ok" && r.at >= upAt), "a message sent after PostgreSQL is back to be acked", 20000, 100);
    const resumeMs = s.results.find((r) => r.status === "ok" && r.at >= upAt).at + s.results.find((r) => r.status === "ok" && r.at >= upAt).took - upAt;
    const n0 = s.acked.size;
    await waitUntil(() => s.acked.size >= n0 + 5, "5 more acked messages", 10000);
    await s.stop();
    assert.equal(s.count("timeout"), 0, `no push timed out: ${JSON.stringify(s.results.filter((r) => r.status === "timeout"))}`);
    assert.equal(await httpStatus(`${A.httpUrl}/readyz`), 200);

    const acked = new Set(s.acked.keys());
    await waitUntil(() => missing(acked, new Set(rLog.items.map((m) => m.id))).length === 0, "recipient to get every acked message live", 5000);
    const hist = await historyIds(c, B, 31, room);
    assert.deepEqual(missing(acked, hist), [], "every acked message is in history");
    // A failed send is not half-stored: history holds exactly the acked ones
    // (each client_id was sent once).
    assert.deepEqual(missing(hist, acked), [], "no message stored without an ack");
    process.stdout.write(
      `# postgres stop: ${acked.size} acked, ${errs.length} error replies (slowest ${slowest}ms, ${stoppedAt - stopAt}ms to stop), first ack ${resumeMs}ms after restart\n`
    );
  }
);

clusterTest(
  "faults: Sentinel failover under traffic: the primary is killed, the nodes follow the promoted replica, every acked message is stored once and delivered, presence is right",
  { nodes: 2, presenceTTL: "3s", sentinel: true, timeout: 90000, skip: external && "uses its own Redis" },
  async (c) => {
    const [A, B] = c.nodes;
    const room = chatTopic(30, 31);
    const sender = await c.connect(30, A);
    const recv = await c.connect(31, B);
    const sChat = sender.channel(room, {});
    await joinOk(sChat);
    let rIds = new Set();
    const rChat = recv.channel(room, () => (rIds.size ? { last_id: Math.max(...rIds) } : {}));
    const rLog = messageLog(rChat);
    const rPres = presenceOf(rChat);
    await joinOk(rChat);
    rIds = trackIds(rChat, rLog);
    for (const n of [A, B]) assert.equal(await httpStatus(`${n.httpUrl}/readyz`), 200);

    const s = steadySender(sChat, "sn", 50);
    await waitUntil(() => rLog.items.length >= 10, "10 messages across nodes before the failover");
    const killAt = Date.now();
    const oldPort = c.redis.primary.port;
    await c.redis.primary.stop("SIGKILL");
    await waitUntil(async () => (await c.redis.masterPort()) === c.redis.replica.port, "the Sentinels to promote the replica", 30000, 100);
    const promotedMs = Date.now() - killAt;
    for (const n of [A, B]) await waitUntil(async () => (await httpStatus(`${n.httpUrl}/readyz`)) === 200, `node ${n.index} ready on the new primary`, 30000, 100);
    const readyMs = Date.now() - killAt;
    const maxAcked = Math.max(...s.acked.keys());
    await rLog.waitFor((m) => m.id > maxAcked, "live cross-node delivery from the new primary", 15000);
    const n0 = s.acked.size;
    await waitUntil(() => s.acked.size >= n0 + 20, "20 more acked messages", 15000);
    await s.stop();
    assert.equal(s.count("timeout") + s.count("error"), 0, `no push failed: ${JSON.stringify(s.results.filter((r) => r.status !== "ok"))}`);
    const acked = new Set(s.acked.keys());
    await waitUntil(() => missing(acked, rIds).length === 0, `recipient to have every acked message (missing ${missing(acked, rIds).slice(0, 20)}, joins ${rChat.rejoins})`, 20000);
    // Stored once: the history has each acknowledged message exactly once.
    const hist = await historyIds(c, A, 30, room);
    assert.deepEqual(missing(acked, hist), [], "every acked message in the history");
    assert.equal(hist.size, acked.size, "nothing stored twice or unacknowledged");
    // Presence on the new primary: each side sees both users once.
    await rPres.syncs.waitFor((l) => l.map((e) => e.id).sort().join(",") === "30,31", "the receiver's presence to list both users after the failover", 15000);
    const lostLive = missing(acked, new Set(rLog.items.map((m) => m.id))).length;
    process.stdout.write(`# sentinel failover: primary ${oldPort} killed; replica promoted after ${promotedMs}ms, nodes ready after ${readyMs}ms; ${acked.size} acked, ${lostLive} missed live (recovered by the resync rejoin), joins ${rChat.rejoins}\n`);
  }
);

clusterTest(
  "faults: Redis Cluster primary killed under traffic: its replica takes over, the nodes follow, every acked message is stored once and delivered, presence is right",
  // One sender socket pushes in six chats at 10 msg/s each: above the
  // default per-connection push rate.
  { nodes: 2, presenceTTL: "3s", redisCluster: true, timeout: 120000, env: { ELCHAT_PUSH_RATE: "1000", ELCHAT_PUSH_BURST: "1000" }, skip: external && "uses its own Redis" },
  async (c) => {
    const [A, B] = c.nodes;
    const sender = await c.connect(40, A);
    const recv = await c.connect(41, B);
    // Several chats, so that some live on the primary that dies.
    const chats = [];
    for (let k = 0; k < 6; k++) {
      const room = chatTopic(40, 41 + 2 * k);
      const other = k === 0 ? recv : await c.connect(41 + 2 * k, B);
      const sChat = sender.channel(room, {});
      await joinOk(sChat);
      if (process.env.ELCHAT_DEBUG_JOINS) {
        sChat.joinPush.receive("error", (r) => process.stdout.write(`# ${room} sender join error ${JSON.stringify(r)} at ${Date.now()}\n`));
        sChat.joinPush.receive("timeout", () => process.stdout.write(`# ${room} sender join timeout at ${Date.now()}\n`));
        sChat.joinPush.receive("ok", () => process.stdout.write(`# ${room} sender join ok at ${Date.now()}\n`));
      }
      let rIds = new Set();
      const rChat = other.channel(room, () => (rIds.size ? { last_id: Math.max(...rIds) } : {}));
      const rLog = messageLog(rChat);
      await joinOk(rChat);
      rIds = trackIds(rChat, rLog);
      chats.push({ room, sChat, rChat, rLog, get rIds() { return rIds; }, s: steadySender(sChat, `cl${k}`, 100) });
    }
    await waitUntil(() => chats.every((ch) => ch.rLog.items.length >= 3), "messages across nodes in every chat before the kill");
    const killAt = Date.now();
    const victim = (await c.redis.primaries())[0];
    await victim.stop("SIGKILL");
    await waitUntil(async () => (await c.redis.primaries()).length === 3, "a replica to take over", 30000, 200);
    const promotedMs = Date.now() - killAt;
    for (const n of [A, B]) await waitUntil(async () => (await httpStatus(`${n.httpUrl}/readyz`)) === 200, `node ${n.index} ready after the failover`, 30000, 100);
    const readyMs = Date.now() - killAt;
    const n0 = chats.map((ch) => ch.s.acked.size);
    await waitUntil(() => chats.every((ch, i) => ch.s.acked.size >= n0[i] + 20), "20 more acked messages in every chat", 20000);
    let acked = 0;
    let lostLive = 0;
    for (const ch of chats) {
      await ch.s.stop();
      assert.equal(ch.s.count("timeout") + ch.s.count("error"), 0, `no push failed in ${ch.room}: ${JSON.stringify(ch.s.results.filter((r) => r.status !== "ok").slice(0, 3))}`);
      const want = new Set(ch.s.acked.keys());
      acked += want.size;
      await waitUntil(() => missing(want, ch.rIds).length === 0, `${ch.room}: every acked message delivered (missing ${missing(want, ch.rIds).slice(0, 10)})`, 20000);
      const hist = await historyIds(c, A, 40, ch.room);
      assert.deepEqual(missing(want, hist), [], `${ch.room}: every acked message in the history`);
      assert.equal(hist.size, want.size, `${ch.room}: nothing stored twice`);
      lostLive += missing(want, new Set(ch.rLog.items.map((m) => m.id))).length;
    }
    const rPres = presenceOf(chats[0].rChat);
    await rPres.syncs.waitFor((l) => l.map((e) => e.id).sort().join(",") === "40,41", "presence to list both users after the failover", 15000).catch(async () => {
      // presenceOf attaches late: a fresh join shows the state.
      const s2 = await c.connect(41, B);
      const ch2 = s2.channel(chats[0].room, {});
      const p2 = presenceOf(ch2);
      await joinOk(ch2);
      await p2.syncs.waitFor((l) => l.map((e) => e.id).sort().join(",") === "40,41", "a fresh join's presence to list both users", 15000);
      s2.disconnect();
    });
    process.stdout.write(`# redis cluster failover: primary ${victim.port} killed; replica promoted after ${promotedMs}ms, nodes ready after ${readyMs}ms; ${acked} acked over ${chats.length} chats, ${lostLive} missed live (recovered by the resync rejoin)\n`);
  }
);
