"use strict";
// phoenix.js's LongPoll transport (transport: LongPoll; under Node it uses
// fetch) against one node: the seed's full story, a long-poll user and a
// WebSocket user chatting, and the refusals of bad long-poll input.
const assert = require("node:assert/strict");
const { serverTest, joinOk, pushOk, collect, chatTopic, sleep, httpGet, WAIT_MS } = require("./helpers");
const { LongPoll } = require("phoenix");
const { story } = require("./story");

const lp = { transport: LongPoll, longpollerTimeout: 20000 };

// connectLP opens a phoenix.js socket over LongPoll and checks it is one.
async function connectLP(ctx, user, opts = {}) {
  const s = await ctx.connect(user, { ...opts, socketOpts: { ...lp, ...(opts.socketOpts || {}) } });
  assert.ok(s.conn instanceof LongPoll, "the socket runs over LongPoll");
  return s;
}

serverTest("longpoll: the seed's story with transport: LongPoll on one node", { timeout: 90000 }, async (ctx) => {
  await story((user, opts) => connectLP(ctx, user, opts));
  const m = await httpGet(`${ctx.server.httpUrl}/metrics`);
  assert.match(m.body, /^elchat_longpoll_sessions [1-9]/m, "the sessions are long-poll sessions of this node");
});

