"use strict";
// Cluster measurements (not part of the test run):
//
//   1. Latency sender push -> recipient receive, cross-node (sender on n0,
//      recipient on n1) against same-node (both on n0), both streams running
//      at the same time at a steady rate, real phoenix.js clients.
//   2. Redis cost on the throwaway Redis: commands (INFO commandstats) and
//      bytes in/out (INFO stats total_net_input_bytes / total_net_output_bytes)
//      per chat message, per connect (socket + lobby join + disconnect) and per
//      chat join (join + leave), for 1, 2 and 3 nodes. An idle window of the
//      same length is measured first and subtracted (heartbeats).
//
//   ELCHAT_BIN=bin/elchat node test/cluster/measure.js [--rate 200] [--seconds 10] [--nodes 1,2,3] [--json out.json]
//
// --rate is the total message rate, split evenly between the two streams.
const fs = require("node:fs");
const { performance } = require("node:perf_hooks");
const { spawn } = require("node:child_process");
const { Cluster, joinOk, pushChannel, chatTopic, sleep, waitUntil } = require("./lib/env");

// monitor counts the commands Redis executes while it runs, split into
// top-level commands (round trips sent by the nodes) and commands run
// inside Lua scripts ("[0 lua]" in MONITOR output). INFO commandstats counts
// both together.
function monitor(redis) {
  const proc = spawn("redis-cli", ["-p", String(redis.port), "monitor"], { stdio: ["ignore", "pipe", "ignore"] });
  const m = { top: {}, lua: {}, proc, buf: "" };
  proc.stdout.on("data", (d) => {
    m.buf += d.toString("latin1");
    let i;
    while ((i = m.buf.indexOf("\n")) >= 0) {
      const line = m.buf.slice(0, i);
      m.buf = m.buf.slice(i + 1);
      const x = /^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"/.exec(line);
      if (!x) continue;
      const cmd = x[2].toLowerCase();
      if (cmd === "info" || cmd === "monitor") continue;
      const bucket = x[1] === "lua" ? m.lua : m.top;
      bucket[cmd] = (bucket[cmd] || 0) + 1;
    }
  });
  m.ready = sleep(200);
  m.stop = async () => {
    await sleep(100);
    proc.kill("SIGKILL");
    return { top: m.top, lua: m.lua };
  };
  return m;
}

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}
const RATE = Number(arg("rate", 200));
const SECONDS = Number(arg("seconds", 10));
const NODES = String(arg("nodes", "1,2,3")).split(",").map(Number);
const JSON_OUT = arg("json", null);
const K_MSG = Number(arg("messages", 200));
const K_CONN = Number(arg("connects", 50));

const pct = (arr, p) => {
  if (!arr.length) return NaN;
  const s = [...arr].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const r2 = (x) => Math.round(x * 100) / 100;

async function redisSnapshot(redis) {
  const [stats, cmds] = await Promise.all([redis.info("stats"), redis.info("commandstats")]);
  const calls = {};
  for (const [k, v] of Object.entries(cmds)) {
    const m = /calls=(\d+)/.exec(v);
    if (k.startsWith("cmdstat_") && m) calls[k.slice(8)] = Number(m[1]);
  }
  return { in: Number(stats.total_net_input_bytes), out: Number(stats.total_net_output_bytes), calls };
}
function delta(a, b) {
  const calls = {};
  for (const k of new Set([...Object.keys(a.calls), ...Object.keys(b.calls)])) {
    const d = (b.calls[k] || 0) - (a.calls[k] || 0);
    if (d) calls[k] = d;
  }
  return { in: b.in - a.in, out: b.out - a.out, calls };
}
// window runs fn and returns the Redis delta minus an idle window of the same length.
// measured runs fn twice: fn(0) for bytes and INFO commandstats (minus an
// idle window of the same length: heartbeats, our own INFO calls), then
// fn(1) under MONITOR to split top-level commands from those inside scripts
// (MONITOR's own output would inflate total_net_output_bytes, hence two runs).
async function measured(redis, fn) {
  const i0 = await redisSnapshot(redis);
  const t0 = Date.now();
  await fn(0);
  const dur = Date.now() - t0;
  const i1 = await redisSnapshot(redis);
  const b0 = await redisSnapshot(redis);
  await sleep(dur);
  const b1 = await redisSnapshot(redis);
  const work = delta(i0, i1);
  const idle = delta(b0, b1);
  const calls = {};
  for (const [k, v] of Object.entries(work.calls)) {
    const x = v - (idle.calls[k] || 0);
    if (x > 0) calls[k] = x;
  }
  let mon = monitor(redis);
  await mon.ready;
  const m0 = Date.now();
  await fn(1);
  const mdur = Date.now() - m0;
  const mw = await mon.stop();
  mon = monitor(redis);
  await mon.ready;
  await sleep(mdur);
  const mi = await mon.stop();
  const sub = (w, i) => {
    const o = {};
    for (const [k, v] of Object.entries(w)) if (v - (i[k] || 0) > 0) o[k] = v - (i[k] || 0);
    return o;
  };
  return { in: work.in - idle.in, out: work.out - idle.out, calls, ms: dur, top: sub(mw.top, mi.top), lua: sub(mw.lua, mi.lua) };
}
function per(d, n) {
  const calls = {};
  let total = 0;
  for (const [k, v] of Object.entries(d.calls)) {
    if (k === "info" || k === "config|resetstat") continue;
    calls[k] = r2(v / n);
    total += v / n;
  }
  const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  const fmt = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, r2(v / n)]));
  return { commands: r2(total), round_trips: r2(sum(d.top) / n), top_level: fmt(d.top), in_scripts: fmt(d.lua), bytes_in: Math.round(d.in / n), bytes_out: Math.round(d.out / n), by_command: calls };
}

