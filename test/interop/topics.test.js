"use strict";
// Topic routing and authorization: user:ID lobbies, chat:A:B rooms with
// canonical names, and unmatched topics.
const assert = require("node:assert/strict");
const { serverTest, joinOk, joinError, joinChannel } = require("./helpers");

serverTest("a user can join their own lobby user:ID and gets an unread list", async (ctx) => {
  const s = await ctx.connect(1, { name: "Alice" });
  const reply = await joinOk(s.channel("user:1"));
  assert.deepEqual(reply, { unread: [] }, "fresh user has nothing unread");
});

serverTest("joining another user's lobby fails with reason unauthorized", async (ctx) => {
  const s = await ctx.connect(1, { name: "Alice" });
  assert.deepEqual(await joinError(s.channel("user:2")), { reason: "unauthorized" });
});

serverTest("both participants can join chat:A:B", async (ctx) => {
  const a = await ctx.connect(1);
  const b = await ctx.connect(2);
  const ra = await joinOk(a.channel("chat:1:2"));
  const rb = await joinOk(b.channel("chat:1:2"));
  assert.deepEqual(ra, { messages: [], has_more: false });
  assert.deepEqual(rb, { messages: [], has_more: false });
});

serverTest("a third user cannot join chat:A:B (unauthorized)", async (ctx) => {
  const c = await ctx.connect(3);
  assert.deepEqual(await joinError(c.channel("chat:1:2")), { reason: "unauthorized" });
});

serverTest("chat ids use numeric order when both are integers: chat:9:10 ok, chat:10:9 rejected", async (ctx) => {
  const s = await ctx.connect(9);
  await joinOk(s.channel("chat:9:10"));
  const err = await joinError(s.channel("chat:10:9"));
  assert.equal(typeof err.reason, "string");
  assert.ok(err.reason.length > 0, "error must carry a reason");
});

serverTest("non-canonical chat:2:1 is rejected with a reason", async (ctx) => {
  const s = await ctx.connect(1);
  const err = await joinError(s.channel("chat:2:1"));
  assert.equal(typeof err.reason, "string");
  assert.ok(err.reason.length > 0);
});

serverTest("chat ids use byte order when not both integers: chat:alice:bob ok, chat:bob:alice rejected", async (ctx) => {
  const s = await ctx.connect("alice", { name: "Alice" });
  await joinOk(s.channel("chat:alice:bob"));
  const err = await joinError(s.channel("chat:bob:alice"));
  assert.ok(typeof err.reason === "string" && err.reason.length > 0);
  // "10" < "9a" in byte order.
  const t = await ctx.connect("9a", { name: "Nine" });
  await joinOk(t.channel("chat:10:9a"));
  const err2 = await joinError(t.channel("chat:9a:10"));
  assert.ok(typeof err2.reason === "string" && err2.reason.length > 0);
});

serverTest("a self chat chat:1:1 is rejected with a reason", async (ctx) => {
  const s = await ctx.connect(1);
  const err = await joinError(s.channel("chat:1:1"));
  assert.ok(typeof err.reason === "string" && err.reason.length > 0, JSON.stringify(err));
});

serverTest("malformed chat topics are rejected with a reason", async (ctx) => {
  const s = await ctx.connect(1);
  for (const topic of ["chat:1", "chat:1:2:3", "chat::1", "chat:1:", "user:", "user:1:2"]) {
    const r = await joinChannel(s.channel(topic));
    s.channels.filter((c) => c.topic === topic).forEach((c) => c.leave());
    assert.equal(r.status, "error", `join ${topic} must fail, got ${JSON.stringify(r)}`);
    assert.ok(r.response && typeof r.response.reason === "string" && r.response.reason.length > 0, `join ${topic}: ${JSON.stringify(r)}`);
  }
});

serverTest("joining an unknown topic prefix replies error unmatched topic with a null join_ref", async (ctx) => {
  const s = await ctx.connect(1);
  const ch = s.channel("room:lobby");
  const err = await joinError(ch);
  assert.deepEqual(err, { reason: "unmatched topic" });
  const frame = await s.messages.waitFor((m) => m.topic === "room:lobby" && m.event === "phx_reply", "unmatched topic reply");
  assert.equal(frame.join_ref, null, `join_ref must be null: ${JSON.stringify(frame)}`);
});

serverTest("join reply carries join_ref and ref of the join", async (ctx) => {
  const s = await ctx.connect(1);
  const ch = s.channel("user:1");
  await joinOk(ch);
  const jr = ch.joinRef();
  const frame = await s.messages.waitFor((m) => m.topic === "user:1" && m.event === "phx_reply" && m.ref === jr, "join reply");
  assert.equal(frame.join_ref, jr);
  assert.equal(frame.payload.status, "ok");
});
