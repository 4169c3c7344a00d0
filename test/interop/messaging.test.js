"use strict";
// Chat messages: new_message, idempotent retries, validation, history,
// read receipts, typing and lobby notifications.
const assert = require("node:assert/strict");
const { serverTest, joinOk, joinChannel, pushOk, pushError, pushChannel, collect, assertMessage, leaveChannel, sleep, QUIET_MS } = require("./helpers");

const ROOM = "chat:1:2";

async function pair(ctx) {
  const a = await ctx.connect(1, { name: "Alice" });
  const b = await ctx.connect(2, { name: "Bob" });
  const ca = a.channel(ROOM);
  const cb = b.channel(ROOM);
  const aMsgs = collect(ca, "new_message");
  const bMsgs = collect(cb, "new_message");
  await joinOk(ca);
  await joinOk(cb);
  return { a, b, ca, cb, aMsgs, bMsgs };
}

serverTest("new_message replies ok with the stored message object", async (ctx) => {
  const { ca } = await pair(ctx);
  const m = await pushOk(ca, "new_message", { body: "hello bob", client_id: "c1" });
  assertMessage(m, { room: ROOM, user_id: "1", opponent_id: "2", body: "hello bob", client_id: "c1" });
});

serverTest("new_message is broadcast to both users' connections including the sender's", async (ctx) => {
  const { ca, aMsgs, bMsgs } = await pair(ctx);
  const m = await pushOk(ca, "new_message", { body: "hi", client_id: "c-bcast" });
  const atB = await bMsgs.waitFor((x) => x.client_id === "c-bcast", "broadcast at B");
  const atA = await aMsgs.waitFor((x) => x.client_id === "c-bcast", "broadcast at sender A");
  for (const got of [atA, atB]) {
    assertMessage(got, { id: m.id, room: ROOM, user_id: "1", opponent_id: "2", body: "hi", client_id: "c-bcast", sent_at: m.sent_at });
  }
});

serverTest("new_message reaches every connection of the recipient (two tabs)", async (ctx) => {
  const { ca } = await pair(ctx);
  const b2 = await ctx.connect(2, { name: "Bob" });
  const cb2 = b2.channel(ROOM);
  const b2Msgs = collect(cb2, "new_message");
  await joinOk(cb2);
  const m = await pushOk(ca, "new_message", { body: "to both tabs", client_id: "c-tabs" });
  const got = await b2Msgs.waitFor((x) => x.client_id === "c-tabs", "broadcast at B's second tab");
  assert.equal(got.id, m.id);
});

serverTest("the recipient can reply: messages flow both ways", async (ctx) => {
  const { ca, cb, aMsgs, bMsgs } = await pair(ctx);
  const m1 = await pushOk(ca, "new_message", { body: "ping", client_id: "p1" });
  await bMsgs.waitFor((x) => x.id === m1.id, "ping at B");
  const m2 = await pushOk(cb, "new_message", { body: "pong", client_id: "p2" });
  assertMessage(m2, { user_id: "2", opponent_id: "1", room: ROOM, body: "pong" });
  await aMsgs.waitFor((x) => x.id === m2.id, "pong at A");
  assert.ok(m2.id > m1.id, `ids must increase: ${m1.id} then ${m2.id}`);
});

// A retry is delivered again on purpose: the first attempt may have been
// stored without ever being delivered (its ack timed out), so the retry is
// the only chance to deliver it live. Every copy carries the same id, and
// clients dedupe by id.
serverTest("retrying new_message with the same client_id returns the same message, stored once", async (ctx) => {
  const { ca, bMsgs } = await pair(ctx);
  const first = await pushOk(ca, "new_message", { body: "once", client_id: "retry-1" });
  const second = await pushOk(ca, "new_message", { body: "once", client_id: "retry-1" });
  assert.equal(second.id, first.id, "retry must return the id of the first store");
  assert.equal(second.client_id, "retry-1");
  await bMsgs.waitFor((x) => x.client_id === "retry-1", "first broadcast");
  await sleep(QUIET_MS);
  const copies = bMsgs.filter((x) => x.client_id === "retry-1");
  assert.ok(copies.length >= 1 && copies.length <= 2, `one broadcast per attempt at most: ${JSON.stringify(bMsgs.items)}`);
  assert.ok(copies.every((x) => x.id === first.id), `every copy has the stored id: ${JSON.stringify(copies)}`);
  // History holds one copy.
  const ctx2 = await ctx.connect(2);
  const hist = await joinOk(ctx2.channel(ROOM));
  assert.equal(hist.messages.filter((x) => x.client_id === "retry-1").length, 1, `history: ${JSON.stringify(hist)}`);
});

