"use strict";
// Shared helpers for the ElChat interop tests.
//
// Every test gets its own throwaway server (fresh data dir, random secret,
// free port) through `serverTest`, and every wait is bounded by a timeout so
// a broken server fails a test within seconds instead of hanging the suite.

const { test, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, execFile } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const WS = require("ws");
const { Socket, Presence, LongPoll } = require("phoenix");

const REPO_ROOT = path.resolve(__dirname, "..", "..");
const ELCHAT_BIN = path.resolve(REPO_ROOT, process.env.ELCHAT_BIN || "bin/elchat");

// Default time a single wait may take. Generous for a 2-core CI box but far
// below the per-test timeout, so waits fail first with a precise message.
const WAIT_MS = Number(process.env.ELCHAT_INTEROP_WAIT_MS || 5000);
// Time during which "nothing must arrive" assertions listen.
const QUIET_MS = 500;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// withTimeout rejects with a descriptive error if `promise` does not settle in ms.
function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms}ms: ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// freePort returns a loopback port nothing listens on now, chosen below the
// kernel's ephemeral range: a port from that range (what listen(0) hands
// out) can be taken by any outgoing connection of the tests around us before
// the server we start binds it.
function ephemeralLow() {
  try {
    const n = Number(fs.readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(n) ? n : 32768;
  } catch {
    return 32768;
  }
}

function listenOn(port) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(port, "127.0.0.1", () => {
      const got = srv.address().port;
      srv.close(() => resolve(got));
    });
  });
}

async function freePort() {
  const lo = 10000, hi = ephemeralLow();
  for (let i = 0; i < 200 && hi - lo >= 1000; i++) {
    try {
      return await listenOn(lo + Math.floor(Math.random() * (hi - lo)));
    } catch {}
  }
  return listenOn(0);
}

function httpGet(url, { timeout = 1000, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, timeout }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on("timeout", () => req.destroy(new Error("http timeout")));
    req.on("error", reject);
  });
}

// ---------------------------------------------------------------- server

// Environment passed to the server: the parent's environment minus every
// ELCHAT_* variable (so a developer's shell cannot leak a database URL in),
// plus ELCHAT_INTEROP_SERVER_<X>=v mapped to ELCHAT_<X>=v, which is how a run is
// "told otherwise" (e.g. ELCHAT_INTEROP_SERVER_DATABASE_URL to test PostgreSQL).
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("ELCHAT_")) continue;
    env[k] = v;
  }
  for (const [k, v] of Object.entries(process.env)) {
    const m = /^ELCHAT_INTEROP_SERVER_(.+)$/.exec(k);
    if (m) env[`ELCHAT_${m[1]}`] = v;
  }
  return env;
}

const liveServers = new Set();
process.on("exit", () => {
  for (const s of liveServers) {
    try {
      s.proc.kill("SIGKILL");
    } catch {}
  }
});

class Server {
  constructor({ port, dataDir, secret, env }) {
    this.port = port;
    this.dataDir = dataDir;
    this.secret = secret;
    this.extraEnv = env || {};
    this.logText = "";
    this.proc = null;
    this.exited = null; // Promise<{code, signal}>
    this.exitInfo = null;
    this.tokenCache = new Map();
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }
  get socketUrl() {
    return `ws://127.0.0.1:${this.port}/socket`;
  }
  get allowedOrigin() {
    return `http://localhost:${this.port}`;
  }
  // Raw websocket URL with query (vsn last, as phoenix.js builds it).
  wsUrl(query = {}) {
    const qs = new URLSearchParams(query).toString();
    return `ws://127.0.0.1:${this.port}/socket/websocket${qs ? "?" + qs : ""}`;
  }

