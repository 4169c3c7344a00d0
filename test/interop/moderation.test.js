"use strict";
// Who may talk to whom and what can be taken back, with the real phoenix.js
// client: edit_message / delete_message and tombstones, the change cursor
// (since_seq) across a reconnect, blocking from the lobby, the granted chat
// policy, and bans through the HTTP API. Runs on the embedded store by
// default and on PostgreSQL with ELCHAT_INTEROP_SERVER_DATABASE_URL; the
// cluster tests at the end start their own PostgreSQL and Redis (skipped
// when the binaries are missing).
const assert = require("node:assert/strict");
const { execFile, spawn, execFileSync } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { after } = require("node:test");
const {
  ELCHAT_BIN,
  WAIT_MS,
  serverTest,
  joinOk,
  joinError,
  pushOk,
  pushError,
  pushChannel,
  collect,
  resignJwt,
  freePort,
  sleep,
  Collector,
} = require("./helpers");

const ROOM = "chat:1:2";
const API_KEY = "interop-api-key-0123456789";
const ENV = { ELCHAT_API_KEY: API_KEY };

// api calls the server-to-server HTTP API.
function api(server, method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? "" : JSON.stringify(body);
    const req = http.request(
      `${server.httpUrl}${p}`,
      { method, headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) }, timeout: WAIT_MS },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          let json = null;
          try {
            json = JSON.parse(text);
          } catch {}
          resolve({ status: res.statusCode, body: json, text });
        });
      }
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${p}: timeout`)));
    req.on("error", reject);
    req.end(data);
  });
}

// grant runs `elchat grant` like a host app's backend would sign one.
function grant(server, user, peer, ttl) {
  const args = ["grant", "--user", String(user), "--peer", String(peer)];
  if (ttl) args.push("--ttl", ttl);
  return new Promise((resolve, reject) => {
    execFile(ELCHAT_BIN, args, { env: { PATH: process.env.PATH, ELCHAT_SECRET: server.secret }, timeout: 10000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`elchat ${args.join(" ")}: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

// bothStores registers a test twice: on the embedded store (or whatever
// ELCHAT_INTEROP_SERVER_DATABASE_URL says) and on a fresh database of a
// throwaway PostgreSQL (skipped when initdb is missing).
function bothStores(name, opts, fn) {
  serverTest(name, opts, fn);
  serverTest(`${name} [postgres]`, { ...opts, noServer: true }, async (ctx) => {
    const url = await freshDatabase();
    if (!url) {
      process.stderr.write(`skipping ${name} [postgres]: initdb or redis-server missing\n`);
      return;
    }
    ctx.server = await ctx.startServer({ env: { ...opts.env, ELCHAT_DATABASE_URL: url, ELCHAT_MIGRATE: "true" } });
    await fn(ctx);
  });
}

// ---------------------------------------------------------------- edit / delete

