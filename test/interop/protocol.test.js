"use strict";
// Socket-level Phoenix protocol rules: unmatched topics, stale join_refs,
// duplicate joins, leaves and presence.
const assert = require("node:assert/strict");
const { serverTest, joinOk, pushOk, collect, leaveChannel, sleep, QUIET_MS, Presence, Collector, withTimeout, WAIT_MS } = require("./helpers");

const ROOM = "chat:1:2";

function rawSend(socket, frame) {
  socket.conn.send(JSON.stringify(frame));
}

serverTest("a push to a topic that is not joined replies unmatched topic with a null join_ref", async (ctx) => {
  const s = await ctx.connect(1);
  rawSend(s, [null, "u1", ROOM, "new_message", { body: "x", client_id: "x" }]);
  const reply = await s.messages.waitFor((m) => m.ref === "u1", "reply to push on unjoined topic");
  assert.deepEqual(
    [reply.join_ref, reply.ref, reply.topic, reply.event, reply.payload],
    [null, "u1", ROOM, "phx_reply", { status: "error", response: { reason: "unmatched topic" } }]
  );
});

serverTest("a push with a join_ref on a topic that is not joined replies unmatched topic", async (ctx) => {
  const s = await ctx.connect(1);
  rawSend(s, ["77", "u2", ROOM, "typing", {}]);
  const reply = await s.messages.waitFor((m) => m.ref === "u2", "reply");
  assert.equal(reply.join_ref, null);
  assert.deepEqual(reply.payload, { status: "error", response: { reason: "unmatched topic" } });
});

serverTest("a message with a stale join_ref is silently ignored", async (ctx) => {
  const s = await ctx.connect(1);
  const ch = s.channel(ROOM);
  await joinOk(ch);
  const jr = ch.joinRef();
  const stale = String(Number(jr) + 1000);
  rawSend(s, [stale, "st1", ROOM, "new_message", { body: "stale body", client_id: "stale" }]);
  rawSend(s, [null, "hb-after-stale", "phoenix", "heartbeat", {}]);
  await s.messages.waitFor((m) => m.ref === "hb-after-stale", "heartbeat reply after the stale message");
  await sleep(QUIET_MS);
  const replies = s.messages.filter((m) => m.ref === "st1");
  assert.deepEqual(replies, [], "no reply to a stale join_ref");
  // And it had no effect: history has no such message.
  const other = await ctx.connect(2);
  const hist = await joinOk(other.channel(ROOM));
  assert.equal(hist.messages.filter((m) => m.client_id === "stale").length, 0, `stale push was stored: ${JSON.stringify(hist)}`);
  // The current join_ref still works.
  rawSend(s, [jr, "cur1", ROOM, "new_message", { body: "current", client_id: "cur" }]);
  const ok = await s.messages.waitFor((m) => m.ref === "cur1", "reply with current join_ref");
  assert.equal(ok.payload.status, "ok", JSON.stringify(ok));
  assert.equal(ok.join_ref, jr);
});

serverTest("a message with a null join_ref on a joined topic is accepted", async (ctx) => {
  const s = await ctx.connect(1);
  const ch = s.channel(ROOM);
  await joinOk(ch);
  rawSend(s, [null, "nj1", ROOM, "new_message", { body: "null jr", client_id: "nulljr" }]);
  const r = await s.messages.waitFor((m) => m.ref === "nj1", "reply");
  assert.equal(r.payload.status, "ok", JSON.stringify(r));
});

serverTest("a duplicate join replies ok to the new join and then closes the old join_ref", async (ctx) => {
  const s = await ctx.connect(1);
  const ch = s.channel(ROOM);
  await joinOk(ch);
  const oldJr = ch.joinRef();
  const newJr = "dup-9001";
  const start = s.messages.items.length;
  rawSend(s, [newJr, newJr, ROOM, "phx_join", {}]);
  const close = await s.messages.waitFor((m) => m.event === "phx_close" && m.topic === ROOM, "phx_close for the old join");
  const reply = await s.messages.waitFor((m) => m.ref === newJr && m.event === "phx_reply", "reply to the duplicate join");
  assert.deepEqual([reply.join_ref, reply.payload.status], [newJr, "ok"]);
  assert.deepEqual([close.join_ref, close.ref, close.payload], [oldJr, oldJr, {}]);
  const seq = s.messages.items.slice(start).filter((m) => m.topic === ROOM && (m.event === "phx_reply" || m.event === "phx_close"));
  assert.ok(seq.indexOf(reply) < seq.indexOf(close), `the new join's reply must come before phx_close: ${JSON.stringify(seq)}`);
  // The new join_ref is now current, the old one is stale.
  rawSend(s, [newJr, "p-new", ROOM, "typing", {}]);
  const r = await s.messages.waitFor((m) => m.ref === "p-new", "reply for the new join_ref");
  assert.equal(r.payload.status, "ok");
  rawSend(s, [oldJr, "p-old", ROOM, "typing", {}]);
  rawSend(s, [null, "hb-dup", "phoenix", "heartbeat", {}]);
  await s.messages.waitFor((m) => m.ref === "hb-dup", "heartbeat reply");
  await sleep(QUIET_MS);
  assert.deepEqual(s.messages.filter((m) => m.ref === "p-old"), [], "old join_ref must be ignored after a duplicate join");
});