  env() {
    const env = {
      ...baseEnv(),
      ELCHAT_ADDR: `127.0.0.1:${this.port}`,
      ELCHAT_SECRET: this.secret,
      ELCHAT_DATA_DIR: this.dataDir,
      ELCHAT_ALLOWED_ORIGINS: this.allowedOrigin,
      ...this.extraEnv,
    };
    // A --dev node refuses a real secret: it signs demo tokens with the
    // public development secret.
    if (env.ELCHAT_DEV === "true") delete env.ELCHAT_SECRET;
    return env;
  }

  async start() {
    if (!fs.existsSync(ELCHAT_BIN)) {
      throw new Error(`server binary ${ELCHAT_BIN} not found (build it with: go build -o bin/elchat ./cmd/elchat, or set ELCHAT_BIN)`);
    }
    this.logText += `--- start ${ELCHAT_BIN} serve on 127.0.0.1:${this.port} data=${this.dataDir}\n`;
    const proc = spawn(ELCHAT_BIN, ["serve"], { env: this.env(), stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    liveServers.add(this);
    const onData = (c) => {
      this.logText += c.toString("utf8");
      if (this.logText.length > 2_000_000) this.logText = this.logText.slice(-1_000_000);
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    this.exited = new Promise((resolve) => {
      proc.on("exit", (code, signal) => {
        this.exitInfo = { code, signal };
        this.logText += `--- exited code=${code} signal=${signal}\n`;
        liveServers.delete(this);
        resolve(this.exitInfo);
      });
      proc.on("error", (err) => {
        this.logText += `--- spawn error ${err}\n`;
        this.exitInfo = { code: -1, signal: null, error: err };
        liveServers.delete(this);
        resolve(this.exitInfo);
      });
    });
    const deadline = Date.now() + 15000;
    let lastErr = "";
    while (Date.now() < deadline) {
      if (this.exitInfo) {
        throw new Error(`server exited before becoming healthy (${JSON.stringify(this.exitInfo)})\n${this.log()}`);
      }
      try {
        const res = await httpGet(`${this.httpUrl}/healthz`, { timeout: 500 });
        if (res.status === 200) return this;
        lastErr = `GET /healthz -> ${res.status} ${res.body.slice(0, 200)}`;
      } catch (e) {
        lastErr = String(e.message || e);
      }
      await sleep(50);
    }
    throw new Error(`server did not answer GET /healthz with 200 within 15s (last: ${lastErr})\n${this.log()}`);
  }

  // stop sends `signal` and waits for the process to exit (SIGKILL after ms).
  async stop(signal = "SIGTERM", ms = 10000) {
    if (!this.proc || this.exitInfo) return this.exitInfo;
    this.proc.kill(signal);
    let timer;
    const killed = new Promise((resolve) => {
      timer = setTimeout(() => {
        this.logText += `--- did not exit within ${ms}ms after ${signal}, sending SIGKILL\n`;
        this.proc.kill("SIGKILL");
        resolve(null);
      }, ms);
    });
    const r = await Promise.race([this.exited, killed]);
    clearTimeout(timer);
    await this.exited;
    return r; // null when it had to be SIGKILLed
  }

  log() {
    const t = this.logText;
    return t.length > 20000 ? "...(truncated)...\n" + t.slice(-20000) : t;
  }

  // token runs `elchat token` and returns the token printed on stdout.
  async token(user, name = `user${user}`, { ttl, secret } = {}) {
    const key = `${user}\u0000${name}\u0000${ttl || ""}\u0000${secret || ""}`;
    if (this.tokenCache.has(key)) return this.tokenCache.get(key);
    const args = ["token", "--user", String(user), "--name", name];
    if (ttl) args.push("--ttl", ttl);
    const env = { ...baseEnv(), ELCHAT_SECRET: secret || this.secret, ELCHAT_DATA_DIR: this.dataDir };
    const out = await new Promise((resolve, reject) => {
      execFile(ELCHAT_BIN, args, { env, timeout: 10000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`elchat ${args.join(" ")} failed: ${err.message}\nstderr: ${stderr}`));
        else resolve({ stdout, stderr });
      });
    });
    const tok = out.stdout.trim();
    assert.ok(tok.length > 0, `elchat token printed nothing on stdout (stderr: ${out.stderr})`);
    assert.ok(!/\s/.test(tok), `elchat token must print the token alone on stdout, got ${JSON.stringify(out.stdout)}`);
    this.tokenCache.set(key, tok);
    return tok;
  }
}

// ---------------------------------------------------------------- JWT

function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, "+").replace(/_/g, "/"), "base64");
}
function b64urlEncode(buf) {
  return Buffer.from(buf).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}