serverTest("longpoll: a long-poll user and a WebSocket user chat", { timeout: 60000 }, async (ctx) => {
  const room = chatTopic(1, 2);
  const alice = await connectLP(ctx, 1, { name: "Alice" });
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

// ---------------------------------------------------------------- bad input

// lpFetch sends one long-poll request as phoenix.js 1.8 builds it: the
// user's params, vsn, then the session token as a second ?token=.
async function lpFetch(server, method, { jwt, session, headers = {}, body, vsn = "2.0.0" } = {}) {
  const q = new URLSearchParams();
  if (jwt) q.append("token", jwt);
  q.append("vsn", vsn);
  if (session) q.append("token", session);
  const res = await fetch(`${server.httpUrl}/socket/longpoll?${q}`, {
    method,
    headers: { Accept: "application/json", ...(body !== undefined ? { "Content-Type": "application/x-ndjson" } : {}), ...headers },
    body,
    signal: AbortSignal.timeout(WAIT_MS + 12000),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { http: res.status, json, text };
}

// openSession opens a session for user and joins its lobby; it returns
// the session token.
async function openSession(server, user) {
  const jwt = await server.token(user);
  const o = await lpFetch(server, "GET", { jwt });
  assert.equal(o.json && o.json.status, 410, `open answers 410 with a token: ${o.text}`);
  assert.equal(o.http, 200);
  assert.match(o.json.token, /^lp1\./);
  const join = JSON.stringify(["1", "1", `user:${user}`, "phx_join", {}]);
  const p = await lpFetch(server, "POST", { jwt, session: o.json.token, body: join });
  assert.deepEqual(p.json, { status: 200 });
  const r = await pollUntil(server, jwt, o.json.token, (m) => m[1] === "1" && m[3] === "phx_reply");
  assert.equal(r[4].status, "ok", JSON.stringify(r));
  return { jwt, session: o.json.token };
}

// pollUntil polls until a message matching pred arrives.
async function pollUntil(server, jwt, session, pred) {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    const r = await lpFetch(server, "GET", { jwt, session });
    assert.ok([200, 204].includes(r.json && r.json.status), `poll: ${r.text}`);
    for (const m of r.json.messages.map((s) => JSON.parse(s))) if (pred(m)) return m;
  }
  throw new Error("no matching message");
}

// heartbeatWorks checks a session still answers: POST a heartbeat, poll its reply.
async function heartbeatWorks(server, { jwt, session }, ref) {
  const p = await lpFetch(server, "POST", { jwt, session, body: JSON.stringify([null, ref, "phoenix", "heartbeat", {}]) });
  assert.deepEqual(p.json, { status: 200 }, p.text);
  await pollUntil(server, jwt, session, (m) => m[1] === ref && m[3] === "phx_reply");
}

serverTest("longpoll: bad input gets clear statuses and disturbs nothing else", { timeout: 90000 }, async (ctx) => {
  const s = ctx.server;
  const bystander = await openSession(s, 9);

  // Opens are authorized as upgrades are.
  const forgedJwt = await s.token(1, "x", { secret: s.secret + "x" });
  let r = await lpFetch(s, "GET", { jwt: forgedJwt });
  assert.equal(r.http, 403);
  assert.equal(r.json.status, 403);
  r = await lpFetch(s, "GET", {});
  assert.equal(r.json.status, 403, "no token");
  r = await lpFetch(s, "GET", { jwt: await s.token(1), vsn: "1.0.0" });
  assert.equal(r.json.status, 403, "vsn 1");
  r = await lpFetch(s, "GET", { jwt: await s.token(1), headers: { Origin: "http://evil.example" } });
  assert.equal(r.json.status, 403, "foreign origin");
  // The host-app token may come in phoenix.js's authToken header instead.
  r = await lpFetch(s, "GET", { headers: { "X-Phoenix-AuthToken": await s.token(1) } });
  assert.equal(r.json.status, 410);

  const alice = await openSession(s, 1);

  // A forged session token: 403. One whose signature was kept but whose
  // payload was changed (another user): 403 too.
  const [, payload, sig] = alice.session.split(".");
  const other = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload, "base64url")), u: "2" })).toString("base64url");
  for (const forged of [`lp1.${other}.${sig}`, `lp1.${payload}.${sig.slice(0, -2)}AA`, "lp1.garbage"]) {
    r = await lpFetch(s, "GET", { session: forged });
    assert.equal(r.http, 403, forged);
    assert.equal(r.json.status, 403);
    r = await lpFetch(s, "POST", { session: forged, body: "[]" });
    assert.equal(r.json.status, 403);
  }
  // A poll and a post for alice's session with bob's token: 403.
  const bobJwt = await s.token(2);
  r = await lpFetch(s, "GET", { jwt: bobJwt, session: alice.session });
  assert.equal(r.json.status, 403, `another user's session: ${r.text}`);
  r = await lpFetch(s, "POST", { jwt: bobJwt, session: alice.session, body: JSON.stringify([null, "x", "phoenix", "heartbeat", {}]) });
  assert.equal(r.json.status, 403);
  await heartbeatWorks(s, alice, "hb-1");

  // More than 100 frames: refused whole (400), the session goes on.
  const frames = Array.from({ length: 101 }, (_, i) => JSON.stringify([null, `f${i}`, "phoenix", "heartbeat", {}])).join("\n");
  r = await lpFetch(s, "POST", { ...alice, body: frames });
  assert.equal(r.http, 400);
  assert.equal(r.json.status, 400);
  assert.match(r.json.reason, /more than 100 frames/);
  await heartbeatWorks(s, alice, "hb-2");

  // Malformed ndjson: 400 and the session ends (as a socket closes 1007);
  // its next poll says 410, on which phoenix.js reconnects.
  r = await lpFetch(s, "POST", { ...alice, body: `${JSON.stringify([null, "ok", "phoenix", "heartbeat", {}])}\n[1, "x"` });
  assert.equal(r.json.status, 400);
  assert.match(r.json.reason, /malformed ndjson: line 2/);
  r = await lpFetch(s, "GET", alice);
  assert.equal(r.json.status, 410);

  // A POST over the body limit: 413, the session ends.
  const carol = await openSession(s, 3);
  r = await lpFetch(s, "POST", { ...carol, body: "[" + " ".repeat(1 << 20) + "]" });
  assert.equal(r.http, 413);
  assert.equal(r.json.status, 413);
  r = await lpFetch(s, "GET", carol);
  assert.equal(r.json.status, 410);

  // Expired session tokens: the session ends with the user's token, and
  // the token is then refused on any node without looking further.
  const shortJwt = await s.token(4, "dave", { ttl: "2s" });
  const o = await lpFetch(s, "GET", { jwt: shortJwt });
  assert.equal(o.json.status, 410);
  await sleep(3100);
  r = await lpFetch(s, "GET", { session: o.json.token });
  assert.equal(r.json.status, 410, "expired session token");
  assert.match(r.json.reason, /expired|closed/);

  // Unknown sessions and methods.
  r = await lpFetch(s, "POST", { body: "[]" });
  assert.equal(r.json.status, 410, "POST without a session");
  r = await lpFetch(s, "PUT", { body: "[]" });
  assert.equal(r.http, 405);

  // Through all this the bystander's session was never disturbed.
  await heartbeatWorks(s, bystander, "hb-bystander");
});

