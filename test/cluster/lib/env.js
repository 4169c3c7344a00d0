"use strict";
// Throwaway infrastructure for the ElChat cluster tests: a real Redis, a real
// PostgreSQL, N real `elchat serve` nodes and a real nginx in front of them,
// all on free 127.0.0.1 ports, all killed when the test process ends.
//
// It builds on test/interop/helpers.js (Server, Collector, joinOk, ...): that
// file resolves `ws` and `phoenix` from test/interop/node_modules, so this
// directory needs no node_modules of its own.
//
// ELCHAT_TEST_REDIS_URL / ELCHAT_TEST_DATABASE_URL point at existing servers
// instead (fault tests that stop/start the server then skip, they need to own
// the process).

const assert = require("node:assert/strict");
const { spawn, execFile, execFileSync } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const H = require("../../interop/helpers");

const { sleep, withTimeout, freePort, httpGet, Collector, Socket, Presence, WS } = H;
const REPO_ROOT = H.REPO_ROOT;
const WAIT_MS = Number(process.env.ELCHAT_CLUSTER_WAIT_MS || 8000);

function which(cmd, extra = []) {
  for (const dir of [...(process.env.PATH || "").split(":"), ...extra]) {
    if (!dir) continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {}
  }
  return null;
}

function pgBin(name) {
  const root = "/usr/lib/postgresql";
  if (fs.existsSync(root)) {
    const vers = fs.readdirSync(root).sort((a, b) => Number(b) - Number(a));
    for (const v of vers) {
      const p = path.join(root, v, "bin", name);
      if (fs.existsSync(p)) return p;
    }
  }
  return which(name);
}

const REDIS_SERVER = which("redis-server", ["/usr/sbin", "/usr/local/bin"]);
const REDIS_CLI = which("redis-cli", ["/usr/local/bin"]);
const NGINX = which("nginx", ["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"]);
const INITDB = pgBin("initdb");
const POSTGRES = INITDB ? path.join(path.dirname(fs.realpathSync(INITDB)), "postgres") : null;
const PSQL = pgBin("psql");
const RUBY = which("ruby");

// Every process we spawn, killed on exit whatever happens.
const owned = new Set();
process.on("exit", () => {
  for (const p of owned) {
    try {
      process.kill(p.pid, "SIGKILL");
    } catch {}
  }
});

function spawnOwned(cmd, args, opts = {}) {
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
  owned.add(proc);
  let log = "";
  const onData = (c) => {
    log += c.toString("utf8");
    if (log.length > 200000) log = log.slice(-100000);
  };
  proc.stdout && proc.stdout.on("data", onData);
  proc.stderr && proc.stderr.on("data", onData);
  proc.exitInfo = null;
  proc.exited = new Promise((resolve) => {
    proc.on("exit", (code, signal) => {
      proc.exitInfo = { code, signal };
      owned.delete(proc);
      resolve(proc.exitInfo);
    });
    proc.on("error", (err) => {
      proc.exitInfo = { code: -1, error: String(err) };
      owned.delete(proc);
      resolve(proc.exitInfo);
    });
  });
  proc.log = () => log;
  return proc;
}

async function killWait(proc, signal = "SIGKILL", ms = 10000) {
  if (!proc || proc.exitInfo) return;
  try {
    proc.kill(signal);
  } catch {}
  const t = setTimeout(() => {
    try {
      proc.kill("SIGKILL");
    } catch {}
  }, ms);
  await proc.exited;
  clearTimeout(t);
}