serverTest("a duplicate join does not leave a second presence behind", async (ctx) => {
  const s = await ctx.connect(1, { name: "Alice" });
  const ch = s.channel(ROOM);
  await joinOk(ch);
  rawSend(s, ["dup-1", "dup-1", ROOM, "phx_join", {}]);
  await s.messages.waitFor((m) => m.ref === "dup-1", "dup join reply");
  const b = await ctx.connect(2, { name: "Bob" });
  const cb = b.channel(ROOM);
  const presence = new Presence(cb);
  const synced = new Collector("bob presence sync");
  presence.onSync(() => synced.push(presence.list((id, p) => ({ id, metas: p.metas.length }))));
  await joinOk(cb);
  await synced.waitFor((l) => l.some((x) => x.id === "1"), "alice in presence");
  await sleep(QUIET_MS);
  const alice = presence.list((id, p) => ({ id, p })).find((x) => x.id === "1");
  assert.equal(alice.p.metas.length, 1, `one connection must give one meta: ${JSON.stringify(alice.p.metas)}`);
});

serverTest("leaving a topic that was never joined replies ok", async (ctx) => {
  const s = await ctx.connect(1);
  rawSend(s, [null, "lv1", "chat:5:6", "phx_leave", {}]);
  const r = await s.messages.waitFor((m) => m.ref === "lv1", "leave reply");
  assert.equal(r.event, "phx_reply");
  assert.equal(r.payload.status, "ok", JSON.stringify(r));
});

serverTest("leaving a joined chat replies ok and stops its broadcasts", async (ctx) => {
  const a = await ctx.connect(1);
  const ca = a.channel(ROOM);
  await joinOk(ca);
  assert.equal(await leaveChannel(ca), "ok");
  const b = await ctx.connect(2);
  const cb = b.channel(ROOM);
  await joinOk(cb);
  const m = await pushOk(cb, "new_message", { body: "after leave", client_id: "al" });
  await sleep(QUIET_MS);
  const leaked = a.messages.filter((x) => x.topic === ROOM && x.event === "new_message");
  assert.deepEqual(leaked, [], `left connection still receives broadcasts (message ${m.id})`);
});

serverTest("presence_state is pushed after the join reply with the joiner's meta", async (ctx) => {
  const s = await ctx.connect(1, { name: "Alice" });
  const ch = s.channel(ROOM);
  await joinOk(ch);
  const jr = ch.joinRef();
  const state = await s.messages.waitFor((m) => m.topic === ROOM && m.event === "presence_state", "presence_state");
  const reply = s.messages.items.find((m) => m.topic === ROOM && m.event === "phx_reply" && m.ref === jr);
  assert.ok(s.messages.items.indexOf(reply) < s.messages.items.indexOf(state), "join reply must precede presence_state");
  assert.equal(state.join_ref, jr, "presence_state is a push carrying the join_ref");
  assert.equal(state.ref, null);
  assert.deepEqual(Object.keys(state.payload), ["1"]);
  const metas = state.payload["1"].metas;
  assert.equal(metas.length, 1);
  assert.equal(typeof metas[0].phx_ref, "string");
  assert.ok(metas[0].phx_ref.length > 0);
  assert.equal(metas[0].name, "Alice");
  assert.ok(metas[0].online_at !== undefined && metas[0].online_at !== null, JSON.stringify(metas[0]));
});