bothStores("edit_message and delete_message: author only, both sides told, tombstone in history, bad input refused", { env: ENV }, async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" });
  const b = await ctx.connect(2, { name: "Bob" });
  const ca = a.channel(ROOM);
  const cb = b.channel(ROOM);
  await joinOk(ca);
  await joinOk(cb);
  const bUpdated = collect(cb, "message_updated");
  const bDeleted = collect(cb, "message_deleted");
  const aUpdated = collect(ca, "message_updated");

  const m = await pushOk(ca, "new_message", { body: "helo", client_id: ctx.uid() });
  assert.ok(Number.isInteger(m.seq) && m.seq > 0, `a message carries its seq: ${JSON.stringify(m)}`);
  const ed = await pushOk(ca, "edit_message", { id: m.id, body: "hello" });
  assert.equal(ed.body, "hello");
  assert.equal(ed.id, m.id);
  assert.ok(ed.seq > m.seq, "an edit is a later change");
  assert.match(ed.edited_at, /Z$/);
  const up = await bUpdated.waitFor((u) => u.id === m.id, "bob's message_updated");
  assert.deepEqual(up, ed, "message_updated carries the whole updated message");
  await aUpdated.waitFor((u) => u.id === m.id, "alice's own message_updated");

  // The other user cannot touch it.
  assert.equal((await pushError(cb, "edit_message", { id: m.id, body: "mine" })).reason, "not the author of the message");
  assert.equal((await pushError(cb, "delete_message", { id: m.id })).reason, "not the author of the message");
  // Bad input: a missing id, another chat's message, an oversized body.
  const c3 = a.channel("chat:1:3");
  await joinOk(c3);
  const other = await pushOk(c3, "new_message", { body: "elsewhere" });
  assert.equal((await pushError(ca, "edit_message", { id: 987654321, body: "x" })).reason, "message not found");
  assert.equal((await pushError(ca, "delete_message", { id: other.id })).reason, "message not found");
  assert.equal((await pushError(ca, "edit_message", { id: m.id, body: "x".repeat(5000) })).reason, "body longer than 4096 bytes");
  assert.equal((await pushError(ca, "edit_message", { id: "nope", body: "x" })).reason, "id must be a message id and body a string");
  assert.equal((await pushError(ca, "edit_message", { id: m.id })).reason, "body must be a string");
  const reader = await ctx.connect(2, { name: "Bob's other tab" });
  const hist1 = await joinOk(reader.channel(ROOM));
  assert.deepEqual(
    hist1.messages.map((x) => x.body),
    ["hello"],
    "refused edits changed nothing"
  );

  const del = await pushOk(ca, "delete_message", { id: m.id });
  assert.equal(del.id, m.id);
  assert.equal(del.room, ROOM);
  const gone = await bDeleted.waitFor((d) => d.id === m.id, "bob's message_deleted");
  assert.deepEqual({ id: gone.id, room: gone.room }, { id: m.id, room: ROOM });
  assert.equal((await pushError(ca, "edit_message", { id: m.id, body: "back" })).reason, "message was deleted");
  const hist2 = await joinOk((await ctx.connect(2)).channel(ROOM));
  const tomb = hist2.messages.find((x) => x.id === m.id);
  assert.equal(tomb.deleted, true, `tombstone: ${JSON.stringify(tomb)}`);
  assert.equal(tomb.body, "", "a tombstone never carries the body");

  // Moderation through the API: redact, then delete any message.
  const rude = await pushOk(cb, "new_message", { body: "rude" });
  const red = await api(ctx.server, "PATCH", `/api/v1/messages/${rude.id}`, { body: "[redacted]" });
  assert.equal(red.status, 200, red.text);
  assert.equal(red.body.body, "[redacted]");
  await aUpdated.waitFor((u) => u.id === rude.id && u.body === "[redacted]", "alice sees the redaction");
  const apiDel = await api(ctx.server, "DELETE", `/api/v1/messages/${rude.id}`);
  assert.equal(apiDel.status, 200, apiDel.text);
  await bDeleted.waitFor((d) => d.id === rude.id, "bob sees the moderator's delete");
  assert.equal((await api(ctx.server, "DELETE", `/api/v1/messages/987654321`)).status, 404);
  assert.equal((await api(ctx.server, "PATCH", `/api/v1/messages/${other.id}`, { body: "" })).status, 400);
});

bothStores("edits and deletes outside the window are refused", { env: { ...ENV, ELCHAT_EDIT_WINDOW: "1500ms" } }, async (ctx) => {
  const a = await ctx.connect(1);
  const ca = a.channel(ROOM);
  await joinOk(ca);
  const m = await pushOk(ca, "new_message", { body: "quick" });
  const inside = await pushOk(ca, "new_message", { body: "fix me" });
  await pushOk(ca, "edit_message", { id: inside.id, body: "fixed" });
  await sleep(1800);
  assert.equal((await pushError(ca, "edit_message", { id: m.id, body: "late" })).reason, "edit window has passed");
  assert.equal((await pushError(ca, "delete_message", { id: m.id })).reason, "edit window has passed");
  // The moderator has no window.
  assert.equal((await api(ctx.server, "DELETE", `/api/v1/messages/${m.id}`)).status, 200);
});