async function latency(c) {
  const [A, B] = c.nodes;
  const streams = [
    { name: "same-node", from: 100, to: 101, sNode: A, rNode: A },
    { name: "cross-node", from: 200, to: 201, sNode: A, rNode: B },
  ];
  for (const s of streams) {
    s.sender = await c.connect(s.from, s.sNode);
    s.recv = await c.connect(s.to, s.rNode);
    const room = chatTopic(s.from, s.to);
    s.sChat = s.sender.channel(room, {});
    s.rChat = s.recv.channel(room, {});
    await joinOk(s.sChat);
    await joinOk(s.rChat);
    s.sent = new Map();
    s.lat = [];
    s.acks = [];
    s.errors = 0;
    s.rChat.on("new_message", (m) => {
      const t = s.sent.get(m.client_id);
      if (t !== undefined && m.user_id === String(s.from)) {
        s.lat.push(performance.now() - t);
        s.sent.delete(m.client_id);
      }
    });
  }
  // Warm-up.
  for (const s of streams) for (let i = 0; i < 20; i++) await pushChannel(s.sChat, "new_message", { body: "warm", client_id: `w-${s.name}-${i}` });
  await sleep(300);
  for (const s of streams) s.lat.length = 0;

  const perStream = RATE / streams.length;
  const interval = 1000 / perStream;
  const total = Math.round(perStream * SECONDS);
  const start = performance.now();
  const pending = [];
  let i = 0;
  while (i < total && performance.now() - start < SECONDS * 1000 + 5000) {
    const due = start + i * interval;
    const now = performance.now();
    if (now < due) {
      await sleep(Math.max(0, due - now - 1));
      continue;
    }
    for (const s of streams) {
      const cid = `${s.name}-${i}`;
      const t = performance.now();
      s.sent.set(cid, t);
      pending.push(
        pushChannel(s.sChat, "new_message", { body: `m ${i} ${"x".repeat(60)}`, client_id: cid }, 10000).then((r) => {
          if (r.status === "ok") s.acks.push(performance.now() - t);
          else s.errors++;
        })
      );
    }
    i++;
  }
  const sendMs = performance.now() - start;
  await Promise.all(pending);
  await waitUntil(() => streams.every((s) => s.sent.size === 0), "every message to arrive", 10000, 50).catch(() => {});
  return streams.map((s) => ({
    stream: s.name,
    sent: total,
    received: s.lat.length,
    lost: s.sent.size,
    errors: s.errors,
    rate_per_stream: r2((total * 1000) / sendMs),
    p50_ms: r2(pct(s.lat, 50)),
    p90_ms: r2(pct(s.lat, 90)),
    p99_ms: r2(pct(s.lat, 99)),
    max_ms: r2(Math.max(...s.lat)),
    ack_p50_ms: r2(pct(s.acks, 50)),
    ack_p99_ms: r2(pct(s.acks, 99)),
  }));
}