serverTest("different client_ids with the same body store two messages", async (ctx) => {
  const { ca } = await pair(ctx);
  const m1 = await pushOk(ca, "new_message", { body: "same", client_id: "x1" });
  const m2 = await pushOk(ca, "new_message", { body: "same", client_id: "x2" });
  assert.notEqual(m1.id, m2.id);
});

serverTest("new_message with an empty body is rejected with a reason", async (ctx) => {
  const { ca, bMsgs } = await pair(ctx);
  const err = await pushError(ca, "new_message", { body: "", client_id: "e1" });
  assert.ok(typeof err.reason === "string" && err.reason.length > 0, JSON.stringify(err));
  await bMsgs.none(() => true, "broadcast of a rejected message");
});

serverTest("new_message body limit is 4096 bytes: 4096 accepted, 4097 rejected", async (ctx) => {
  const { ca } = await pair(ctx);
  const ok = await pushOk(ca, "new_message", { body: "a".repeat(4096), client_id: "big-ok" });
  assert.equal(ok.body.length, 4096);
  const err = await pushError(ca, "new_message", { body: "a".repeat(4097), client_id: "big-bad" });
  assert.ok(typeof err.reason === "string" && err.reason.length > 0, JSON.stringify(err));
});

serverTest("new_message body limit counts UTF-8 bytes, not characters", async (ctx) => {
  const { ca } = await pair(ctx);
  // 2048 × "é" = 4096 bytes: ok. 2049 × "é" = 4098 bytes (2049 chars): rejected.
  const ok = await pushOk(ca, "new_message", { body: "é".repeat(2048), client_id: "utf-ok" });
  assert.equal(ok.body, "é".repeat(2048));
  const err = await pushError(ca, "new_message", { body: "é".repeat(2049), client_id: "utf-bad" });
  assert.ok(typeof err.reason === "string" && err.reason.length > 0);
});

serverTest("new_message round-trips unicode and JSON-special characters unchanged", async (ctx) => {
  const { ca, bMsgs } = await pair(ctx);
  const body = 'quote " backslash \\ newline \n tab \t emoji 😀 nul-ish \u0001 <b>&amp;</b> \u2028';
  const m = await pushOk(ca, "new_message", { body, client_id: "uni" });
  assert.equal(m.body, body);
  const got = await bMsgs.waitFor((x) => x.client_id === "uni", "unicode broadcast");
  assert.equal(got.body, body);
});

serverTest("new_message with a non-string or missing body is rejected with a reason", async (ctx) => {
  const { ca, bMsgs } = await pair(ctx);
  for (const payload of [{ body: 42, client_id: "n1" }, { body: null, client_id: "n2" }, { body: { x: 1 }, client_id: "n3" }, { body: ["a"], client_id: "n4" }, { client_id: "n5" }]) {
    const err = await pushError(ca, "new_message", payload);
    assert.ok(typeof err.reason === "string" && err.reason.length > 0, `${JSON.stringify(payload)} -> ${JSON.stringify(err)}`);
  }
  await bMsgs.none(() => true, "broadcast of an invalid message");
});

serverTest("an unknown event on a joined chat replies error unknown event", async (ctx) => {
  const { ca } = await pair(ctx);
  assert.deepEqual(await pushError(ca, "launch_missiles", {}), { reason: "unknown event" });
  // The channel still works afterwards.
  await pushOk(ca, "new_message", { body: "still here", client_id: "after-unknown" });
});

async function sendN(ch, n, prefix) {
  const out = [];
  for (let i = 1; i <= n; i++) out.push(await pushOk(ch, "new_message", { body: `${prefix} ${i}`, client_id: `${prefix}-${i}` }));
  return out;
}

function assertAscending(list, label) {
  for (let i = 1; i < list.length; i++) assert.ok(list[i].id > list[i - 1].id, `${label}: ids must be ascending (oldest first): ${list.map((m) => m.id)}`);
}

// These send 60 messages on one connection: lift the per-connection push rate
// limit (default 20/s, burst 40) so the test is about paging only.
const FAST = { ELCHAT_PUSH_RATE: "10000", ELCHAT_PUSH_BURST: "10000" };

serverTest("chat join reply holds the last 50 messages oldest first with has_more", { timeout: 60000, env: FAST }, async (ctx) => {
  const a = await ctx.connect(1);
  const ca = a.channel(ROOM);
  await joinOk(ca);
  const sent = await sendN(ca, 60, "h");
  const b = await ctx.connect(2);
  const reply = await joinOk(b.channel(ROOM));
  assert.equal(reply.messages.length, 50);
  assert.equal(reply.has_more, true);
  assertAscending(reply.messages, "join reply");
  assert.deepEqual(reply.messages.map((m) => m.id), sent.slice(10).map((m) => m.id));
  reply.messages.forEach((m) => assertMessage(m, { room: ROOM }));
});