function decodeJwt(token) {
  const parts = token.split(".");
  assert.equal(parts.length, 3, `token is not a JWT (3 dot-separated parts): ${token}`);
  return { header: JSON.parse(b64urlDecode(parts[0])), claims: JSON.parse(b64urlDecode(parts[1])), parts };
}
// resignJwt re-encodes `token` with `mutate(claims)` applied and signs it with
// HMAC using `secret` (the alg of the original header, HS256/384/512).
function resignJwt(token, secret, mutate = (c) => c) {
  const { header, claims } = decodeJwt(token);
  const hashes = { HS256: "sha256", HS384: "sha384", HS512: "sha512" };
  const hash = hashes[header.alg];
  assert.ok(hash, `token alg ${header.alg} is not an HMAC alg; cannot re-sign`);
  const h = b64urlEncode(JSON.stringify(header));
  const p = b64urlEncode(JSON.stringify(mutate({ ...claims })));
  const sig = b64urlEncode(crypto.createHmac(hash, secret).update(`${h}.${p}`).digest());
  return `${h}.${p}.${sig}`;
}

// ---------------------------------------------------------------- raw websocket

// RawClient is a bare `ws` connection for protocol-level checks.
class RawClient {
  constructor(ws) {
    this.ws = ws;
    this.frames = []; // {json} | {text} | {binary}
    this.waiters = [];
    this.closeInfo = null;
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        this.closeInfo = { code, reason: reason.toString("utf8") };
        resolve(this.closeInfo);
        this._notify();
      });
    });
    ws.on("error", (e) => {
      this.error = e;
    });
    ws.on("message", (data, isBinary) => {
      let f;
      if (isBinary) f = { binary: Buffer.from(data) };
      else {
        const text = data.toString("utf8");
        try {
          f = { json: JSON.parse(text), text };
        } catch {
          f = { text };
        }
      }
      this.frames.push(f);
      this._notify();
    });
  }

  static open(url, { protocols, origin, headers, maxPayload } = {}) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const ws = new WS(url, protocols, { origin, headers, maxPayload });
        const client = new RawClient(ws);
        ws.once("open", () => resolve(client));
        ws.once("unexpected-response", (_req, res) => {
          reject(new Error(`handshake rejected with HTTP ${res.statusCode}`));
          res.resume();
          ws.terminate();
        });
        ws.once("error", (e) => reject(e));
      }),
      WAIT_MS,
      `raw websocket open ${url}`
    );
  }

  // handshakeStatus resolves to the HTTP status of a failed handshake, or 101
  // when the upgrade succeeded (the connection is then closed again).
  static handshakeStatus(url, { protocols, origin, headers } = {}) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const ws = new WS(url, protocols, { origin, headers });
        ws.once("open", () => {
          resolve(101);
          ws.terminate();
        });
        ws.once("unexpected-response", (_req, res) => {
          resolve(res.statusCode);
          res.resume();
          ws.terminate();
        });
        ws.once("error", (e) => reject(e));
      }),
      WAIT_MS,
      `websocket handshake ${url}`
    );
  }

  send(frame) {
    this.ws.send(typeof frame === "string" || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame));
  }

  _notify() {
    for (const w of [...this.waiters]) w();
  }

  // waitFor resolves with the first frame (from the start) matching pred.
  waitFor(pred, what, ms = WAIT_MS) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const check = () => {
          const f = this.frames.find(pred);
          if (f) {
            this.waiters = this.waiters.filter((w) => w !== check);
            resolve(f);
          } else if (this.closeInfo) {
            this.waiters = this.waiters.filter((w) => w !== check);
            reject(new Error(`connection closed (${JSON.stringify(this.closeInfo)}) while waiting for ${what}; frames: ${this.dump()}`));
          }
        };
        this.waiters.push(check);
        check();
      }),
      ms,
      `${what}; frames so far: ${this.dump()}`
    );
  }

  // waitReply waits for the phx_reply with the given ref.
  waitReply(ref, ms = WAIT_MS) {
    return this.waitFor((f) => f.json && Array.isArray(f.json) && f.json[1] === ref && f.json[3] === "phx_reply", `phx_reply ref=${ref}`, ms).then((f) => f.json);
  }

  dump() {
    return JSON.stringify(this.frames.slice(-20).map((f) => f.text ?? `<binary ${f.binary.length}B>`));
  }

  close() {
    try {
      this.ws.terminate();
    } catch {}
  }
}