// ---------------------------------------------------------------- change cursor

bothStores("the change cursor returns every edit, delete and read that happened while a client was away", { timeout: 60000, env: ENV }, async (ctx) => {
  const gate = { open: true };
  const deadPort = await freePort();
  const { WS } = require("./helpers");
  const port = ctx.server.port;
  class GatedWS extends WS {
    constructor(url, protocols) {
      super(gate.open ? url : url.replace(`127.0.0.1:${port}/`, `127.0.0.1:${deadPort}/`), protocols);
    }
  }
  const a = await ctx.connect(1, { name: "Alice", socketOpts: { transport: GatedWS, reconnectAfterMs: () => 100 } });
  let cursor = null;
  const replies = new Collector("alice join replies");
  const ca = a.channel(ROOM, () => (cursor === null ? {} : { since_seq: cursor }));
  const note = (s) => Number.isInteger(s) && (cursor = Math.max(cursor || 0, s));
  ca.on("new_message", (m) => note(m.seq));
  ca.on("message_updated", (m) => note(m.seq));
  ca.on("message_deleted", (d) => note(d.seq));
  ca.joinPush.receive("ok", (r) => {
    replies.push(r);
    for (const m of r.messages || []) note(m.seq);
    if (r.changes) note(r.seq);
  });
  ca.join();
  await replies.waitFor(() => true, "first join");
  const m1 = await pushOk(ca, "new_message", { body: "one" });
  const m2 = await pushOk(ca, "new_message", { body: "two" });
  await sleep(100);
  assert.equal(cursor, m2.seq, "the cursor follows the live stream");

  // Alice goes away.
  gate.open = false;
  a.conn.close();
  await a.closes.waitFor(() => true, "alice disconnected");

  // While she is away: Bob reads, edits of hers from another tab, a
  // delete, a new message, and a moderator redaction.
  const b = await ctx.connect(2, { name: "Bob" });
  const cb = b.channel(ROOM);
  await joinOk(cb);
  await pushOk(cb, "read", { last_id: m2.id });
  const a2 = await ctx.connect(1, { name: "Alice tab 2" });
  const ca2 = a2.channel(ROOM);
  await joinOk(ca2);
  await pushOk(ca2, "edit_message", { id: m1.id, body: "one (edited)" });
  await pushOk(ca2, "delete_message", { id: m2.id });
  const m3 = await pushOk(cb, "new_message", { body: "three" });
  assert.equal((await api(ctx.server, "PATCH", `/api/v1/messages/${m3.id}`, { body: "three [redacted]" })).status, 200);

  gate.open = true;
  const rejoin = await replies.waitCount(2, () => true, "alice rejoins with since_seq", 15000);
  const r = rejoin[1];
  assert.ok(Array.isArray(r.changes), `a since_seq join returns changes: ${JSON.stringify(r)}`);
  const seen = r.changes.map((c) => (c.type === "read" ? `read:${c.user_id}:${c.last_id}` : `${c.message.id}:${c.message.deleted ? "deleted" : c.message.body}`));
  assert.deepEqual(seen, [`read:2:${m2.id}`, `${m1.id}:one (edited)`, `${m2.id}:deleted`, `${m3.id}:three [redacted]`], JSON.stringify(r));
  for (let i = 1; i < r.changes.length; i++) assert.ok(r.changes[i].seq > r.changes[i - 1].seq, "changes come in seq order");
  assert.equal(r.has_more, false);
  assert.equal(r.seq, r.changes[r.changes.length - 1].seq, "seq is where to continue from");
  assert.ok(r.changes.every((c) => c.type !== "message" || !c.message.deleted || c.message.body === ""), "tombstones carry no body");

  // Paging: history with since_seq from the old cursor, one change per
  // page would need a small limit; the server pages at CatchUpLimit, so
  // here check that a page from the last seq is empty and a page from 0
  // holds everything.
  const empty = await pushOk(ca, "history", { since_seq: r.seq });
  assert.deepEqual(empty.changes, []);
  const all = await pushOk(ca, "history", { since_seq: 0 });
  assert.equal(all.changes.filter((c) => c.type === "message").length, 3);

  // A cursor from the future is refused; last_id joins keep working.
  const future = await joinError(a.channel(ROOM, { since_seq: r.seq + 1000 }));
  assert.equal(future.reason, "since_seq is ahead of the chat");
  assert.equal((await joinError(a.channel(ROOM, { since_seq: -5 }))).reason, "since_seq must not be negative");
  const old = await joinOk(b.channel(ROOM, { last_id: 0 }));
  assert.deepEqual(old.messages.map((x) => x.id), [m1.id, m2.id, m3.id]);
  assert.equal(old.messages[1].deleted, true);
});

