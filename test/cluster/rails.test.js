"use strict";
// The Rails side with real Ruby (Debian's ruby, ruby-jwt, ruby-redis,
// ruby-actioncable): the scripts under test/ruby/ mint tokens, broadcast
// through Action Cable's real Redis adapter, read presence from Redis and
// publish on <prefix>publish, against a real two-node cluster.
const assert = require("node:assert/strict");
const { execFile } = require("node:child_process");
const path = require("node:path");
const { clusterTest, joinOk, chatTopic, collect, presenceOf, waitUntil, RawClient, RUBY, REPO_ROOT, WAIT_MS } = require("./lib/env");

const RUBY_DIR = path.join(REPO_ROOT, "test", "ruby");

function ruby(script, args, env) {
  return new Promise((resolve, reject) => {
    execFile(RUBY, [path.join(RUBY_DIR, script), ...args], { env: { ...process.env, ...env }, timeout: 30000, encoding: "utf8" }, (err, stdout, stderr) => {
      if (err) reject(new Error(`ruby ${script} ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

function rubyLibsMissing() {
  if (!RUBY) return "ruby not installed (apt-get install ruby ruby-jwt ruby-redis ruby-actioncable)";
  try {
    require("node:child_process").execFileSync(RUBY, ["-e", 'require "jwt"; require "redis"; require "action_cable"'], { stdio: "pipe" });
  } catch (e) {
    return `ruby gems missing (apt-get install ruby-jwt ruby-redis ruby-actioncable): ${String(e.stderr).slice(0, 300)}`;
  }
  return false;
}
const missing = rubyLibsMissing();

clusterTest(
  "rails: mint_token.rb, Action Cable broadcast.rb, presence.rb and publish.rb against a two-node cluster",
  { nodes: 2, cablePrefix: "railsapp_test", presenceTTL: "3s", timeout: 90000, skip: missing && !process.env.CI && missing },
  async (c) => {
    assert.ok(!missing, missing);
    const [A, B] = c.nodes;
    const env = { ELCHAT_SECRET: c.secret, REDIS_URL: c.redis.url, ELCHAT_REDIS_PREFIX: c.prefix, CABLE_PREFIX: c.cablePrefix };

    // mint_token.rb: a token from Ruby's jwt gem is accepted; its name claim
    // shows up in presence.
    const tok42 = (await ruby("mint_token.rb", ["42", "Zoë Rails"], env)).trim();
    assert.match(tok42, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    const tok43 = (await ruby("mint_token.rb", ["43", "Omar"], env)).trim();
    const z = await c.connect(42, A, { token: tok42 });
    const zLobby = z.channel("user:42");
    await joinOk(zLobby);
    // A second socket of user 42 on the other node.
    const z2 = await c.connect(42, B, { token: tok42 });
    const z2Lobby = z2.channel("user:42");
    await joinOk(z2Lobby);
    const o = await c.connect(43, B, { token: tok43 });
    const room = chatTopic(42, 43);
    const zChat = z.channel(room, {});
    const zPres = presenceOf(zChat);
    await joinOk(zChat);
    const oChat = o.channel(room, {});
    await joinOk(oChat);
    await zPres.syncs.waitFor((l) => l.length === 2, "presence of 42 and 43", WAIT_MS);
    assert.equal(zPres.list((id, { metas }) => (id === "42" ? metas[0].name : null)).find(Boolean), "Zoë Rails");
    // An expired Ruby token is refused at the handshake.
    const expired = (await ruby("mint_token.rb", ["44", "Late", "-60"], env)).trim();
    const status = await RawClient.handshakeStatus(`${A.socketUrl}/websocket?token=${encodeURIComponent(expired)}&vsn=2.0.0`);
    assert.equal(status, 403, "expired token refused");

    // broadcast.rb: ActionCable.server.broadcast("user:42", ...) through the
    // real Redis adapter reaches both of user 42's sockets, once each.
    const zEv = collect(zLobby, "rails_event");
    const z2Ev = collect(z2Lobby, "rails_event");
    const payload = { order: 7, items: [{ sku: "a", qty: 2 }], note: "ünïcode ✓" };
    const chan = (await ruby("broadcast.rb", ["user:42", "rails_event", JSON.stringify(payload)], env)).trim();
    assert.equal(chan, "railsapp_test:user:42");
    assert.deepEqual(await zEv.waitFor(() => true, "Action Cable broadcast on node A", WAIT_MS), payload);
    assert.deepEqual(await z2Ev.waitFor(() => true, "Action Cable broadcast on node B", WAIT_MS), payload);
    await zEv.none(() => zEv.items.length > 1 || z2Ev.items.length > 1, "duplicate broadcast", 300);
    assert.equal(zEv.items.length, 1);
    assert.equal(z2Ev.items.length, 1);
    // presence.rb: plain HGETALL/GET agree with who is connected.
    const pres = JSON.parse(await ruby("presence.rb", [room, "42", "43", "44"], env));
    assert.deepEqual(Object.keys(pres.presence).sort(), ["42", "43"]);
    assert.equal(pres.presence["42"][0].name, "Zoë Rails");
    assert.equal(pres.presence["43"][0].name, "Omar");
    assert.ok(pres.presence["42"][0].phx_ref && Number.isInteger(pres.presence["42"][0].online_at));
    assert.deepEqual(pres.online, { 42: 2, 43: 0, 44: 0 }, "43 has no lobby joined, 42 two lobbies");
    // 43 leaves: presence.rb sees it gone.
    oChat.leave();
    await waitUntil(async () => {
      const p = JSON.parse(await ruby("presence.rb", [room, "42"], env));
      return Object.keys(p.presence).join(",") === "42";
    }, "presence.rb to show only 42 after 43 left", WAIT_MS, 200);
    z2.disconnect();
    await waitUntil(async () => JSON.parse(await ruby("presence.rb", [room, "42"], env)).online["42"] === 1, "online:42 to drop to 1", WAIT_MS, 200);

    // publish.rb: plain PUBLISH on <prefix>publish reaches a chat topic on
    // the node where the subscriber is; every node receives the PUBLISH.
    const oChat2 = o.channel(room, {});
    const oEv = collect(oChat2, "pub_event");
    await joinOk(oChat2);
    const zPub = collect(zChat, "pub_event");
    const receivers = (await ruby("publish.rb", [room, "pub_event", JSON.stringify({ from: "publish.rb", n: 1 })], env)).trim();
    assert.equal(receivers, "2", "both nodes subscribe to <prefix>publish");
    assert.deepEqual(await zPub.waitFor(() => true, "publish.rb event on node A", WAIT_MS), { from: "publish.rb", n: 1 });
    assert.deepEqual(await oEv.waitFor(() => true, "publish.rb event on node B", WAIT_MS), { from: "publish.rb", n: 1 });
    await zPub.none(() => zPub.items.length > 1, "duplicate publish", 300);
    // A reserved event name is refused by the nodes.
    const zBad = collect(zChat, "phx_close");
    await ruby("publish.rb", [room, "phx_close", "{}"], env);
    await zBad.none(() => true, "phx_close injected through <prefix>publish", 300);
    assert.equal(zChat.state, "joined");
  }
);