// waitUntil polls fn (async, truthy = done) every `every` ms, at most ms.
async function waitUntil(fn, what, ms = WAIT_MS, every = 50) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timeout after ${ms}ms waiting for ${what} (last: ${last && last.message ? last.message : JSON.stringify(last)})`);
    await sleep(every);
  }
}

function tmpDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

// ------------------------------------------------------------------ Redis

class Redis {
  constructor() {
    this.port = 0;
    this.dir = null;
    this.proc = null;
    this.external = null;
  }
  get url() {
    return this.external || `redis://127.0.0.1:${this.port}/0`;
  }
  static async start() {
    const r = new Redis();
    if (process.env.ELCHAT_TEST_REDIS_URL) {
      r.external = process.env.ELCHAT_TEST_REDIS_URL;
      const u = new URL(r.external);
      r.port = Number(u.port || 6379);
      r.host = u.hostname;
      return r;
    }
    assert.ok(REDIS_SERVER, "redis-server not installed (apt-get install redis-server)");
    r.dir = tmpDir("elchat-cluster-redis-");
    r.port = await freePort();
    await r.startProc();
    return r;
  }
  async startProc() {
    this.proc = spawnOwned(REDIS_SERVER, ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir, "--daemonize", "no"]);
    await waitUntil(async () => (await this.cmd(["PING"])).trim() === "PONG", `redis-server on ${this.port} to answer PING`, 10000);
  }
  // stop shuts redis down (its data is lost: no persistence).
  async stop(signal = "SIGKILL") {
    assert.ok(!this.external, "cannot stop an external Redis");
    await killWait(this.proc, signal);
  }
  async restart() {
    await this.startProc();
  }
  cmd(args) {
    return new Promise((resolve, reject) => {
      const host = this.host || "127.0.0.1";
      execFile(REDIS_CLI, ["-h", host, "-p", String(this.port), "--no-raw", ...args], { timeout: 5000, encoding: "latin1" }, (err, stdout, stderr) => {
        if (err) reject(new Error(`redis-cli ${args.join(" ")}: ${err.message} ${stderr}`));
        else resolve(stdout);
      });
    });
  }
  rawCmd(args) {
    return new Promise((resolve, reject) => {
      execFile(REDIS_CLI, ["-h", this.host || "127.0.0.1", "-p", String(this.port), ...args], { timeout: 5000, encoding: "utf8" }, (err, stdout, stderr) => {
        if (err) reject(new Error(`redis-cli ${args.join(" ")}: ${err.message} ${stderr}`));
        else resolve(stdout);
      });
    });
  }
  async info(section) {
    const out = await this.rawCmd(["INFO", section]);
    const m = {};
    for (const line of out.split(/\r?\n/)) {
      const i = line.indexOf(":");
      if (i > 0) m[line.slice(0, i)] = line.slice(i + 1);
    }
    return m;
  }
  async destroy() {
    if (this.external) return;
    await killWait(this.proc);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ Redis Cluster

// RedisCluster is three primaries and three replicas (Redis 7 cluster
// mode) on free ports, made with redis-cli --cluster create.
class RedisCluster {
  constructor() {
    this.servers = [];
  }
  get seeds() {
    return this.servers.map((s) => `127.0.0.1:${s.port}`);
  }
  static async start() {
    assert.ok(REDIS_SERVER && REDIS_CLI, "redis-server/redis-cli not installed (apt-get install redis-server)");
    const c = new RedisCluster();
    try {
      for (let i = 0; i < 6; i++) {
        const r = new Redis();
        r.dir = tmpDir("elchat-cluster-rc-");
        r.port = await freePort();
        // The bus port is chosen like the client port rather than left at
        // port+10000, which can land where an outgoing connection sits.
        const bus = await freePort();
        r.proc = spawnOwned(REDIS_SERVER, ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir,
          "--daemonize", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", String(bus),
          "--cluster-node-timeout", "2000"]);
        c.servers.push(r);
      }
      for (const r of c.servers) await waitUntil(async () => (await r.cmd(["PING"])).trim() === "PONG", `redis-server on ${r.port}`, 10000);
      await new Promise((resolve, reject) =>
        execFile(REDIS_CLI, ["--cluster", "create", ...c.seeds, "--cluster-replicas", "1", "--cluster-yes"], { timeout: 60000 }, (err, stdout, stderr) =>
          err ? reject(new Error(`redis-cli --cluster create: ${err.message} ${stdout} ${stderr}`)) : resolve()));
      for (const r of c.servers) {
        await waitUntil(async () => (await r.rawCmd(["CLUSTER", "INFO"])).includes("cluster_state:ok"), `cluster state ok on ${r.port}`, 30000);
        // A replica that has not synced could not take over.
        await waitUntil(async () => {
          const info = await r.rawCmd(["INFO", "replication"]);
          return !info.includes("role:slave") || info.includes("master_link_status:up");
        }, `replica ${r.port} in sync`, 30000);
      }
    } catch (e) {
      await c.destroy();
      throw e;
    }
    return c;
  }
  // primaries returns the servers that answer as primaries now.
  async primaries() {
    const out = [];
    for (const r of this.servers) {
      try {
        if ((await r.rawCmd(["INFO", "replication"])).includes("role:master")) out.push(r);
      } catch {}
    }
    return out;
  }
  async destroy() {
    for (const r of this.servers) await r.destroy();
  }
}