// ---------------------------------------------------------------- blocking

bothStores("block: refused sends, no typing or presence, lobby unread unaffected; unblock restores", { env: ENV }, async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" }); // the blocker
  const b = await ctx.connect(2, { name: "Bob" });
  const lobbyA = a.channel("user:1");
  await joinOk(lobbyA);
  const notes = collect(lobbyA, "notification");
  const cb = b.channel(ROOM);
  await joinOk(cb);
  const first = await pushOk(cb, "new_message", { body: "hi alice" });
  await notes.waitFor((n) => n.message.id === first.id, "notification before the block");

  await pushOk(lobbyA, "block", { user_id: "2" });
  assert.equal((await pushError(cb, "new_message", { body: "let me in" })).reason, "blocked by the recipient");
  await notes.none((n) => n.message.body === "let me in", "no notification from a blocked user");

  // Alice's lobby does not list Bob's chat as unread.
  const a2 = await ctx.connect(1, { name: "Alice 2" });
  const lobby2 = await joinOk(a2.channel("user:1"));
  assert.deepEqual(lobby2.unread, [], `lobby while blocking: ${JSON.stringify(lobby2)}`);
  const apiUnread = await api(ctx.server, "GET", "/api/v1/users/1/unread");
  assert.equal(apiUnread.status, 200);
  assert.deepEqual(apiUnread.body, { total: 0, chats: [] }, "the API's unread follows the lobby");

  // No typing and no presence from Alice reaches Bob.
  const bTyping = collect(cb, "typing");
  const bDiffs = collect(cb, "presence_diff");
  const ca = a.channel(ROOM);
  const caJoin = await joinOk(ca);
  assert.ok(Array.isArray(caJoin.messages));
  await pushOk(ca, "typing", {});
  assert.equal((await pushError(ca, "new_message", { body: "to the blocked" })).reason, "you have blocked this user");
  await bTyping.none(() => true, "typing from the blocker");
  assert.ok(bDiffs.items.every((d) => !("1" in d.joins)), `presence of the blocker leaked: ${JSON.stringify(bDiffs.items)}`);
  const b2 = await ctx.connect(2, { name: "Bob 2" });
  const states = new Collector("bob 2 presence_state");
  const cb2 = b2.channel(ROOM);
  cb2.on("presence_state", (s) => states.push(s));
  await joinOk(cb2);
  const st = await states.waitFor(() => true, "presence_state");
  assert.ok(!("1" in st), `presence_state lists the blocker: ${JSON.stringify(st)}`);

  // Bad input.
  assert.equal((await pushError(lobbyA, "block", { user_id: "1" })).reason, "user_id must be a valid user id other than your own");
  assert.equal((await pushError(lobbyA, "block", {})).reason, "user_id must be a valid user id other than your own");
  assert.equal((await pushError(ca, "block", { user_id: "2" })).reason, "unknown event");

  await pushOk(lobbyA, "unblock", { user_id: "2" });
  const back = await pushOk(cb, "new_message", { body: "friends again" });
  assert.equal(back.body, "friends again");
  const lobby3 = await joinOk((await ctx.connect(1)).channel("user:1"));
  assert.equal(lobby3.unread.length, 1, `unread after unblock: ${JSON.stringify(lobby3)}`);

  // The host app blocks and unblocks through the API too.
  assert.equal((await api(ctx.server, "PUT", "/api/v1/users/1/blocks/2")).status, 200);
  assert.equal((await pushError(cb, "new_message", { body: "again?" })).reason, "blocked by the recipient");
  assert.equal((await api(ctx.server, "DELETE", "/api/v1/users/1/blocks/2")).status, 200);
  await pushOk(cb, "new_message", { body: "ok again" });
});

