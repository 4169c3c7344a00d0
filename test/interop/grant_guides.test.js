"use strict";
// The chat-grant snippets of the guides (docs/examples/*_grant.*) under their
// real interpreters: each grant must open its chat on a node running
// --chat-policy granted, and only its chat. A missing interpreter or library
// skips its test only when CI is unset.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { execFileSync, execFile } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { serverTest, joinOk, joinError, pushOk, decodeJwt, REPO_ROOT } = require("./helpers");

const EXAMPLES = path.join(REPO_ROOT, "docs", "examples");

function works(cmd, args) {
  try {
    execFileSync(cmd, args, { stdio: "ignore", timeout: 20000 });
    return true;
  } catch {
    return false;
  }
}

const RUNTIMES = {
  ruby: () => (works("ruby", ["-rjwt", "-e", "exit 0"]) ? "ruby" : null),
  python: () => ["python3", "/usr/bin/python3"].find((py) => works(py, ["-c", "import jwt"])) || null,
  node: () => process.execPath,
};

const SNIPPETS = [
  { guide: "rails.md", file: "rails_grant.rb", runtime: "ruby" },
  { guide: "django.md", file: "django_grant.py", runtime: "python" },
  { guide: "node.md", file: "node_grant.js", runtime: "node" },
];

function mint(cmd, file, secret, user, peer) {
  return new Promise((resolve, reject) => {
    const env = { PATH: process.env.PATH, HOME: process.env.HOME || os.tmpdir(), ELCHAT_SECRET: secret };
    execFile(cmd, [path.join(EXAMPLES, file), String(user), String(peer)], { env, timeout: 20000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${file} failed: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

test("guides include the grant example files verbatim", () => {
  for (const { guide, file } of SNIPPETS) {
    const text = fs.readFileSync(path.join(REPO_ROOT, "docs", guide), "utf8");
    assert.ok(text.includes(fs.readFileSync(path.join(EXAMPLES, file), "utf8").trim()), `docs/${guide} must contain docs/examples/${file} verbatim`);
  }
});

for (const { guide, file, runtime } of SNIPPETS) {
  const cmd = RUNTIMES[runtime]();
  const name = `guides: docs/examples/${file} (${guide}) mints a grant that opens its chat`;
  if (!cmd && !process.env.CI) {
    test(`${name} (skipped: no ${runtime} with a JWT library)`, { skip: true }, () => {});
    continue;
  }
  serverTest(name, { timeout: 45000, env: { ELCHAT_CHAT_POLICY: "granted" } }, async (ctx) => {
    assert.ok(cmd, `CI is set but there is no ${runtime} with a JWT library`);
    const grant = await mint(cmd, file, ctx.server.secret, 42, 7);
    const { header, claims } = decodeJwt(grant);
    assert.equal(header.alg, "HS256");
    assert.deepEqual([claims.sub, claims.peer], ["42", "7"]);
    const ttl = claims.exp - Math.floor(Date.now() / 1000);
    assert.ok(ttl > 60 && ttl <= 3600 + 5, `exp about an hour ahead, got ${ttl}s`);

    const me = await ctx.connect(42);
    const forged = await mint(cmd, file, ctx.server.secret + "-not", 42, 7);
    assert.equal((await joinError(me.channel("chat:7:42", { grant: forged }))).reason, "grant has an invalid signature");
    assert.equal((await joinError(me.channel("chat:8:42", { grant }))).reason, "grant is for another chat");
    const room = me.channel("chat:7:42", { grant });
    await joinOk(room);
    await pushOk(room, "new_message", { body: "hello from the grant" });
    const peer = await ctx.connect(7);
    const hist = await joinOk(peer.channel("chat:7:42"));
    assert.equal(hist.messages[0].body, "hello from the grant");
  });
}