// ---------------------------------------------------------------- phoenix

// Collector records every payload of some events on a channel (or every
// message of a socket) so tests can wait for and assert on them later.
class Collector {
  constructor(label) {
    this.label = label;
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) w();
  }
  // waitFor resolves with the first recorded item (past or future) matching pred.
  waitFor(pred = () => true, what = "item", ms = WAIT_MS) {
    return withTimeout(
      new Promise((resolve) => {
        const check = () => {
          const it = this.items.find(pred);
          if (it !== undefined) {
            this.waiters = this.waiters.filter((w) => w !== check);
            resolve(it);
          }
        };
        this.waiters.push(check);
        check();
      }),
      ms,
      `${this.label}: ${what}; got ${JSON.stringify(this.items).slice(0, 2000)}`
    );
  }
  // waitCount resolves when at least n items match pred.
  waitCount(n, pred = () => true, what = `${n} items`, ms = WAIT_MS) {
    return withTimeout(
      new Promise((resolve) => {
        const check = () => {
          const got = this.items.filter(pred);
          if (got.length >= n) {
            this.waiters = this.waiters.filter((w) => w !== check);
            resolve(got);
          }
        };
        this.waiters.push(check);
        check();
      }),
      ms,
      `${this.label}: ${what}; got ${JSON.stringify(this.items).slice(0, 2000)}`
    );
  }
  // none asserts that no item matching pred is (or gets) recorded within ms.
  async none(pred = () => true, what = "unexpected item", ms = QUIET_MS) {
    await sleep(ms);
    const bad = this.items.filter(pred);
    assert.equal(bad.length, 0, `${this.label}: expected no ${what} but got ${JSON.stringify(bad).slice(0, 2000)}`);
  }
  filter(pred) {
    return this.items.filter(pred);
  }
}

function collect(channel, event) {
  const c = new Collector(`${channel.topic} ${event}`);
  channel.on(event, (payload) => c.push(payload));
  return c;
}

// joinChannel joins and resolves {status, response}; status is "ok", "error"
// or "timeout". It resolves on the first outcome only.
function joinChannel(channel, ms = WAIT_MS) {
  return withTimeout(
    new Promise((resolve) => {
      channel
        .join(ms)
        .receive("ok", (response) => resolve({ status: "ok", response }))
        .receive("error", (response) => resolve({ status: "error", response }))
        .receive("timeout", () => resolve({ status: "timeout" }));
    }),
    ms + 1000,
    `join ${channel.topic}`
  );
}

async function joinOk(channel, ms) {
  const r = await joinChannel(channel, ms);
  assert.equal(r.status, "ok", `join ${channel.topic} expected ok, got ${r.status} ${JSON.stringify(r.response)}`);
  return r.response;
}