serverTest("longpoll: a poll held past the handshake timeout is answered (204) and the session goes on", { timeout: 30000, env: { ELCHAT_HANDSHAKE_TIMEOUT: "1s", ELCHAT_LONGPOLL_WINDOW: "2s", ELCHAT_LONGPOLL_TIMEOUT: "4s" } }, async (ctx) => {
  const s = ctx.server;
  const a = await openSession(s, 1);
  const t0 = Date.now();
  const r = await lpFetch(s, "GET", a);
  assert.equal(r.json && r.json.status, 204, r.text);
  assert.ok(Date.now() - t0 >= 1900, "held for the window");
  await heartbeatWorks(s, a, "after-window");
  // An abandoned session expires: no poll for the session timeout.
  await sleep(5500);
  const g = await lpFetch(s, "GET", a);
  assert.equal(g.json.status, 410, "abandoned session expired");
});

serverTest("longpoll: SIGTERM answers held polls at once, so clients reconnect elsewhere", { timeout: 30000 }, async (ctx) => {
  const s = ctx.server;
  const raw = await openSession(s, 1);
  const lpSocket = await connectLP(ctx, 2);
  await joinOk(lpSocket.channel("user:2"));
  const t0 = Date.now();
  const held = lpFetch(s, "GET", raw);
  await sleep(300);
  s.proc.kill("SIGTERM");
  const r = await held;
  assert.equal(r.json && r.json.status, 410, `held poll on drain: ${r.text}`);
  await lpSocket.closes.waitFor(() => true, "phoenix.js's LongPoll to see its session end");
  assert.ok(Date.now() - t0 < 4000, `answered after ${Date.now() - t0}ms, not after the drain timeout`);
  await s.exited;
});

serverTest("longpoll: phoenix.js's authToken option (X-Phoenix-AuthToken header) and CORS for allowed origins only", { timeout: 30000 }, async (ctx) => {
  const s = ctx.server;
  const alice = await connectLP(ctx, 1, { authToken: true });
  const bob = await ctx.connect(2);
  const room = chatTopic(1, 2);
  const aChat = alice.channel(room);
  const bChat = bob.channel(room);
  const bMsgs = collect(bChat, "new_message");
  await joinOk(aChat);
  await joinOk(bChat);
  const m = await pushOk(aChat, "new_message", { body: "token in a header", client_id: ctx.uid() });
  await bMsgs.waitFor((x) => x.id === m.id, "bob gets it");

  // Preflight: the allowed origin is echoed, a foreign one is not.
  const pre = async (origin) =>
    fetch(`${s.httpUrl}/socket/longpoll?vsn=2.0.0`, {
      method: "OPTIONS",
      headers: { Origin: origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-phoenix-authtoken" },
    });
  const ok = await pre(s.allowedOrigin);
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("access-control-allow-origin"), s.allowedOrigin);
  assert.match(ok.headers.get("access-control-allow-headers"), /x-phoenix-authtoken/);
  const bad = await pre("http://evil.example");
  assert.equal(bad.headers.get("access-control-allow-origin"), null, "a foreign origin may not read the answers");
});
