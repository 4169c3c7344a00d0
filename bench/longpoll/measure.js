"use strict";
// Long-poll figures, measured side by side with WebSockets in one run on one
// node (bin/elchat serve, embedded store):
//
//   1. end-to-end latency of a chat message (push on a WebSocket sender →
//      new_message at the recipient) to a phoenix.js LongPoll client and to
//      a phoenix.js WebSocket client of the same user, same messages;
//   2. memory per idle long-poll session: N sessions (distinct users, lobby
//      joined) each with a poll held, as phoenix.js keeps one; server RSS
//      and Go heap before and after, per session;
//   3. how many such sessions the node held (N, all answered).
//
// Bounded on purpose (a shared 2-core box): N defaults to 2000, the latency
// run to 300 messages at 50/s.
//
//   go build -o bin/elchat ./cmd/elchat
//   ELCHAT_BIN=$PWD/bin/elchat node bench/longpoll/measure.js [--sessions 2000] [--msgs 300] [--rate 50] [--heap-profile FILE] [--forwarded]
const path = require("node:path");
const fs = require("node:fs");
const os = require("node:os");
const crypto = require("node:crypto");
const H = require(path.join(__dirname, "..", "..", "test", "interop", "helpers"));
const { Socket, LongPoll, WS, sleep, freePort, httpGet } = H;

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const SESSIONS = arg("sessions", 2000);
const MSGS = arg("msgs", 300);
const RATE = arg("rate", 50);

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
function mint(secret, user) {
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: String(user), name: `u${user}`, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${crypto.createHmac("sha256", secret).update(body).digest("base64url")}`;
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m[1]);
}
// gc makes the server collect garbage first (a heap profile with gc=1 does),
// so the heap figures count live memory only.
async function gc(pprofPort) {
  await httpGet(`http://127.0.0.1:${pprofPort}/debug/pprof/heap?gc=1&debug=1`, { timeout: 10000 });
}
async function metric(server, name) {
  const r = await httpGet(`${server.httpUrl}/metrics`, { timeout: 5000 });
  const m = new RegExp(`^${name}\\s+([0-9.e+]+)`, "m").exec(r.body);
  return m ? Number(m[1]) : NaN;
}
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

function socket(server, user, transport) {
  const s = new Socket(server.socketUrl, { transport, params: { token: mint(server.secret, user) }, reconnectAfterMs: () => 500, longpollerTimeout: 20000 });
  return new Promise((resolve) => {
    s.onOpen(() => resolve(s));
    s.connect();
  });
}
function join(ch) {
  return new Promise((resolve, reject) => ch.join().receive("ok", resolve).receive("error", reject).receive("timeout", () => reject(new Error("join timeout"))));
}

async function latency(server) {
  const room = "chat:1:2";
  const sender = await socket(server, 1, WS);
  const wsRecv = await socket(server, 2, WS);
  const lpRecv = await socket(server, 2, LongPoll);
  const sChat = sender.channel(room);
  const wChat = wsRecv.channel(room);
  const lChat = lpRecv.channel(room);
  const sentAt = new Map();
  const lat = { ws: [], lp: [] };
  wChat.on("new_message", (m) => sentAt.has(m.client_id) && lat.ws.push(performance.now() - sentAt.get(m.client_id)));
  lChat.on("new_message", (m) => sentAt.has(m.client_id) && lat.lp.push(performance.now() - sentAt.get(m.client_id)));
  await join(sChat);
  await join(wChat);
  await join(lChat);
  await sleep(500);
  for (let i = 0; i < MSGS; i++) {
    const cid = `m-${i}-${crypto.randomBytes(3).toString("hex")}`;
    sentAt.set(cid, performance.now());
    sChat.push("new_message", { body: `latency ${i}`, client_id: cid });
    await sleep(1000 / RATE);
  }
  await sleep(2000);
  for (const s of [sender, wsRecv, lpRecv]) s.disconnect();
  const row = (k) => `| ${k === "ws" ? "WebSocket" : "LongPoll"} | ${lat[k].length}/${MSGS} | ${pct(lat[k], 50).toFixed(2)} | ${pct(lat[k], 90).toFixed(2)} | ${pct(lat[k], 99).toFixed(2)} | ${Math.max(...lat[k]).toFixed(2)} |`;
  return ["| recipient | received | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|", row("ws"), row("lp")].join("\n");
}

// idleSessions opens n sessions through the raw protocol (one user each,
// lobby joined) and keeps one poll held per session, as phoenix.js does.
// With via, the opens go to server and every later request to via, which
// forwards it to server (what half the requests do behind a round-robin
// balancer in front of two nodes).
async function idleSessions(server, n, via = null) {
  const base = `${server.httpUrl}/socket/longpoll`;
  const viaBase = via ? `${via.httpUrl}/socket/longpoll` : base;
  const stop = { v: false };
  let answered = 0;
  let failed = 0;
  const loops = [];
  const q = (jwt, tok) => `${tok ? viaBase : base}?token=${encodeURIComponent(jwt)}&vsn=2.0.0${tok ? `&token=${encodeURIComponent(tok)}` : ""}`;
  for (let i = 0; i < n; i++) {
    const user = 1000 + i;
    const jwt = mint(server.secret, user);
    const o = await (await fetch(q(jwt))).json();
    if (o.status !== 410) {
      failed++;
      continue;
    }
    const tok = o.token;
    await fetch(q(jwt, tok), { method: "POST", headers: { "Content-Type": "application/x-ndjson" }, body: JSON.stringify(["1", "1", `user:${user}`, "phx_join", {}]) });
    loops.push(
      (async () => {
        while (!stop.v) {
          try {
            const r = await (await fetch(q(jwt, tok), { signal: AbortSignal.timeout(25000) })).json();
            if (r.status === 200 || r.status === 204) answered++;
            else if (r.status === 410) return;
          } catch {
            if (!stop.v) failed++;
          }
        }
      })()
    );
  }
  return { stop: () => ((stop.v = true), Promise.allSettled(loops)), answered: () => answered, failed: () => failed };
}