// joinError expects an error reply and then leaves the channel so phoenix.js
// stops retrying the join.
async function joinError(channel, ms) {
  const r = await joinChannel(channel, ms);
  channel.leave();
  assert.equal(r.status, "error", `join ${channel.topic} expected error, got ${r.status} ${JSON.stringify(r.response)}`);
  return r.response;
}

function pushChannel(channel, event, payload, ms = WAIT_MS) {
  return withTimeout(
    new Promise((resolve) => {
      channel
        .push(event, payload, ms)
        .receive("ok", (response) => resolve({ status: "ok", response }))
        .receive("error", (response) => resolve({ status: "error", response }))
        .receive("timeout", () => resolve({ status: "timeout" }));
    }),
    ms + 1000,
    `push ${event} on ${channel.topic}`
  );
}

async function pushOk(channel, event, payload, ms) {
  const r = await pushChannel(channel, event, payload, ms);
  assert.equal(r.status, "ok", `push ${event} ${JSON.stringify(payload).slice(0, 200)} expected ok, got ${r.status} ${JSON.stringify(r.response)}`);
  return r.response;
}

async function pushError(channel, event, payload, ms) {
  const r = await pushChannel(channel, event, payload, ms);
  assert.equal(r.status, "error", `push ${event} ${JSON.stringify(payload).slice(0, 200)} expected error, got ${r.status} ${JSON.stringify(r.response)}`);
  return r.response;
}

function leaveChannel(channel, ms = WAIT_MS) {
  return withTimeout(
    new Promise((resolve) => {
      channel
        .leave(ms)
        .receive("ok", () => resolve("ok"))
        .receive("timeout", () => resolve("timeout"));
    }),
    ms + 1000,
    `leave ${channel.topic}`
  );
}

function chatTopic(a, b) {
  const [x, y] = [String(a), String(b)];
  const num = /^[0-9]+$/;
  let first;
  if (num.test(x) && num.test(y)) first = BigInt(x) <= BigInt(y);
  else first = Buffer.compare(Buffer.from(x), Buffer.from(y)) <= 0;
  return first ? `chat:${x}:${y}` : `chat:${y}:${x}`;
}

// ---------------------------------------------------------------- test context

class Ctx {
  constructor(name) {
    this.name = name;
    this.servers = [];
    this.sockets = [];
    this.raws = [];
    this.server = null;
    this.seq = 0;
  }

  async startServer(opts = {}) {
    const port = opts.port || (await freePort());
    const dataDir = opts.dataDir || fs.mkdtempSync(path.join(os.tmpdir(), "elchat-interop-"));
    const secret = opts.secret || crypto.randomBytes(24).toString("hex");
    const s = new Server({ port, dataDir, secret, env: opts.env });
    this.servers.push(s);
    await s.start();
    return s;
  }

  // connect opens a phoenix.js Socket for `user` (token via params, or via
  // the authToken subprotocol when opts.authToken) and waits until it is open.
  async connect(user, { name, server = this.server, authToken = false, socketOpts = {}, token } = {}) {
    const tok = token || (await server.token(user, name || `user${user}`));
    const opts = {
      transport: WS,
      reconnectAfterMs: () => 200,
      rejoinAfterMs: () => 500,
      ...socketOpts,
    };
    if (authToken) opts.authToken = tok;
    else opts.params = { token: tok };
    const socket = new Socket(socketOpts.endPoint || server.socketUrl, opts);
    const messages = new Collector(`socket(user ${user}) messages`);
    const closes = new Collector(`socket(user ${user}) closes`);
    const opens = new Collector(`socket(user ${user}) opens`);
    socket.onMessage((m) => messages.push(m));
    socket.onClose((e) => closes.push({ code: e && e.code, reason: e && e.reason && String(e.reason) }));
    socket.onOpen(() => opens.push(Date.now()));
    socket.messages = messages;
    socket.closes = closes;
    socket.opens = opens;
    socket.user = String(user);
    this.sockets.push(socket);
    socket.connect();
    await opens.waitFor(() => true, `socket for user ${user} to open`);
    return socket;
  }