// ------------------------------------------------------------------ Sentinel

// SentinelSet is a primary, its replica and three Sentinels (quorum 2,
// down-after 1 s) watching them as "elchat".
class SentinelSet {
  constructor() {
    this.master = "elchat";
    this.primary = null;
    this.replica = null;
    this.sentinels = [];
  }
  get addrs() {
    return this.sentinels.map((s) => `127.0.0.1:${s.port}`);
  }
  static async start() {
    assert.ok(REDIS_SERVER && REDIS_CLI, "redis-server/redis-cli not installed (apt-get install redis-server)");
    const ss = new SentinelSet();
    try {
      ss.primary = await Redis.start();
      const r = new Redis();
      r.dir = tmpDir("elchat-cluster-replica-");
      r.port = await freePort();
      r.proc = spawnOwned(REDIS_SERVER, ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir,
        "--daemonize", "no", "--replicaof", "127.0.0.1", String(ss.primary.port)]);
      ss.replica = r;
      await waitUntil(async () => (await r.rawCmd(["INFO", "replication"])).includes("master_link_status:up"), "replica in sync", 15000);
      for (let i = 0; i < 3; i++) {
        const s = new Redis();
        s.dir = tmpDir("elchat-cluster-sentinel-");
        s.port = await freePort();
        const conf = path.join(s.dir, "sentinel.conf");
        fs.writeFileSync(conf, `port ${s.port}\nbind 127.0.0.1\ndaemonize no\ndir ${s.dir}\n` +
          `sentinel monitor ${ss.master} 127.0.0.1 ${ss.primary.port} 2\nsentinel down-after-milliseconds ${ss.master} 1000\n` +
          `sentinel failover-timeout ${ss.master} 10000\nsentinel parallel-syncs ${ss.master} 1\n`);
        s.proc = spawnOwned(REDIS_SERVER, [conf, "--sentinel"]);
        ss.sentinels.push(s);
      }
      for (const s of ss.sentinels) {
        await waitUntil(async () => (await s.rawCmd(["SENTINEL", "ckquorum", ss.master])).startsWith("OK")
          && (await s.rawCmd(["SENTINEL", "replicas", ss.master])).includes(String(r.port)), `sentinel ${s.port} ready`, 60000, 200);
      }
    } catch (e) {
      await ss.destroy();
      throw e;
    }
    return ss;
  }
  async masterPort() {
    const out = await this.sentinels[0].rawCmd(["SENTINEL", "get-master-addr-by-name", this.master]);
    return Number(out.trim().split(/\s+/)[1]);
  }
  async destroy() {
    for (const s of [...this.sentinels, this.replica, this.primary]) if (s) await s.destroy();
  }
}

// ------------------------------------------------------------------ PostgreSQL

