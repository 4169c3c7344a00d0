"use strict";
// The host-app guides (docs/rails.md, docs/django.md, docs/node.md) include
// their token code verbatim from docs/examples/. Here each of those files runs
// under its real interpreter (Ruby + the jwt gem, Python 3 + PyJWT, Node),
// and the token it prints must open a socket on a real ElChat node and join
// the user's lobby. docs/examples/elchat_client.js, the browser code of all
// three guides, then drives a two-user chat with those tokens.
//
// A missing interpreter or library skips its test only when CI is unset.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { execFileSync, execFile } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { pathToFileURL } = require("node:url");
const { serverTest, RawClient, joinOk, decodeJwt, Collector, WS, REPO_ROOT } = require("./helpers");

const EXAMPLES = path.join(REPO_ROOT, "docs", "examples");
const DOCS = path.join(REPO_ROOT, "docs");

function works(cmd, args) {
  try {
    execFileSync(cmd, args, { stdio: "ignore", timeout: 20000 });
    return true;
  } catch {
    return false;
  }
}

// python3 with PyJWT: the one on PATH, else Debian's (python3-jwt installs
// into /usr/bin/python3's path only).
function findPython() {
  for (const py of ["python3", "/usr/bin/python3"]) {
    if (works(py, ["-c", "import jwt"])) return py;
  }
  return null;
}

const RUNTIMES = {
  ruby: () => (works("ruby", ["-rjwt", "-e", "exit 0"]) ? "ruby" : null),
  python: findPython,
  node: () => process.execPath,
};
const MISSING = {
  ruby: "ruby with the jwt gem (apt-get install ruby ruby-jwt)",
  python: "python3 with PyJWT (apt-get install python3-jwt)",
  node: "node",
};

const SNIPPETS = [
  { guide: "rails.md", file: "rails_token.rb", runtime: "ruby" },
  { guide: "django.md", file: "django_token.py", runtime: "python" },
  { guide: "node.md", file: "node_token.js", runtime: "node" },
];

