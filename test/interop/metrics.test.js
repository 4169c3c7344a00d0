"use strict";
// /metrics on a live node: what an operator's Prometheus scrapes.
const assert = require("node:assert/strict");
const { serverTest, joinOk, pushOk, httpGet, sleep } = require("./helpers");

function metric(text, name) {
  // name may carry its labels, exactly as the exposition prints them.
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}

serverTest("metrics: /metrics counts connections, joins by kind, messages and rejected handshakes", async (ctx) => {
  const alice = await ctx.connect(1, { name: "Alice" });
  await joinOk(alice.channel("user:1"));
  const chat = alice.channel("chat:1:2");
  await joinOk(chat);
  await pushOk(chat, "new_message", { body: "counted", client_id: "m-1" });
  // One refused handshake (no token), counted by reason.
  const res = await httpGet(`${ctx.server.httpUrl}/socket/websocket?vsn=2.0.0`, {
    headers: { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==" },
  });
  assert.equal(res.status, 403);
  await sleep(100);

  const m = await httpGet(`${ctx.server.httpUrl}/metrics`);
  assert.equal(m.status, 200);
  const text = m.body;
  assert.equal(metric(text, "elchat_connections"), 1, text.slice(0, 400));
  assert.equal(metric(text, 'elchat_joins_total{kind="lobby"}'), 1);
  assert.equal(metric(text, 'elchat_joins_total{kind="chat"}'), 1);
  assert.ok(metric(text, "elchat_messages_in_total") >= 1);
  assert.ok(metric(text, "elchat_frames_out_total") >= 1);
  assert.equal(metric(text, 'elchat_handshakes_rejected_total{reason="token missing"}'), 1);
  assert.ok(metric(text, "elchat_store_batch_size_count") >= 1);
  assert.ok(metric(text, "process_resident_memory_bytes") > 0);
});