serverTest("Presence tracks joins and leaves of the other user (onJoin/onLeave/onSync)", async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" });
  const ca = a.channel(ROOM);
  const presence = new Presence(ca);
  const joins = new Collector("alice onJoin");
  const leaves = new Collector("alice onLeave");
  const syncs = new Collector("alice onSync");
  presence.onJoin((id, cur, np) => joins.push({ id, cur: cur ? cur.metas.length : 0, metas: np.metas }));
  presence.onLeave((id, cur, lp) => leaves.push({ id, remaining: cur.metas.length, metas: lp.metas }));
  presence.onSync(() => syncs.push(presence.list((id, p) => ({ id, n: p.metas.length })).sort((x, y) => (x.id < y.id ? -1 : 1))));
  await joinOk(ca);
  await syncs.waitFor((l) => l.length === 1 && l[0].id === "1", "sync with only alice");

  // Bob joins with two tabs.
  const b1 = await ctx.connect(2, { name: "Bob" });
  const cb1 = b1.channel(ROOM);
  await joinOk(cb1);
  await joins.waitFor((j) => j.id === "2", "onJoin for bob");
  const b2 = await ctx.connect(2, { name: "Bob" });
  const cb2 = b2.channel(ROOM);
  await joinOk(cb2);
  await syncs.waitFor((l) => JSON.stringify(l) === JSON.stringify([{ id: "1", n: 1 }, { id: "2", n: 2 }]), "bob with two metas");
  const bobMetas = presence.list((id, p) => ({ id, p })).find((x) => x.id === "2").p.metas;
  assert.notEqual(bobMetas[0].phx_ref, bobMetas[1].phx_ref, "each connection has its own phx_ref");
  assert.equal(bobMetas[0].name, "Bob");

  // One tab leaves: bob still present with one meta.
  assert.equal(await leaveChannel(cb2), "ok");
  const l1 = await leaves.waitFor((l) => l.id === "2", "onLeave of bob's second tab");
  assert.equal(l1.remaining, 1);
  // The other tab disconnects (no leave): presence must still be cleaned up.
  // Only a sync after the disconnect counts: the first one, before bob
  // came, listed alice alone too.
  const beforeDisconnect = syncs.items.length;
  b1.disconnect();
  await syncs.waitFor((l, i) => i >= beforeDisconnect && JSON.stringify(l) === JSON.stringify([{ id: "1", n: 1 }]), "bob gone after disconnect");
  const l2 = await leaves.waitFor((l) => l.id === "2" && l.remaining === 0, "final onLeave of bob");
  assert.equal(l2.metas.length, 1);
});

serverTest("presence_diff always carries both joins and leaves keys", async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" });
  const ca = a.channel(ROOM);
  await joinOk(ca);
  const b = await ctx.connect(2, { name: "Bob" });
  const cb = b.channel(ROOM);
  await joinOk(cb);
  await leaveChannel(cb);
  // Alice may also see the diff of her own join; only bob's diffs matter here.
  const isBobDiff = (m) => m.topic === ROOM && m.event === "presence_diff" && m.payload && ((m.payload.joins && m.payload.joins["2"]) || (m.payload.leaves && m.payload.leaves["2"]));
  const diffs = await a.messages.waitCount(2, isBobDiff, "bob's join and leave diffs");
  for (const d of a.messages.filter((m) => m.topic === ROOM && m.event === "presence_diff")) {
    assert.equal(d.join_ref, null, "presence_diff is a broadcast");
    assert.ok(d.payload.joins && typeof d.payload.joins === "object", JSON.stringify(d.payload));
    assert.ok(d.payload.leaves && typeof d.payload.leaves === "object", JSON.stringify(d.payload));
  }
  assert.ok(diffs[0].payload.joins["2"], `first diff joins bob: ${JSON.stringify(diffs[0].payload)}`);
  assert.ok(diffs[1].payload.leaves["2"], `second diff leaves bob: ${JSON.stringify(diffs[1].payload)}`);
});

serverTest("presence is per chat: a user in another chat is not listed", async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" });
  const ca = a.channel(ROOM);
  const presence = new Presence(ca);
  await joinOk(ca);
  const c = await ctx.connect(3, { name: "Carol" });
  await joinOk(c.channel("chat:1:3"));
  const a2 = await ctx.connect(1, { name: "Alice" });
  await joinOk(a2.channel("chat:1:3"));
  await sleep(QUIET_MS);
  assert.deepEqual(presence.list((id) => id), ["1"]);
});

serverTest("phoenix.js heartbeats keep the connection alive and are answered", async (ctx) => {
  const s = await ctx.connect(1, { socketOpts: { heartbeatIntervalMs: 300 } });
  await joinOk(s.channel("user:1"));
  await withTimeout(
    s.messages.waitCount(3, (m) => m.topic === "phoenix" && m.event === "phx_reply" && m.payload.status === "ok", "3 heartbeat replies"),
    WAIT_MS,
    "heartbeats"
  );
  assert.deepEqual(s.closes.items, [], "socket must not have closed");
});

serverTest("a channel event payload array (non-object) is handled without killing the connection", async (ctx) => {
  const s = await ctx.connect(1);
  const ch = s.channel(ROOM);
  await joinOk(ch);
  rawSend(s, [ch.joinRef(), "arr1", ROOM, "new_message", ["not", "an", "object"]]);
  const r = await s.messages.waitFor((m) => m.ref === "arr1", "reply to array payload");
  assert.equal(r.payload.status, "error", JSON.stringify(r));
  await pushOk(ch, "new_message", { body: "still alive", client_id: "alive" });
  assert.deepEqual(s.closes.items, []);
});

serverTest("events from one chat are not delivered to another chat's subscribers", async (ctx) => {
  const a = await ctx.connect(1);
  const c12 = a.channel("chat:1:2");
  const c13 = a.channel("chat:1:3");
  const in13 = collect(c13, "new_message");
  await joinOk(c12);
  await joinOk(c13);
  await pushOk(c12, "new_message", { body: "only 1:2", client_id: "iso" });
  await in13.none(() => true, "cross-room message");
});