serverTest("history before an id pages back oldest first with has_more", { timeout: 60000, env: FAST }, async (ctx) => {
  const a = await ctx.connect(1);
  const ca = a.channel(ROOM);
  await joinOk(ca);
  const sent = await sendN(ca, 60, "p");
  // Before the 11th: the first 10, no more.
  const older = await pushOk(ca, "history", { before: sent[10].id });
  assert.deepEqual(older.messages.map((m) => m.id), sent.slice(0, 10).map((m) => m.id));
  assert.equal(older.has_more, false);
  // Before the 60th: 50 of the 59 older ones (the newest 50 of them), more left.
  const page = await pushOk(ca, "history", { before: sent[59].id });
  assert.equal(page.messages.length, 50);
  assertAscending(page.messages, "history page");
  assert.deepEqual(page.messages.map((m) => m.id), sent.slice(9, 59).map((m) => m.id));
  assert.equal(page.has_more, true);
  // Before the first: nothing.
  const none = await pushOk(ca, "history", { before: sent[0].id });
  assert.deepEqual(none, { messages: [], has_more: false });
});

serverTest("chat join with last_id returns only the messages after it", async (ctx) => {
  const a = await ctx.connect(1);
  const ca = a.channel(ROOM);
  await joinOk(ca);
  const sent = await sendN(ca, 8, "l");
  const b = await ctx.connect(2);
  const reply = await joinOk(b.channel(ROOM, { last_id: sent[4].id }));
  assert.deepEqual(reply.messages.map((m) => m.id), sent.slice(5).map((m) => m.id));
  const b2 = await ctx.connect(2);
  const upToDate = await joinOk(b2.channel(ROOM, { last_id: sent[7].id }));
  assert.deepEqual(upToDate.messages, []);
});

serverTest("history of a room only contains that room's messages", async (ctx) => {
  const a = await ctx.connect(1);
  const c12 = a.channel("chat:1:2");
  const c13 = a.channel("chat:1:3");
  await joinOk(c12);
  await joinOk(c13);
  await pushOk(c12, "new_message", { body: "for 2", client_id: "r2" });
  await pushOk(c13, "new_message", { body: "for 3", client_id: "r3" });
  const b = await ctx.connect(2);
  const reply = await joinOk(b.channel("chat:1:2"));
  assert.deepEqual(reply.messages.map((m) => m.body), ["for 2"]);
});

serverTest("read broadcasts a read receipt to the chat and clears the reader's lobby unread", async (ctx) => {
  // Bob writes twice while Alice is offline.
  const b = await ctx.connect(2, { name: "Bob" });
  const cb = b.channel(ROOM);
  const bReads = collect(cb, "read");
  await joinOk(cb);
  await pushOk(cb, "new_message", { body: "one", client_id: "u1" });
  const last = await pushOk(cb, "new_message", { body: "two", client_id: "u2" });
  const a = await ctx.connect(1, { name: "Alice" });
  const lobby = await joinOk(a.channel("user:1"));
  assert.equal(lobby.unread.length, 1, JSON.stringify(lobby));
  const u = lobby.unread[0];
  assert.equal(u.room, ROOM);
  assert.equal(u.opponent_id, "2");
  assert.equal(u.unread, 2);
  assertMessage(u.last_message, { id: last.id, body: "two", user_id: "2", opponent_id: "1", room: ROOM });
  // Alice opens the chat and reads.
  const ca = a.channel(ROOM);
  await joinOk(ca);
  const r = await pushChannel(ca, "read", { last_id: last.id });
  assert.equal(r.status, "ok", JSON.stringify(r));
  const receipt = await bReads.waitFor(() => true, "read receipt at Bob");
  assert.deepEqual(receipt, { user_id: "1", last_id: last.id });
  // Lobby unread is gone after a rejoin.
  const a2 = await ctx.connect(1, { name: "Alice" });
  const lobby2 = await joinOk(a2.channel("user:1"));
  assert.deepEqual(lobby2.unread, [], JSON.stringify(lobby2));
});

serverTest("typing is relayed to the other connections in the chat but not back to the sender", async (ctx) => {
  const { a, ca, cb } = await pair(ctx);
  const a2 = await ctx.connect(1, { name: "Alice" });
  const ca2 = a2.channel(ROOM);
  const bTyping = collect(cb, "typing");
  const aTyping = collect(ca, "typing");
  const a2Typing = collect(ca2, "typing");
  await joinOk(ca2);
  await pushOk(ca, "typing", {});
  assert.deepEqual(await bTyping.waitFor(() => true, "typing at Bob"), { user_id: "1", name: "Alice" });
  assert.deepEqual(await a2Typing.waitFor(() => true, "typing at Alice's other tab"), { user_id: "1", name: "Alice" });
  await aTyping.none(() => true, "typing echoed to the sending connection");
  assert.ok(a.isConnected());
});

