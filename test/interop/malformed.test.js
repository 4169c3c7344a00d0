"use strict";
// Malformed frames on a raw websocket: each gets either a clear error frame
// or a close with a code and reason, and the server keeps serving others.
const assert = require("node:assert/strict");
const { serverTest, joinOk, pushOk, collect, withTimeout, WAIT_MS } = require("./helpers");

// outcome waits until the raw client either receives an error frame or is
// closed, and returns {kind:"frame", json} or {kind:"close", code, reason}.
async function outcome(c) {
  const isErrorFrame = (f) =>
    f.json &&
    Array.isArray(f.json) &&
    f.json.length >= 5 &&
    (f.json[3] === "phx_error" || (f.json[3] === "phx_reply" && f.json[4] && f.json[4].status === "error"));
  return withTimeout(
    new Promise((resolve) => {
      const check = () => {
        const f = c.frames.find(isErrorFrame);
        if (f) return resolve({ kind: "frame", json: f.json });
        if (c.closeInfo) return resolve({ kind: "close", ...c.closeInfo, frames: c.frames.map((x) => x.text) });
      };
      c.waiters.push(check);
      check();
    }),
    WAIT_MS,
    `an error frame or a close; frames so far: ${c.dump()}`
  );
}

function assertClearError(o, label) {
  if (o.kind === "frame") {
    const payload = o.json[4];
    const reason = o.json[3] === "phx_error" ? payload && payload.reason : payload.response && payload.response.reason;
    assert.ok(typeof reason === "string" && reason.length > 0, `${label}: error frame without a reason: ${JSON.stringify(o.json)}`);
  } else {
    assert.ok(![1000, 1005, 1006].includes(o.code), `${label}: close must carry a specific error code, got ${o.code} ${JSON.stringify(o.reason)}`);
    assert.ok(o.reason.length > 0, `${label}: close ${o.code} must carry a reason`);
  }
}

async function rawConn(ctx, user = 50) {
  const tok = await ctx.server.token(user, `u${user}`);
  return ctx.raw(ctx.server.wsUrl({ token: tok, vsn: "2.0.0" }));
}

// A bystander that is chatting before the bad client connects must keep
// working afterwards, and a fresh client must still be able to chat.
async function assertServerStillServes(ctx, bystander) {
  if (bystander) {
    const m = await pushOk(bystander.ch, "new_message", { body: "bystander ok", client_id: ctx.uid() });
    await bystander.msgs.waitFor((x) => x.id === m.id, "bystander broadcast");
  }
  const s = await ctx.connect(1);
  const ch = s.channel("chat:1:2");
  await joinOk(ch);
  const m2 = await pushOk(ch, "new_message", { body: "after malformed", client_id: ctx.uid() });
  assert.equal(m2.body, "after malformed");
}

async function bystander(ctx) {
  const s = await ctx.connect(2);
  const ch = s.channel("chat:1:2");
  const msgs = collect(ch, "new_message");
  await joinOk(ch);
  return { s, ch, msgs };
}

const cases = [
  ["non-JSON text", "this is not json", (o) => o.kind === "frame" || [1003, 1007].includes(o.code)],
  ["a JSON array of three numbers", "[1,2,3]", null],
  ["a JSON object instead of an array", '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}', null],
  ["a non-string topic", '[null,"7",42,"heartbeat",{}]', null],
  ["a non-string event", '[null,"8","phoenix",42,{}]', null],
  ["a JSON string", '"hello"', null],
  ["an empty array", "[]", null],
  ["truncated JSON", '[null,"9","phoenix","heartbeat",{', (o) => o.kind === "frame" || [1003, 1007].includes(o.code)],
];

for (const [label, text, extra] of cases) {
  serverTest(`malformed frame (${label}) gets an error frame or a close with code and reason`, async (ctx) => {
    const by = await bystander(ctx);
    const c = await rawConn(ctx);
    c.send(text);
    const o = await outcome(c);
    assertClearError(o, label);
    if (extra) assert.ok(extra(o), `${label}: unexpected outcome ${JSON.stringify(o)}`);
    await assertServerStillServes(ctx, by);
  });
}

serverTest("an error reply to a malformed frame echoes a readable ref", async (ctx) => {
  const c = await rawConn(ctx);
  c.send('[null,"ref-42",42,"heartbeat",{}]');
  const o = await outcome(c);
  assertClearError(o, "non-string topic with ref");
  if (o.kind === "frame") assert.equal(o.json[1], "ref-42", `ref must be echoed: ${JSON.stringify(o.json)}`);
});

serverTest("a 2 MiB frame closes the connection with 1009", async (ctx) => {
  const by = await bystander(ctx);
  const c = await rawConn(ctx);
  const big = JSON.stringify([null, "big", "chat:1:50", "new_message", { body: "x".repeat(2 * 1024 * 1024), client_id: "big" }]);
  c.send(big);
  const info = await withTimeout(c.closed, WAIT_MS, "close after oversized frame");
  assert.equal(info.code, 1009, `expected close 1009, got ${JSON.stringify(info)}`);
  await assertServerStillServes(ctx, by);
});

serverTest("a binary frame gets an error frame or a close with code and reason", async (ctx) => {
  const by = await bystander(ctx);
  const c = await rawConn(ctx);
  c.send(Buffer.from([0xff, 0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef]));
  const o = await outcome(c);
  assertClearError(o, "binary frame");
  await assertServerStillServes(ctx, by);
});

serverTest("after a recoverable error frame the same connection still answers heartbeats", async (ctx) => {
  const c = await rawConn(ctx);
  c.send('[null,"7",42,"heartbeat",{}]');
  const o = await outcome(c);
  assertClearError(o, "non-string topic");
  if (o.kind === "frame") {
    c.send([null, "hb-ok", "phoenix", "heartbeat", {}]);
    const r = await c.waitReply("hb-ok");
    assert.equal(r[4].status, "ok");
  }
});

serverTest("many bad clients in a row do not take the server down", async (ctx) => {
  const by = await bystander(ctx);
  for (let i = 0; i < 20; i++) {
    const c = await rawConn(ctx, 60 + i);
    c.send(i % 2 ? "garbage" : Buffer.from([1, 2, 3]));
    await outcome(c);
    c.close();
  }
  await assertServerStillServes(ctx, by);
});