// forwarded measures the forwarding node's cost: sessions owned by server,
// every poll held through a second node with the same secret.
async function forwarded(server, secret, dataDir, pprofPort) {
  await sleep(25000); // the first batch of sessions expires
  const port2 = await freePort();
  const pprof2 = await freePort();
  const dir2 = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-lp-bench-b-"));
  const via = new H.Server({ port: port2, dataDir: dir2, secret, env: { ELCHAT_MAX_CONNS_PER_USER: "0", ELCHAT_PPROF_ADDR: `127.0.0.1:${pprof2}` } });
  await via.start();
  try {
    await gc(pprofPort);
    await gc(pprof2);
    const r0 = [rssKiB(server.proc.pid), rssKiB(via.proc.pid)];
    const h0 = [await metric(server, "go_memstats_heap_inuse_bytes"), await metric(via, "go_memstats_heap_inuse_bytes")];
    const idle = await idleSessions(server, SESSIONS, via);
    await sleep(12000);
    await gc(pprofPort);
    await gc(pprof2);
    const r1 = [rssKiB(server.proc.pid), rssKiB(via.proc.pid)];
    const h1 = [await metric(server, "go_memstats_heap_inuse_bytes"), await metric(via, "go_memstats_heap_inuse_bytes")];
    const fwd = await metric(via, "elchat_longpoll_forwarded_total");
    if (process.argv.includes("--heap-profile")) {
      const res = await fetch(`http://127.0.0.1:${pprof2}/debug/pprof/heap?gc=1`);
      fs.writeFileSync(process.argv[process.argv.indexOf("--heap-profile") + 1] + ".forwarder", Buffer.from(await res.arrayBuffer()));
    }
    console.log(`\n## ${SESSIONS} idle sessions whose polls all come through a second node (forwarded to the owner)\n`);
    console.log("| node | RSS per session | Go heap per session |\n|---|---|---|");
    console.log(`| owner | ${((r1[0] - r0[0]) / SESSIONS).toFixed(2)} KiB | ${((h1[0] - h0[0]) / SESSIONS / 1024).toFixed(2)} KiB |`);
    console.log(`| forwarding node | ${((r1[1] - r0[1]) / SESSIONS).toFixed(2)} KiB | ${((h1[1] - h0[1]) / SESSIONS / 1024).toFixed(2)} KiB |`);
    console.log(`\nrequests forwarded: ${fwd}, failed: ${idle.failed()}`);
    await idle.stop();
  } finally {
    await via.stop("SIGKILL", 3000);
    fs.rmSync(dir2, { recursive: true, force: true });
  }
}

async function main() {
  const port = await freePort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-lp-bench-"));
  const secret = crypto.randomBytes(24).toString("hex");
  const pprofPort = await freePort();
  const server = new H.Server({ port, dataDir, secret, env: { ELCHAT_PUSH_RATE: "1000", ELCHAT_PUSH_BURST: "1000", ELCHAT_MAX_CONNS_PER_USER: "0", ELCHAT_PPROF_ADDR: `127.0.0.1:${pprofPort}` } });
  await server.start();
  try {
    console.log(`## latency, ${MSGS} messages at ${RATE}/s, sender on WebSocket, the same user receiving on both transports\n`);
    console.log(await latency(server));
    await sleep(1000);
    await gc(pprofPort);
    const rss0 = rssKiB(server.proc.pid);
    const heap0 = await metric(server, "go_memstats_heap_inuse_bytes");
    const g0 = await metric(server, "go_goroutines");
    const t0 = Date.now();
    const idle = await idleSessions(server, SESSIONS);
    const openMs = Date.now() - t0;
    await sleep(12000); // more than one poll window: every session re-polled once
    const held = await metric(server, "elchat_longpoll_sessions");
    await gc(pprofPort);
    const profile = process.argv.includes("--heap-profile") ? process.argv[process.argv.indexOf("--heap-profile") + 1] : "";
    if (profile) {
      const res = await fetch(`http://127.0.0.1:${pprofPort}/debug/pprof/heap?gc=1`);
      fs.writeFileSync(profile, Buffer.from(await res.arrayBuffer()));
    }
    const rss1 = rssKiB(server.proc.pid);
    const heap1 = await metric(server, "go_memstats_heap_inuse_bytes");
    const g1 = await metric(server, "go_goroutines");
    const answered = idle.answered();
    console.log(`\n## ${SESSIONS} idle long-poll sessions (lobby joined, one poll held each), opened in ${openMs} ms\n`);
    console.log("| figure | value |\n|---|---|");
    console.log(`| sessions held by the node | ${held} (failed opens or polls: ${idle.failed()}) |`);
    console.log(`| server RSS per session | ${((rss1 - rss0) / SESSIONS).toFixed(2)} KiB |`);
    console.log(`| Go heap in use per session (after a GC) | ${((heap1 - heap0) / SESSIONS / 1024).toFixed(2)} KiB |`);
    console.log(`| goroutines per session (the held poll's request) | ${((g1 - g0) / SESSIONS).toFixed(2)} |`);
    console.log(`| polls answered (204 after the 10 s window) | ${answered} |`);
    await idle.stop();
    if (process.argv.includes("--forwarded")) await forwarded(server, secret, dataDir, pprofPort);
  } finally {
    await server.stop("SIGKILL", 3000);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  }
);
