"use strict";
// Graceful drain on SIGTERM (close 1012) and phoenix.js reconnect + catch-up
// against a restarted server on the same port and data dir.
const assert = require("node:assert/strict");
const { serverTest, joinOk, pushOk, collect, freePort, withTimeout, WS, WAIT_MS, Collector, sleep } = require("./helpers");

const ROOM = "chat:1:2";
// The server spreads 1012 closes over --drain-timeout (default 20s); keep it
// short so a single test socket is closed promptly.
const DRAIN = { ELCHAT_DRAIN_TIMEOUT: "1s" };

serverTest("SIGTERM closes open websockets with code 1012 and the server exits", { env: DRAIN }, async (ctx) => {
  const tok = await ctx.server.token(1, "A");
  const c = await ctx.raw(ctx.server.wsUrl({ token: tok, vsn: "2.0.0" }));
  c.send([null, "1", "phoenix", "heartbeat", {}]);
  await c.waitReply("1");
  ctx.server.proc.kill("SIGTERM");
  const info = await withTimeout(c.closed, WAIT_MS, "close frame after SIGTERM");
  assert.equal(info.code, 1012, `expected close 1012 (service restart), got ${JSON.stringify(info)}`);
  const exit = await withTimeout(ctx.server.exited, 10000, "server exit after SIGTERM");
  assert.ok(exit.code === 0 || exit.signal === null, `server should exit by itself: ${JSON.stringify(exit)}`);
});

serverTest("phoenix.js reconnects after a restart, rejoins and catches up with last_id", { timeout: 60000, env: DRAIN }, async (ctx) => {
  const s1 = ctx.server;
  // Alice's transport can be held off the server ("gate closed") so that Bob
  // can deterministically write while Alice is disconnected.
  const deadPort = await freePort();
  const gate = { open: true };
  class GatedWS extends WS {
    constructor(url, protocols) {
      super(gate.open ? url : url.replace(`127.0.0.1:${s1.port}/`, `127.0.0.1:${deadPort}/`), protocols);
    }
  }
  let lastSeen = 0;
  const a = await ctx.connect(1, { name: "Alice", socketOpts: { transport: GatedWS, reconnectAfterMs: () => 100 } });
  const ca = a.channel(ROOM, () => (lastSeen ? { last_id: lastSeen } : {}));
  const joins = new Collector("alice join replies");
  const aMsgs = collect(ca, "new_message");
  ca.on("new_message", (m) => (lastSeen = Math.max(lastSeen, m.id)));
  await withTimeout(
    new Promise((resolve) =>
      ca.join().receive("ok", (r) => {
        joins.push(r);
        for (const m of r.messages || []) lastSeen = Math.max(lastSeen, m.id);
        resolve();
      })
    ),
    WAIT_MS,
    "first join"
  );
  const before = await pushOk(ca, "new_message", { body: "before restart", client_id: "pre" });
  await aMsgs.waitFor((m) => m.id === before.id, "own broadcast before restart");
  assert.equal(lastSeen, before.id);

  // Stop the server gracefully; Alice sees 1012 and starts reconnecting.
  gate.open = false;
  s1.proc.kill("SIGTERM");
  const close = await a.closes.waitFor(() => true, "alice socket close after SIGTERM");
  assert.equal(close.code, 1012, `phoenix.js saw close ${JSON.stringify(close)}`);
  await withTimeout(s1.exited, 10000, "first server exit");

  // New server, same port / data dir / secret.
  const s2 = await ctx.startServer({ port: s1.port, dataDir: s1.dataDir, secret: s1.secret });
  const b = await ctx.connect(2, { name: "Bob", server: s2 });
  const cb = b.channel(ROOM);
  const bJoin = await joinOk(cb);
  assert.ok(bJoin.messages.some((m) => m.id === before.id), `messages survive a restart: ${JSON.stringify(bJoin)}`);
  const m1 = await pushOk(cb, "new_message", { body: "while you were away 1", client_id: "away1" });
  const m2 = await pushOk(cb, "new_message", { body: "while you were away 2", client_id: "away2" });
  await sleep(300);
  assert.equal(joins.items.length, 1, "alice must not have rejoined while the gate was closed");

  // Let Alice back in: phoenix.js reconnects by itself and rejoins.
  gate.open = true;
  const rejoin = await joins.waitCount(2, () => true, "alice rejoin ok after restart", 15000);
  const caught = rejoin[1].messages.map((m) => m.id);
  assert.deepEqual(caught, [m1.id, m2.id], `rejoin with last_id=${before.id} must return exactly the missed messages: ${JSON.stringify(rejoin[1])}`);
  // And live traffic flows again.
  const m3 = await pushOk(cb, "new_message", { body: "welcome back", client_id: "back" });
  await aMsgs.waitFor((m) => m.id === m3.id, "live message after reconnect");
});

serverTest("phoenix.js channels rejoin automatically after the server drops the connection", { timeout: 45000, env: DRAIN }, async (ctx) => {
  const s1 = ctx.server;
  const a = await ctx.connect(1, { name: "Alice", socketOpts: { reconnectAfterMs: () => 200 } });
  const lobby = a.channel("user:1");
  const oks = new Collector("lobby join oks");
  lobby.join().receive("ok", (r) => oks.push(r));
  await oks.waitFor(() => true, "first lobby join");
  s1.proc.kill("SIGTERM");
  await withTimeout(s1.exited, 10000, "server exit");
  await ctx.startServer({ port: s1.port, dataDir: s1.dataDir, secret: s1.secret });
  await oks.waitCount(2, () => true, "lobby rejoined after restart", 15000);
  assert.ok(a.opens.items.length >= 2, "socket reopened");
});
