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