serverTest("lobby gets a notification when the recipient is not in the chat", async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" });
  const lobby = a.channel("user:1");
  const notes = collect(lobby, "notification");
  await joinOk(lobby);
  const b = await ctx.connect(2, { name: "Bob" });
  const cb = b.channel(ROOM);
  await joinOk(cb);
  const m = await pushOk(cb, "new_message", { body: "knock knock", client_id: "n1" });
  const n = await notes.waitFor(() => true, "notification in Alice's lobby");
  assert.equal(n.room, ROOM);
  assertMessage(n.message, { id: m.id, body: "knock knock", user_id: "2", opponent_id: "1", room: ROOM });
  // The sender's lobby gets nothing for their own message.
  const bl = b.channel("user:2");
  const bNotes = collect(bl, "notification");
  await joinOk(bl);
  await pushOk(cb, "new_message", { body: "again", client_id: "n2" });
  await notes.waitCount(2, () => true, "second notification at Alice");
  await bNotes.none(() => true, "notification to the sender");
});

serverTest("no lobby notification while the recipient has the chat open", async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" });
  const lobby = a.channel("user:1");
  const notes = collect(lobby, "notification");
  await joinOk(lobby);
  const ca = a.channel(ROOM);
  const aMsgs = collect(ca, "new_message");
  await joinOk(ca);
  const b = await ctx.connect(2, { name: "Bob" });
  const cb = b.channel(ROOM);
  await joinOk(cb);
  const m = await pushOk(cb, "new_message", { body: "you are here", client_id: "open" });
  await aMsgs.waitFor((x) => x.id === m.id, "message in the open chat");
  await notes.none(() => true, "notification while the chat is open");
  // After leaving the chat, notifications come again.
  assert.equal(await leaveChannel(ca), "ok");
  const m2 = await pushOk(cb, "new_message", { body: "you left", client_id: "left" });
  const n = await notes.waitFor(() => true, "notification after leaving the chat");
  assert.equal(n.message.id, m2.id);
});

serverTest("a message sent while the recipient is offline shows in the next lobby join", async (ctx) => {
  const b = await ctx.connect(2, { name: "Bob" });
  const cb = b.channel(ROOM);
  await joinOk(cb);
  const m = await pushOk(cb, "new_message", { body: "are you there?", client_id: "off-1" });
  const a = await ctx.connect(1, { name: "Alice" });
  const lobby = await joinOk(a.channel("user:1"));
  assert.deepEqual(
    lobby.unread.map((u) => ({ room: u.room, opponent_id: u.opponent_id, unread: u.unread, last_id: u.last_message && u.last_message.id })),
    [{ room: ROOM, opponent_id: "2", unread: 1, last_id: m.id }]
  );
  // Bob's own lobby does not list his own message as unread.
  const bl = await joinOk(b.channel("user:2"));
  assert.deepEqual(bl.unread, []);
});

serverTest("lobby unread lists one entry per room with undelivered messages", async (ctx) => {
  const b = await ctx.connect(2);
  const c = await ctx.connect(3);
  const cb = b.channel("chat:1:2");
  const cc = c.channel("chat:1:3");
  await joinOk(cb);
  await joinOk(cc);
  await pushOk(cb, "new_message", { body: "from 2", client_id: "m2" });
  await pushOk(cc, "new_message", { body: "from 3 a", client_id: "m3a" });
  const last3 = await pushOk(cc, "new_message", { body: "from 3 b", client_id: "m3b" });
  const a = await ctx.connect(1);
  const lobby = await joinOk(a.channel("user:1"));
  const byRoom = Object.fromEntries(lobby.unread.map((u) => [u.room, u]));
  assert.deepEqual(Object.keys(byRoom).sort(), ["chat:1:2", "chat:1:3"]);
  assert.equal(byRoom["chat:1:2"].unread, 1);
  assert.equal(byRoom["chat:1:3"].unread, 2);
  assert.equal(byRoom["chat:1:3"].opponent_id, "3");
  assert.equal(byRoom["chat:1:3"].last_message.id, last3.id);
});

serverTest("pushes sent before the join completes are delivered after it (client buffering)", async (ctx) => {
  const a = await ctx.connect(1);
  const ca = a.channel(ROOM);
  const joined = joinChannel(ca);
  const pushed = pushChannel(ca, "new_message", { body: "early", client_id: "early" });
  assert.equal((await joined).status, "ok");
  const r = await pushed;
  assert.equal(r.status, "ok", JSON.stringify(r));
  assert.equal(r.response.body, "early");
});