  raw(url, opts) {
    return RawClient.open(url, opts).then((c) => {
      this.raws.push(c);
      return c;
    });
  }

  // uniqueBody gives message bodies/client ids unique within the test.
  uid(prefix = "c") {
    this.seq += 1;
    return `${prefix}-${process.pid}-${this.seq}-${crypto.randomBytes(3).toString("hex")}`;
  }

  async cleanup() {
    for (const s of this.sockets) {
      try {
        s.disconnect();
      } catch {}
    }
    for (const r of this.raws) r.close();
    await Promise.all(this.servers.map((s) => s.stop("SIGKILL", 3000).catch(() => {})));
    for (const s of this.servers) {
      try {
        fs.rmSync(s.dataDir, { recursive: true, force: true });
      } catch {}
    }
  }

  logs() {
    return this.servers.map((s, i) => `=== server #${i} (port ${s.port}) log ===\n${s.log()}`).join("\n");
  }
}

const liveCtx = new Set();
after(async () => {
  for (const c of liveCtx) await c.cleanup();
});

// serverTest runs fn(ctx) with a fresh server in ctx.server. On failure the
// server logs are printed and appended to the error.
function serverTest(name, opts, fn) {
  if (typeof opts === "function") {
    fn = opts;
    opts = {};
  }
  test(name, { timeout: opts.timeout || 30000 }, async () => {
    const ctx = new Ctx(name);
    liveCtx.add(ctx);
    try {
      if (!opts.noServer) ctx.server = await ctx.startServer(opts);
      await fn(ctx);
    } catch (e) {
      const logs = ctx.logs();
      process.stderr.write(`\n### FAILED: ${name}\n${e && e.stack}\n${logs}\n`);
      if (e && typeof e.message === "string") {
        try {
          e.message += `\n${logs}`;
        } catch {}
      }
      throw e;
    } finally {
      liveCtx.delete(ctx);
      await ctx.cleanup();
    }
  });
}

// assertMessage checks the documented message object shape.
function assertMessage(m, expect = {}) {
  assert.ok(m && typeof m === "object", `message must be an object, got ${JSON.stringify(m)}`);
  assert.ok(Number.isInteger(m.id) && m.id > 0, `message.id must be a positive integer: ${JSON.stringify(m)}`);
  for (const k of ["room", "user_id", "opponent_id", "body", "client_id", "sent_at"]) {
    assert.equal(typeof m[k], "string", `message.${k} must be a string: ${JSON.stringify(m)}`);
  }
  assert.equal(typeof m.is_delivered, "boolean", `message.is_delivered must be a boolean: ${JSON.stringify(m)}`);
  assert.match(m.sent_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, `message.sent_at must be RFC 3339 UTC: ${m.sent_at}`);
  assert.ok(Math.abs(Date.parse(m.sent_at) - Date.now()) < 10 * 60 * 1000, `message.sent_at ${m.sent_at} is not close to now`);
  for (const [k, v] of Object.entries(expect)) {
    assert.deepEqual(m[k], v, `message.${k}: ${JSON.stringify(m)}`);
  }
}

module.exports = {
  REPO_ROOT,
  ELCHAT_BIN,
  WAIT_MS,
  QUIET_MS,
  WS,
  Socket,
  Presence,
  LongPoll,
  sleep,
  withTimeout,
  freePort,
  httpGet,
  Server,
  RawClient,
  Collector,
  collect,
  joinChannel,
  joinOk,
  joinError,
  pushChannel,
  pushOk,
  pushError,
  leaveChannel,
  chatTopic,
  decodeJwt,
  resignJwt,
  serverTest,
  assertMessage,
};