// ---------------------------------------------------------------- grants

bothStores("granted policy: a valid grant opens the chat for both sides; missing, forged, expired or mismatched grants are refused", { env: { ...ENV, ELCHAT_CHAT_POLICY: "granted" } }, async (ctx) => {
  const a = await ctx.connect(1, { name: "Alice" });
  const good = await grant(ctx.server, 1, 2, "1h");
  const reason = async (params) => (await joinError(a.channel(ROOM, params))).reason;
  assert.equal(await reason({}), "grant required");
  assert.equal(await reason({ grant: resignJwt(good, "some-other-secret-0123456789") }), "grant has an invalid signature");
  assert.equal(await reason({ grant: resignJwt(good, ctx.server.secret, (c) => ({ ...c, exp: Math.floor(Date.now() / 1000) - 60 })) }), "grant expired");
  assert.equal(await reason({ grant: await grant(ctx.server, 1, 3, "1h") }), "grant is for another chat");
  assert.equal(await reason({ grant: await grant(ctx.server, 2, 1, "1h") }), "grant is for another chat");
  assert.equal(await reason({ grant: "not-a-jwt" }), "grant is malformed");

  // Bob cannot open it first without a grant.
  const b = await ctx.connect(2, { name: "Bob" });
  assert.equal((await joinError(b.channel(ROOM))).reason, "grant required");

  const ca = a.channel(ROOM, { grant: good });
  await joinOk(ca);
  await pushOk(ca, "new_message", { body: "hello bob" });
  // Now Bob answers without a grant, and Alice rejoins without one.
  const cb = b.channel(ROOM);
  const hist = await joinOk(cb);
  assert.equal(hist.messages[0].body, "hello bob");
  await pushOk(cb, "new_message", { body: "hi alice" });
  await joinOk((await ctx.connect(1)).channel(ROOM));
  // Lobbies need no grant; a grant is not a socket token.
  await joinOk(a.channel("user:1"));
  const res = await new Promise((resolve) => {
    const { WS } = require("./helpers");
    const ws = new WS(ctx.server.wsUrl({ token: good, vsn: "2.0.0" }));
    ws.on("unexpected-response", (_req, r) => resolve(r.statusCode));
    ws.on("open", () => resolve(101));
    ws.on("error", () => {});
  });
  assert.equal(res, 403, "a chat grant must not open a socket");
});

// ---------------------------------------------------------------- bans