async function redisCosts(c, n) {
  const first = c.nodes[0];
  const last = c.nodes[n - 1];
  const out = { nodes: n };
  // Idle clients on every node (their lobbies), so every node has topics.
  for (let i = 0; i < n; i++) {
    const s = await c.connect(900 + i, c.nodes[i]);
    await joinOk(s.channel(`user:${900 + i}`));
  }
  // Per chat message: sender on n0, recipient on the last node, both in the chat.
  const sender = await c.connect(300, first);
  const recv = await c.connect(301, last);
  const room = chatTopic(300, 301);
  const sChat = sender.channel(room, {});
  const rChat = recv.channel(room, {});
  await joinOk(sChat);
  await joinOk(rChat);
  let got = 0;
  rChat.on("new_message", () => got++);
  await pushChannel(sChat, "new_message", { body: "warm" });
  await sleep(200);
  got = 0;
  const body = "y".repeat(64);
  const dm = await measured(c.redis, async (round) => {
    got = 0;
    for (let i = 0; i < K_MSG; i++) await pushChannel(sChat, "new_message", { body, client_id: `r${round}-${i}` });
    await waitUntil(() => got >= K_MSG, "all measured messages to arrive", 10000, 20);
  });
  out.per_message_in_chat = per(dm, K_MSG);
  // Per message to an offline-from-chat recipient: lobby notification path.
  const lob = await c.connect(302, last);
  await joinOk(lob.channel("user:302"));
  const nChat = sender.channel(chatTopic(300, 302), {});
  await joinOk(nChat);
  const dn = await measured(c.redis, async (round) => {
    for (let i = 0; i < K_MSG; i++) await pushChannel(nChat, "new_message", { body, client_id: `n${round}-${i}` });
  });
  out.per_message_notification = per(dn, K_MSG);
  // Per connect: socket open + lobby join, then disconnect (round robin over nodes).
  const dc = await measured(c.redis, async (round) => {
    for (let i = 0; i < K_CONN; i++) {
      const u = 1000 + round * K_CONN + i;
      const s = await c.connect(u, c.nodes[i % n]);
      await joinOk(s.channel(`user:${u}`));
      s.disconnect();
      await sleep(5);
    }
    await sleep(300);
  });
  out.per_connect_lobby_join_and_disconnect = per(dc, K_CONN);
  // Per chat join + leave (presence track/list/untrack + subscribe).
  const dj = await measured(c.redis, async (round) => {
    for (let i = 0; i < K_CONN; i++) {
      const ch = sender.channel(chatTopic(300, 2000 + round * K_CONN + i), {});
      await joinOk(ch);
      await new Promise((r) => ch.leave().receive("ok", r).receive("timeout", r));
    }
    await sleep(300);
  });
  out.per_chat_join_and_leave = per(dj, K_CONN);
  return out;
}

(async () => {
  const results = { rate_total: RATE, seconds: SECONDS, redis: [], latency: null, started: new Date().toISOString() };
  for (const n of NODES) {
    const c = await Cluster.start({ nodes: n, presenceTTL: "30s", env: { ELCHAT_PUSH_RATE: "5000", ELCHAT_PUSH_BURST: "5000", ELCHAT_LOG_LEVEL: "warn" } });
    try {
      results.redis.push(await redisCosts(c, n));
      if (n === Math.max(...NODES) && n >= 2) results.latency = { nodes: n, streams: await latency(c) };
    } finally {
      await c.destroy();
    }
  }
  const lines = [];
  if (results.latency) {
    lines.push(`Latency, ${results.latency.nodes} nodes, ${RATE} msg/s total (split over the streams) for ${SECONDS}s:`);
    lines.push("| stream | sent | received | lost | errors | rate/s | p50 ms | p90 ms | p99 ms | max ms | ack p50 | ack p99 |");
    lines.push("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (const s of results.latency.streams) lines.push(`| ${s.stream} | ${s.sent} | ${s.received} | ${s.lost} | ${s.errors} | ${s.rate_per_stream} | ${s.p50_ms} | ${s.p90_ms} | ${s.p99_ms} | ${s.max_ms} | ${s.ack_p50_ms} | ${s.ack_p99_ms} |`);
  }
  lines.push("", "Redis cost (commands, bytes into Redis, bytes out of Redis):");
  lines.push("| nodes | what | top-level cmds | top-level | inside scripts | bytes in | bytes out |");
  lines.push("|---|---|---|---|---|---|---|");
  for (const r of results.redis) {
    for (const k of ["per_message_in_chat", "per_message_notification", "per_connect_lobby_join_and_disconnect", "per_chat_join_and_leave"]) {
      const v = r[k];
      const f = (o) => Object.entries(o).sort().map(([a, b]) => `${a}=${b}`).join(" ");
      lines.push(`| ${r.nodes} | ${k} | ${v.round_trips} | ${f(v.top_level)} | ${f(v.in_scripts)} | ${v.bytes_in} | ${v.bytes_out} |`);
    }
  }
  const text = lines.join("\n");
  process.stderr.write(text + "\n");
  if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(results, null, 2));
  process.exit(0);
})().catch((e) => {
  process.stderr.write(`measure failed: ${e.stack}\n`);
  process.exit(1);
});