class Postgres {
  static async start() {
    const p = new Postgres();
    if (process.env.ELCHAT_TEST_DATABASE_URL) {
      // A fresh database on the given server.
      const admin = new URL(process.env.ELCHAT_TEST_DATABASE_URL);
      const db = `elchat_cluster_${process.pid}_${crypto.randomBytes(3).toString("hex")}`;
      execFileSync(PSQL, [admin.toString(), "-c", `CREATE DATABASE ${db}`], { stdio: "pipe" });
      admin.pathname = "/" + db;
      p.external = admin.toString();
      return p;
    }
    assert.ok(INITDB && POSTGRES, "PostgreSQL binaries not found (apt-get install postgresql)");
    p.dir = tmpDir("elchat-cluster-pg-");
    p.data = path.join(p.dir, "data");
    p.port = await freePort();
    p.cred = {};
    if (process.getuid() === 0) {
      const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
      const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
      p.cred = { uid, gid };
      fs.chownSync(p.dir, uid, gid);
    }
    execFileSync(INITDB, ["-D", p.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], { ...p.cred, cwd: p.dir, stdio: "pipe" });
    await p.startProc();
    execFileSync(PSQL, ["-h", "127.0.0.1", "-p", String(p.port), "-U", "postgres", "-d", "postgres", "-c", "CREATE DATABASE elchat"], { stdio: "pipe", ...p.cred });
    return p;
  }
  get url() {
    return this.external || `postgres://postgres@127.0.0.1:${this.port}/elchat?sslmode=disable`;
  }
  async startProc() {
    this.proc = spawnOwned(POSTGRES, ["-D", this.data, "-p", String(this.port), "-k", this.dir, "-h", "127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning"], { ...this.cred, cwd: this.dir });
    await waitUntil(
      () =>
        new Promise((resolve) => {
          if (this.proc.exitInfo) return resolve(false);
          execFile(pgBin("pg_isready"), ["-h", "127.0.0.1", "-p", String(this.port), "-t", "1"], (err) => resolve(!err));
        }),
      `postgres on ${this.port} to accept connections (log: ${this.proc.log().slice(-500)})`,
      30000,
      100
    );
  }
  // stop: fast shutdown (SIGINT), like `pg_ctl stop -m fast`.
  async stop(signal = "SIGINT") {
    assert.ok(!this.external, "cannot stop an external PostgreSQL");
    await killWait(this.proc, signal, 20000);
  }
  async restart() {
    await this.startProc();
  }
  psql(sql) {
    if (this.external) return execFileSync(PSQL, [this.external, "-Atc", sql], { encoding: "utf8" });
    return execFileSync(PSQL, ["-h", "127.0.0.1", "-p", String(this.port), "-U", "postgres", "-d", "elchat", "-Atc", sql], { encoding: "utf8", ...this.cred });
  }
  async destroy() {
    if (this.external) return;
    await killWait(this.proc, "SIGQUIT");
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ tokens

function b64url(buf) {
  return Buffer.from(buf).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}
function mintToken(secret, user, name, ttlSec = 3600) {
  const h = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const p = b64url(JSON.stringify({ sub: String(user), name: name || `user${user}`, exp: Math.floor(Date.now() / 1000) + ttlSec }));
  const sig = b64url(crypto.createHmac("sha256", secret).update(`${h}.${p}`).digest());
  return `${h}.${p}.${sig}`;
}

// ------------------------------------------------------------------ cluster

// Cluster owns Redis, PostgreSQL, nodes and (optionally) nginx for one test.
class Cluster {
  constructor(opts = {}) {
    this.opts = opts;
    this.secret = crypto.randomBytes(24).toString("hex");
    this.apiKey = crypto.randomBytes(16).toString("hex");
    this.prefix = opts.prefix || `elchat${crypto.randomBytes(3).toString("hex")}:`;
    this.cablePrefix = opts.cablePrefix || "";
    this.presenceTTL = opts.presenceTTL || "3s";
    this.nodes = [];
    this.sockets = [];
    this.ctx = new H_Ctx();
    this.nginx = null;
  }
  static async start(opts = {}) {
    const c = new Cluster(opts);
    try {
      const redis = opts.redis || (opts.redisCluster ? RedisCluster.start() : opts.sentinel ? SentinelSet.start() : Redis.start());
      [c.redis, c.pg] = await Promise.all([redis, opts.pg || Postgres.start()]);
      // The first node applies migrations alone, then the rest start in parallel.
      const n = opts.nodes || 3;
      c.nodes.push(await c.startNode(0));
      const rest = [];
      for (let i = 1; i < n; i++) rest.push(c.startNode(i));
      c.nodes.push(...(await Promise.all(rest)));
      if (opts.nginx) await c.startNginx();
    } catch (e) {
      await c.destroy();
      throw e;
    }
    return c;
  }
  nodeEnv(i) {
    return {
      ELCHAT_DATABASE_URL: this.pg.url,
      ELCHAT_MIGRATE: "true",
      ...(this.redis.seeds
        ? { ELCHAT_REDIS_CLUSTER: this.redis.seeds.join(",") }
        : this.redis.sentinels
          ? { ELCHAT_REDIS_SENTINELS: this.redis.addrs.join(","), ELCHAT_REDIS_MASTER: this.redis.master }
          : { ELCHAT_REDIS_URL: this.redis.url }),
      ELCHAT_REDIS_PREFIX: this.prefix,
      ELCHAT_PRESENCE_TTL: this.presenceTTL,
      ELCHAT_API_KEY: this.apiKey,
      ELCHAT_NODE_ID: `n${i}`,
      ELCHAT_LOG_LEVEL: "info",
      ...(this.cablePrefix ? { ELCHAT_ACTIONCABLE_PREFIX: this.cablePrefix } : {}),
      ...(this.opts.env || {}),
    };
  }
  async startNode(i) {
    // opts.nodeEnv(i, cluster) may override a node's environment, e.g. to
    // put a cuttable proxy between one node and Redis.
    const extra = this.opts.nodeEnv ? await this.opts.nodeEnv(i, this) : {};
    const s = await this.ctx.startServer({ secret: this.secret, env: { ...this.nodeEnv(i), ...extra } });
    s.index = i;
    return s;
  }
  // restartNode starts node i again on its old port.
  async restartNode(i) {
    const s = this.nodes[i];
    await s.start();
    return s;
  }

  async startNginx() {
    assert.ok(NGINX, "nginx not installed (apt-get install nginx)");
    const dir = tmpDir("elchat-cluster-nginx-");
    const port = await freePort();
    fs.writeFileSync(path.join(dir, "elchat-upstreams.conf"), this.nodes.map((n) => `server 127.0.0.1:${n.port} max_fails=1 fail_timeout=30s;\n`).join(""));
    fs.writeFileSync(path.join(dir, "elchat-listen.conf"), `listen 127.0.0.1:${port};\n`);
    const conf = path.join(dir, "nginx.conf");
    fs.writeFileSync(
      conf,
      `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 1024; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${path.join(REPO_ROOT, "deploy", "nginx", "elchat.conf")};
}
`
    );
    try {
      execFileSync(NGINX, ["-t", "-c", conf, "-e", path.join(dir, "error.log")], { stdio: "pipe" });
    } catch (e) {
      throw new Error(`nginx -t failed: ${e.stderr}`);
    }
    const proc = spawnOwned(NGINX, ["-c", conf, "-e", path.join(dir, "error.log"), "-g", "daemon off;"]);
    this.nginx = { proc, port, dir, endPoint: `ws://127.0.0.1:${port}/socket`, httpUrl: `http://127.0.0.1:${port}` };
    await waitUntil(async () => (await httpGet(`${this.nginx.httpUrl}/healthz`, { timeout: 500 })).status === 200, "nginx to proxy /healthz", 10000, 100);
    return this.nginx;
  }

  token(user, name) {
    return mintToken(this.secret, user, name);
  }

  // connect opens a phoenix.js socket for user to node (a Server) or to
  // nginx (node = "nginx"), waits until it is open.
  async connect(user, node, { name, socketOpts = {}, token } = {}) {
    const endPoint = node === "nginx" ? this.nginx.endPoint : node.socketUrl;
    const socket = new Socket(endPoint, {
      transport: WS,
      params: { token: token || this.token(user, name) },
      reconnectAfterMs: () => 200,
      rejoinAfterMs: () => 300,
      timeout: 10000,
      ...socketOpts,
    });
    socket.messages = new Collector(`socket(user ${user}) messages`);
    socket.closes = new Collector(`socket(user ${user}) closes`);
    socket.opens = new Collector(`socket(user ${user}) opens`);
    socket.onMessage((m) => socket.messages.push(m));
    socket.onClose((e) => socket.closes.push({ at: Date.now(), code: e && e.code }));
    socket.onOpen(() => socket.opens.push(Date.now()));
    socket.user = String(user);
    this.sockets.push(socket);
    socket.connect();
    await socket.opens.waitFor(() => true, `socket for user ${user} to open on ${endPoint}`, WAIT_MS);
    return socket;
  }

  // api calls the server-to-server API of node.
  async api(node, method, p, body, key = this.apiKey) {
    const res = await fetch(`${node.httpUrl}${p}`, {
      method,
      headers: { Authorization: `Bearer ${key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10000),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: res.status, json, text };
  }

  // clientsOn returns elchat_clients of each node (null for a dead node).
  async clientsOn() {
    return Promise.all(
      this.nodes.map(async (n) => {
        if (!n.proc || n.exitInfo) return null;
        try {
          const r = await httpGet(`${n.httpUrl}/metrics`, { timeout: 1000 });
          const m = /^elchat_clients\s+([0-9.e+]+)/m.exec(r.body);
          return m ? Number(m[1]) : null;
        } catch {
          return null;
        }
      })
    );
  }

  logs() {
    let out = this.ctx.logs();
    if (this.nginx) {
      try {
        out += `\n=== nginx error.log ===\n${fs.readFileSync(path.join(this.nginx.dir, "error.log"), "utf8").slice(-4000)}`;
      } catch {}
    }
    return out;
  }

  async destroy() {
    for (const s of this.sockets) {
      try {
        s.disconnect();
      } catch {}
    }
    if (this.nginx) {
      await killWait(this.nginx.proc, "SIGQUIT", 3000);
      fs.rmSync(this.nginx.dir, { recursive: true, force: true });
    }
    await this.ctx.cleanup();
    if (!this.opts.redis && this.redis) await this.redis.destroy();
    if (!this.opts.pg && this.pg) await this.pg.destroy();
  }
}

// H_Ctx: the interop helpers' Ctx (server start/stop/logs) without its
// phoenix connect; reached through serverTest's module.
class H_Ctx {
  constructor() {
    this.servers = [];
  }
  async startServer(opts) {
    const port = opts.port || (await freePort());
    const dataDir = tmpDir("elchat-cluster-node-");
    const s = new H.Server({ port, dataDir, secret: opts.secret, env: opts.env });
    this.servers.push(s);
    await s.start();
    return s;
  }
  logs() {
    return this.servers.map((s) => `=== node n${s.index} (port ${s.port}) log ===\n${s.log()}`).join("\n");
  }
  async cleanup() {
    await Promise.all(this.servers.map((s) => s.stop("SIGKILL", 3000).catch(() => {})));
    for (const s of this.servers) fs.rmSync(s.dataDir, { recursive: true, force: true });
  }
}

// clusterTest runs fn(cluster) on a fresh cluster; on failure every node's
// log (and nginx's) is appended to the error.
function clusterTest(name, opts, fn) {
  const { test } = require("node:test");
  test(name, { timeout: opts.timeout || 90000, skip: opts.skip }, async () => {
    const c = await Cluster.start(opts);
    try {
      await fn(c);
    } catch (e) {
      const logs = c.logs();
      process.stderr.write(`\n### FAILED: ${name}\n${e && e.stack}\n${logs.slice(-30000)}\n`);
      throw e;
    } finally {
      await c.destroy();
    }
  });
}

// ------------------------------------------------------------------ phoenix helpers

// MessageLog tracks new_message payloads on a chat channel by id.
function messageLog(channel) {
  const c = new Collector(`${channel.topic} new_message`);
  c.byId = new Map();
  channel.on("new_message", (m) => {
    m._at = performance.now();
    c.byId.set(m.id, m);
    c.push(m);
  });
  return c;
}

// presenceOf wires phoenix's Presence to a channel; .syncs records the list
// after each sync, .leaves every onLeave.
function presenceOf(channel) {
  const p = new Presence(channel);
  p.syncs = new Collector(`${channel.topic} presence syncs`);
  p.leaves = new Collector(`${channel.topic} presence leaves`);
  p.onSync(() => p.syncs.push(p.list((id, { metas }) => ({ id, refs: metas.map((m) => m.phx_ref), metas }))));
  p.onLeave((id, current, left) => p.leaves.push({ id, at: Date.now(), refs: left.metas.map((m) => m.phx_ref) }));
  return p;
}

function httpStatus(url) {
  return httpGet(url, { timeout: 3000 }).then(
    (r) => r.status,
    () => 0
  );
}

module.exports = {
  ...H,
  WAIT_MS,
  Redis,
  RedisCluster,
  SentinelSet,
  Postgres,
  Cluster,
  clusterTest,
  mintToken,
  messageLog,
  presenceOf,
  waitUntil,
  httpStatus,
  spawnOwned,
  killWait,
  tmpDir,
  NGINX,
  RUBY,
  REDIS_SERVER,
  INITDB,
};