bothStores("a ban through the API closes the user's sockets with 4003 and refuses reconnects until it ends", { timeout: 60000, env: ENV }, async (ctx) => {
  const m = await ctx.connect(9, { name: "Mallory", socketOpts: { reconnectAfterMs: () => 200 } });
  const other = await ctx.connect(2);
  const until = new Date(Date.now() + 4000).toISOString();
  const res = await api(ctx.server, "PUT", "/api/v1/users/9/ban", { until, reason: "spam" });
  assert.equal(res.status, 200, res.text);
  const close = await m.closes.waitFor(() => true, "mallory's socket closed");
  assert.equal(close.code, 4003, JSON.stringify(close));
  assert.equal(close.reason, "banned: spam");
  // phoenix.js reconnects (4003 is not 1000) and is refused until the ban ends.
  const opensBefore = m.opens.items.length;
  await sleep(1000);
  assert.equal(m.opens.items.length, opensBefore, "a banned user must not reconnect");
  assert.ok(other.isConnected(), "other users stay connected");
  await m.opens.waitCount(opensBefore + 1, () => true, "reconnect once the ban ended", 10000);
  // A ban for good, then lifted.
  assert.equal((await api(ctx.server, "PUT", "/api/v1/users/9/ban", {})).status, 200);
  await m.closes.waitCount(2, () => true, "closed again");
  assert.equal((await api(ctx.server, "DELETE", "/api/v1/users/9/ban")).status, 200);
  await m.opens.waitCount(opensBefore + 2, () => true, "reconnect after unban", 10000);
  assert.equal((await api(ctx.server, "PUT", "/api/v1/users/9/ban", { until: "2001-01-01T00:00:00Z" })).status, 400);
});

// ---------------------------------------------------------------- two nodes