function mint(cmd, file, secret, user, name) {
  return new Promise((resolve, reject) => {
    // Only the secret is passed on purpose: the snippets read ELCHAT_SECRET.
    const env = { PATH: process.env.PATH, HOME: process.env.HOME || os.tmpdir(), ELCHAT_SECRET: secret };
    execFile(cmd, [path.join(EXAMPLES, file), String(user), name], { env, timeout: 20000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${file} failed: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

// Every guide includes its example files verbatim (inside a fenced block).
test("guides include the example files verbatim", () => {
  const client = fs.readFileSync(path.join(EXAMPLES, "elchat_client.js"), "utf8").trim();
  for (const { guide, file } of SNIPPETS) {
    const text = fs.readFileSync(path.join(DOCS, guide), "utf8");
    const snippet = fs.readFileSync(path.join(EXAMPLES, file), "utf8").trim();
    assert.ok(text.includes(snippet), `docs/${guide} must contain docs/examples/${file} verbatim`);
    assert.ok(text.includes(client), `docs/${guide} must contain docs/examples/elchat_client.js verbatim`);
  }
});

for (const { guide, file, runtime } of SNIPPETS) {
  const cmd = RUNTIMES[runtime]();
  const name = `guides: docs/examples/${file} (${guide}) mints a token ElChat accepts`;
  if (!cmd && !process.env.CI) {
    test(`${name} (skipped: no ${MISSING[runtime]})`, { skip: `no ${MISSING[runtime]}` }, () => {});
    continue;
  }
  serverTest(name, { timeout: 45000 }, async (ctx) => {
    assert.ok(cmd, `CI is set but there is no ${MISSING[runtime]}`);
    const server = ctx.server;
    const token = await mint(cmd, file, server.secret, 42, "Zoë Q");
    const { header, claims } = decodeJwt(token);
    assert.equal(header.alg, "HS256");
    assert.equal(claims.sub, "42", "sub is the user id as a string");
    assert.equal(claims.name, "Zoë Q");
    const ttl = claims.exp - Math.floor(Date.now() / 1000);
    assert.ok(ttl > 60 && ttl <= 3600 + 5, `exp about an hour ahead, got ${ttl}s`);

    // The handshake is upgraded; a wrong secret is refused.
    assert.equal(await RawClient.handshakeStatus(server.wsUrl({ token, vsn: "2.0.0" })), 101);
    const forged = await mint(cmd, file, server.secret + "-not", 42, "Zoë Q");
    assert.equal(await RawClient.handshakeStatus(server.wsUrl({ token: forged, vsn: "2.0.0" })), 403);

    // phoenix.js joins the lobby of the token's user, and only that one.
    const socket = await ctx.connect(42, { token });
    const lobby = await joinOk(socket.channel("user:42"));
    assert.deepEqual(lobby, { unread: [] });
  });
}

// elchat_client.js imports "phoenix" as a bundler would resolve it; point the
// import at the installed package and load the file as it is otherwise.
async function loadClient() {
  const src = fs.readFileSync(path.join(EXAMPLES, "elchat_client.js"), "utf8");
  const phoenix = pathToFileURL(require.resolve("phoenix").replace(/phoenix\.cjs\.js$/, "phoenix.mjs")).href;
  assert.ok(src.includes('from "phoenix"'), "elchat_client.js imports the phoenix package");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-guide-client-"));
  const file = path.join(dir, "elchat_client.mjs");
  fs.writeFileSync(file, src.replace('from "phoenix"', `from ${JSON.stringify(phoenix)}`));
  return import(pathToFileURL(file).href);
}

const ruby = RUNTIMES.ruby();
const python = RUNTIMES.python();
if ((!ruby || !python) && !process.env.CI) {
  test("guides: elchat_client.js chat between a Rails and a Django user (skipped: ruby-jwt or python3-jwt missing)", { skip: "ruby-jwt or python3-jwt missing" }, () => {});
} else {
  serverTest("guides: elchat_client.js chat between a Rails and a Django user", { timeout: 45000 }, async (ctx) => {
    assert.ok(ruby && python, "CI is set but ruby-jwt or python3-jwt is missing");
    const { connectElchat, chatTopic } = await loadClient();
    assert.equal(chatTopic(10, 9), "chat:9:10");
    assert.equal(chatTopic("b", "a"), "chat:a:b");

    const server = ctx.server;
    const annToken = await mint(ruby, "rails_token.rb", server.secret, 9, "Ann");
    const benToken = await mint(python, "django_token.py", server.secret, 10, "Ben");
    const url = server.socketUrl;

    const annUnread = new Collector("ann unread");
    const annNotes = new Collector("ann notifications");
    const ann = connectElchat({ token: annToken, me: "9", url, transport: WS, onUnread: (u) => annUnread.push(u), onNotification: (room, m) => annNotes.push({ room, m }) });
    const benUnread = new Collector("ben unread");
    const ben = connectElchat({ token: benToken, me: "10", url, transport: WS, onUnread: (u) => benUnread.push(u) });
    try {
      assert.deepEqual(await annUnread.waitFor(), []);
      assert.deepEqual(await benUnread.waitFor(), []);

      const benMsgs = new Collector("ben messages");
      const benTyping = new Collector("ben typing");
      const benPresence = new Collector("ben presence");
      const benChat = ben.openChat("9", { onMessage: (m) => benMsgs.push(m), onTyping: (t) => benTyping.push(t), onPresence: (p) => benPresence.push(p) });
      await benChat.joined;
      assert.equal(benChat.topic, "chat:9:10");

      // Ben writes while Ann has the chat closed: her lobby is notified.
      const first = await benChat.send("hello from django");
      assert.equal(first.body, "hello from django");
      const note = await annNotes.waitFor(() => true, "lobby notification");
      assert.equal(note.room, "chat:9:10");
      assert.equal(note.m.id, first.id);

      // Ann opens it: history, presence of both, typing, both directions.
      const annMsgs = new Collector("ann messages");
      const annReads = new Collector("ann reads");
      const annPresence = new Collector("ann presence");
      const annChat = ann.openChat("10", { onMessage: (m) => annMsgs.push(m), onRead: (r) => annReads.push(r), onPresence: (p) => annPresence.push(p) });
      await annChat.joined;
      await annMsgs.waitFor((m) => m.id === first.id, "history");
      const names = (l) => l.map((p) => `${p.id}:${p.name}`).sort().join(",");
      await annPresence.waitFor((l) => names(l) === "10:Ben,9:Ann", "both in the chat");
      await benPresence.waitFor((l) => names(l) === "10:Ben,9:Ann", "ben sees ann");

      annChat.typing();
      annChat.typing(); // throttled: one event
      const t = await benTyping.waitFor(() => true, "typing");
      assert.deepEqual(t, { user_id: "9", name: "Ann" });
      const reply = await annChat.send("hi from rails");
      await benMsgs.waitFor((m) => m.id === reply.id, "ann's reply at ben");
      assert.equal(annMsgs.filter((m) => m.id === reply.id).length, 1, "the sender's copy is delivered once");
      assert.equal(benTyping.items.length, 1, "typing() is throttled");

      await annChat.markRead(first.id);
      await annReads.waitFor((r) => r.user_id === "9" && r.last_id === first.id, "read receipt");
      const page = await annChat.loadOlder();
      assert.equal(page.hasMore, false);
    } finally {
      ann.disconnect();
      ben.disconnect();
    }
  });
}

// ---------------------------------------------------------------- webhooks
// Each guide's webhook receiver (docs/examples/*_webhook.*) runs under its
// real interpreter on a free port, a live node is pointed at it, and the
// seed's story must arrive there verified: Bob offline, Alice writes three
// messages, one message.unread event with the three after --notify-after.
// Forged and stale signatures must be refused by the receiver's own code.
const { spawn } = require("node:child_process");
const crypto = require("node:crypto");
const { freePort } = require("./helpers");

const RECEIVERS = [
  { guide: "rails.md", file: "rails_webhook.rb", cmd: () => (works("ruby", ["-ropenssl", "-e", "exit 0"]) ? "ruby" : null), missing: "ruby" },
  { guide: "django.md", file: "django_webhook.py", cmd: () => (works("python3", ["-c", "import hmac"]) ? "python3" : null), missing: "python3" },
  { guide: "node.md", file: "node_webhook.js", cmd: () => process.execPath, missing: "node" },
];

test("guides include the webhook receivers verbatim", () => {
  for (const { guide, file } of RECEIVERS) {
    const text = fs.readFileSync(path.join(DOCS, guide), "utf8");
    const snippet = fs.readFileSync(path.join(EXAMPLES, file), "utf8").trim();
    assert.ok(text.includes(snippet), `docs/${guide} must contain docs/examples/${file} verbatim`);
  }
});

// startReceiver runs a receiver and resolves once it listens; lines() are
// the events it printed so far.
function startReceiver(cmd, file, port, secret) {
  const env = { PATH: process.env.PATH, HOME: process.env.HOME || os.tmpdir(), ELCHAT_WEBHOOK_SECRET: secret };
  const proc = spawn(cmd, [path.join(EXAMPLES, file), String(port)], { env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (err += d));
  const lines = () => out.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  const ready = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${file} did not listen: ${out}${err}`)), 20000);
    proc.stdout.on("data", () => {
      if (out.includes("listening")) {
        clearTimeout(t);
        resolve();
      }
    });
    proc.on("exit", (code) => reject(new Error(`${file} exited ${code}: ${err}`)));
  });
  return { proc, ready, lines, logs: () => out + err };
}

async function waitUntil(cond, ms, what) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

for (const { guide, file, cmd: find, missing } of RECEIVERS) {
  const cmd = find();
  const name = `guides: docs/examples/${file} (${guide}) receives and verifies ElChat's webhook`;
  if (!cmd && !process.env.CI) {
    test(`${name} (skipped: no ${missing})`, { skip: `no ${missing}` }, () => {});
    continue;
  }
  serverTest(name, { timeout: 45000, noServer: true }, async (ctx) => {
    assert.ok(cmd, `CI is set but there is no ${missing}`);
    const secret = "whsec-guides-0123456789abcdef";
    const apiKey = "guides-api-key";
    const port = await freePort();
    const rcv = startReceiver(cmd, file, port, secret);
    try {
      await rcv.ready;
      const server = await ctx.startServer({
        env: {
          ELCHAT_WEBHOOK_URL: `http://127.0.0.1:${port}/elchat/webhooks`,
          ELCHAT_WEBHOOK_SECRET: secret,
          ELCHAT_NOTIFY_AFTER: "500ms",
          ELCHAT_API_KEY: apiKey,
        },
      });
      const started = Date.now();
      for (const [i, body] of ["hi Bob", "are you there?", "call me"].entries()) {
        const res = await fetch(`${server.httpUrl}/api/v1/messages`, {
          method: "POST",
          headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
          body: JSON.stringify({ from: "1", to: "2", body, client_id: `g-${i}` }),
        });
        assert.equal(res.status, 201);
      }
      await waitUntil(() => rcv.lines().length >= 1, 15000, `an event at ${file}: ${rcv.logs()}`);
      assert.ok(Date.now() - started >= 500, "the event waited for --notify-after");
      await new Promise((r) => setTimeout(r, 1000));
      const events = rcv.lines();
      assert.equal(events.length, 1, `one event: ${JSON.stringify(events)}`);
      const [ev] = events;
      assert.match(ev.id, /^evt_\d+$/);
      assert.equal(ev.type, "message.unread");
      assert.equal(ev.user_id, "2");
      assert.deepEqual(ev.messages.map((m) => m.body), ["hi Bob", "are you there?", "call me"]);
      for (const m of ev.messages) assert.equal(m.is_delivered, false);

      // The receiver's verification refuses what ElChat did not sign now.
      const body = JSON.stringify({ id: "evt_999", type: "message.unread", user_id: "2", messages: [] });
      const sign = (t, key) => `t=${t},v1=${crypto.createHmac("sha256", key).update(`${t}.${body}`).digest("hex")}`;
      const post = async (sig) =>
        (await fetch(`http://127.0.0.1:${port}/elchat/webhooks`, { method: "POST", headers: { "ElChat-Signature": sig, "Content-Type": "application/json" }, body })).status;
      const now = Math.floor(Date.now() / 1000);
      assert.equal(await post(sign(now, secret + "x")), 400, "wrong secret");
      assert.equal(await post(sign(now - 3600, secret)), 400, "an hour-old timestamp");
      assert.equal(await post("v1=deadbeef"), 400, "no timestamp");
      assert.equal(await post(sign(now, secret)), 200, "a good signature");
    } finally {
      rcv.proc.kill();
    }
  });
}
