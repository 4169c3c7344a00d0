"use strict";
// phoenix.js's LongPoll transport (transport: LongPoll; under Node it uses
// fetch) against one node: the seed's full story, a long-poll user and a
// WebSocket user chatting, and the refusals of bad long-poll input.
const assert = require("node:assert/strict");
const { serverTest, joinOk, pushOk, collect, chatTopic, sleep, WAIT_MS } = require("./helpers");
const { LongPoll } = require("phoenix");
const { story } = require("./story");

const lp = { transport: LongPoll, longpollerTimeout: 20000 };

serverTest("longpoll: the seed's story with transport: LongPoll on one node", { timeout: 90000 }, async (ctx) => {
  await story((user, opts) => ctx.connect(user, { ...opts, socketOpts: lp }));
});

serverTest("longpoll: a long-poll user and a WebSocket user chat", { timeout: 60000 }, async (ctx) => {
  const room = chatTopic(1, 2);
  const alice = await ctx.connect(1, { name: "Alice", socketOpts: lp });
  const bob = await ctx.connect(2, { name: "Bob" });
  const aChat = alice.channel(room);
  const bChat = bob.channel(room);
  const aMsgs = collect(aChat, "new_message");
  const bMsgs = collect(bChat, "new_message");
  await joinOk(aChat);
  await joinOk(bChat);
  for (let i = 0; i < 5; i++) {
    const a = await pushOk(aChat, "new_message", { body: `from lp ${i}`, client_id: ctx.uid() });
    await bMsgs.waitFor((m) => m.id === a.id, `ws user gets long-poll message ${i}`);
    const b = await pushOk(bChat, "new_message", { body: `from ws ${i}`, client_id: ctx.uid() });
    await aMsgs.waitFor((m) => m.id === b.id, `long-poll user gets ws message ${i}`);
  }
  // Order is kept: the long-poll side saw the ws messages in send order.
  const ids = aMsgs.items.filter((m) => m.user_id === "2").map((m) => m.id);
  assert.deepEqual(ids, [...ids].sort((x, y) => x - y));
});