// Throwaway PostgreSQL and Redis for the cluster tests, started once.
let backends = null;
let starting = null;
function clusterBackends() {
  if (!starting) starting = startBackends();
  return starting;
}
async function startBackends() {
  const which = (b) => {
    try {
      return execFileSync("sh", ["-c", `command -v ${b}`]).toString().trim();
    } catch {
      return "";
    }
  };
  const initdb = which("initdb");
  const redisServer = which("redis-server");
  if (!initdb || !redisServer) return null;
  const postgres = path.join(path.dirname(fs.realpathSync(initdb)), "postgres");
  if (!fs.existsSync(postgres)) return null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-interop-cluster-"));
  const opts = {};
  if (process.getuid && process.getuid() === 0) {
    opts.uid = Number(execFileSync("id", ["-u", "postgres"]).toString());
    opts.gid = Number(execFileSync("id", ["-g", "postgres"]).toString());
    fs.chownSync(dir, opts.uid, opts.gid);
  }
  execFileSync(initdb, ["-D", path.join(dir, "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], { ...opts, cwd: dir, stdio: "ignore" });
  const pgPort = await freePort();
  const pg = spawn(postgres, ["-D", path.join(dir, "data"), "-p", String(pgPort), "-k", dir, "-c", "listen_addresses=127.0.0.1"], { ...opts, cwd: dir, stdio: "ignore" });
  const redisPort = await freePort();
  const redis = spawn(redisServer, ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  backends = { dir, pg, redis, bin: path.dirname(postgres), dbBase: `postgres://postgres@127.0.0.1:${pgPort}`, redisUrl: `redis://127.0.0.1:${redisPort}/0`, n: 0 };
  // Wait for PostgreSQL to accept connections (elchat migrate retries are not ours to rely on).
  const deadline = Date.now() + 30000;
  for (;;) {
    try {
      execFileSync(path.join(path.dirname(postgres), "pg_isready"), ["-h", "127.0.0.1", "-p", String(pgPort)], { stdio: "ignore" });
      break;
    } catch {
      if (Date.now() > deadline) throw new Error("throwaway PostgreSQL did not start");
      await sleep(100);
    }
  }
  return backends;
}
after(() => {
  if (!backends) return;
  backends.pg.kill("SIGQUIT");
  backends.redis.kill("SIGKILL");
  setTimeout(() => fs.rmSync(backends.dir, { recursive: true, force: true }), 500).unref();
});

// freshDatabase creates an empty database on the throwaway PostgreSQL.
async function freshDatabase() {
  const be = await clusterBackends();
  if (!be) return null;
  const db = `elchat_interop_${process.pid}_${++be.n}`;
  execFileSync(path.join(be.bin, "createdb"), ["-h", "127.0.0.1", "-p", new URL(be.dbBase).port, "-U", "postgres", db]);
  return `${be.dbBase}/${db}`;
}

// twoNodes starts two nodes on one fresh database and one Redis.
async function twoNodes(ctx, env = {}) {
  const url = await freshDatabase();
  if (!url) return null;
  const db = new URL(url).pathname.slice(1);
  const secret = crypto.randomBytes(24).toString("hex");
  const nodeEnv = { ...ENV, ELCHAT_DATABASE_URL: url, ELCHAT_REDIS_URL: backends.redisUrl, ELCHAT_REDIS_PREFIX: `${db}:`, ELCHAT_MIGRATE: "true", ...env };
  const n1 = await ctx.startServer({ secret, env: nodeEnv });
  const n2 = await ctx.startServer({ secret, env: nodeEnv });
  return [n1, n2];
}

serverTest("two nodes: a block applies on the other node at once, a ban closes sockets on every node, and the cursor catches up across nodes", { noServer: true, timeout: 90000 }, async (ctx) => {
  const nodes = await twoNodes(ctx);
  if (!nodes) {
    process.stderr.write("skipping the cluster test: initdb or redis-server missing\n");
    return;
  }
  const [n1, n2] = nodes;
  const a = await ctx.connect(1, { name: "Alice", server: n1 });
  const b = await ctx.connect(2, { name: "Bob", server: n2 });
  const lobbyA = a.channel("user:1");
  await joinOk(lobbyA);
  const cb = b.channel(ROOM);
  await joinOk(cb);
  const m1 = await pushOk(cb, "new_message", { body: "before" });
  // Bob's node has Alice's blocks cached now; the block on node 1 must
  // reach it. The announcement travels through Redis pub/sub, so it lands
  // within the bus latency, not in the same instant.
  await pushOk(lobbyA, "block", { user_id: "2" });
  const settleTo = async (want, body) => {
    for (let i = 0; ; i++) {
      const r = await pushChannel(cb, "new_message", { body: `${body} ${i}` });
      if (r.status === want) return { tries: i + 1, ...r };
      assert.ok(i < 20, `node 2 still answers ${r.status} after ${i + 1} tries`);
      await sleep(50);
    }
  };
  const refused = await settleTo("error", "after the block");
  assert.equal(refused.response.reason, "blocked by the recipient");
  await pushOk(lobbyA, "unblock", { user_id: "2" });
  const m2 = (await settleTo("ok", "after the unblock")).response;

  // The cursor across nodes: Alice's cursor from node 1, changes on node 2.
  const ca = a.channel(ROOM);
  await joinOk(ca);
  const cursor = m2.seq;
  await pushOk(cb, "edit_message", { id: m2.id, body: `${m2.body} (edited)` });
  await pushOk(cb, "delete_message", { id: m1.id });
  const r = await joinOk(a.channel(ROOM, { since_seq: cursor }));
  assert.deepEqual(
    r.changes.map((c) => `${c.message.id}:${c.message.deleted ? "deleted" : c.message.body}`),
    [`${m2.id}:${m2.body} (edited)`, `${m1.id}:deleted`]
  );

  // A ban closes Bob's sockets on both nodes.
  const b1 = await ctx.connect(2, { name: "Bob on node 1", server: n1 });
  assert.equal((await api(n1, "PUT", "/api/v1/users/2/ban", { until: new Date(Date.now() + 60000).toISOString() })).status, 200);
  for (const s of [b, b1]) {
    const close = await s.closes.waitFor(() => true, "bob closed");
    assert.equal(close.code, 4003);
  }
  const opens = b.opens.items.length;
  await sleep(800);
  assert.equal(b.opens.items.length, opens, "refused on the other node too");
  assert.equal((await api(n2, "DELETE", "/api/v1/users/2/ban")).status, 200);
  await b.opens.waitCount(opens + 1, () => true, "bob reconnects after the unban", 10000);
});
