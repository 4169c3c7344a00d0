"use strict";
// The deploy kit, exercised for real where this machine can:
//  - deploy/nginx/elchat.conf runs in a real nginx (on loopback) in front of
//    two real ElChat nodes, and phoenix.js connects THROUGH it: lobby join,
//    heartbeats, both nodes used, a killed node skipped;
//  - deploy/k8s/*.yaml and deploy/compose.yaml are parsed (Ruby's YAML) and
//    checked for the settings a rolling restart and the drain depend on;
//  - deploy/systemd/elchat.service passes systemd-analyze verify;
//  - `docker compose config` runs only where the compose plugin exists.
// A missing nginx or ruby skips its test only when CI is unset.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const crypto = require("node:crypto");
const { serverTest, freePort, httpGet, joinOk, sleep, withTimeout, RawClient, REPO_ROOT, WAIT_MS } = require("./helpers");
const { which, run, NGINX, RUBY, DEPLOY, NGINX_DIR, nginxWrapper, startNginx } = require("./nginx");

test("deploy: nginx/elchat.conf keeps sockets open longer than the idle timeout", () => {
  const conf = fs.readFileSync(path.join(NGINX_DIR, "elchat.conf"), "utf8");
  const socketBlock = /location \/socket\/ \{([\s\S]*?)\n {4}\}/.exec(conf);
  assert.ok(socketBlock, "elchat.conf has a location /socket/ block");
  const block = socketBlock[1];
  for (const d of ["proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;", "proxy_buffering off;", "X-Forwarded-For $proxy_add_x_forwarded_for;"]) {
    assert.ok(block.includes(d), `location /socket/ needs ${d}`);
  }
  for (const t of ["proxy_read_timeout", "proxy_send_timeout"]) {
    const m = new RegExp(`${t} (\\d+)s;`).exec(block);
    assert.ok(m, `${t} is set in seconds`);
    assert.ok(Number(m[1]) >= 75, `${t} ${m[1]}s must exceed the 60s idle timeout (clients heartbeat every 30s)`);
  }
  assert.match(conf, /upstream elchat_nodes \{[^}]*least_conn;[^}]*include elchat-upstreams\.conf;/);
  // Long-polls: plain round-robin over the same nodes, no stickiness (ElChat
  // forwards a request to the node owning its session).
  const lpUp = /upstream elchat_longpoll \{([^}]*)\}/.exec(conf);
  assert.ok(lpUp, "elchat.conf has an elchat_longpoll upstream");
  assert.match(lpUp[1], /include elchat-upstreams\.conf;/);
  assert.doesNotMatch(lpUp[1], /least_conn|ip_hash|hash |sticky/, "the long-poll upstream is plain round-robin");
  const lpLoc = /location \/socket\/longpoll \{([\s\S]*?)\n {4}\}/.exec(conf);
  assert.ok(lpLoc, "elchat.conf has a location /socket/longpoll block");
  assert.match(lpLoc[1], /proxy_pass http:\/\/elchat_longpoll;/);
  const rt = /proxy_read_timeout (\d+)s;/.exec(lpLoc[1]);
  assert.ok(rt && Number(rt[1]) > 10, "proxy_read_timeout above the 10s poll window");
  assert.match(lpLoc[1], /client_max_body_size 1m;/, "the body bound of --longpoll-max-body");
  assert.match(conf, /include elchat-listen\.conf;/);
  // The compose file mounts exactly the files elchat.conf and nginx.conf include.
  for (const f of ["nginx.conf", "elchat.conf", "elchat-upstreams.conf", "elchat-listen.conf"]) {
    assert.ok(fs.existsSync(path.join(NGINX_DIR, f)), `deploy/nginx/${f} exists`);
  }
});

if (!NGINX && !process.env.CI) {
  test("deploy: phoenix.js through nginx (skipped: nginx not installed; apt-get install nginx)", { skip: "nginx not installed" }, () => {});
} else {
  serverTest("deploy: phoenix.js through nginx with deploy/nginx/elchat.conf across two nodes", { timeout: 60000, noServer: true }, async (ctx) => {
    assert.ok(NGINX, "CI is set but nginx is not installed");
    const secret = crypto.randomBytes(24).toString("hex");
    const a = await ctx.startServer({ secret });
    const b = await ctx.startServer({ secret });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-nginx-"));
    const port = await freePort();
    const conf = nginxWrapper(dir, port, [a, b]);
    const ng = await startNginx(dir, conf, port);
    try {
      const endPoint = `ws://127.0.0.1:${port}/socket`;

      // The repository's own main config parses too (with a local upstream).
      const mainDir = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-nginx-main-"));
      for (const f of ["nginx.conf", "elchat.conf"]) fs.copyFileSync(path.join(NGINX_DIR, f), path.join(mainDir, f));
      fs.writeFileSync(path.join(mainDir, "elchat-upstreams.conf"), `server 127.0.0.1:${a.port};\n`);
      fs.writeFileSync(path.join(mainDir, "elchat-listen.conf"), `listen 127.0.0.1:${await freePort()};\n`);
      const t = run(NGINX, ["-t", "-c", path.join(mainDir, "nginx.conf"), "-e", path.join(mainDir, "error.log"), "-g", `pid ${mainDir}/nginx.pid;`]);
      assert.ok(t.ok, `nginx -t of deploy/nginx/nginx.conf failed:\n${t.out}`);
      fs.rmSync(mainDir, { recursive: true, force: true });

      // Handshake outcomes pass through unchanged.
      const good = await a.token(1, "Alice");
      assert.equal(await RawClient.handshakeStatus(`${endPoint}/websocket?token=${encodeURIComponent(good)}&vsn=2.0.0`), 101);
      const forged = await a.token(1, "Alice", { secret: secret + "x" });
      assert.equal(await RawClient.handshakeStatus(`${endPoint}/websocket?token=${encodeURIComponent(forged)}&vsn=2.0.0`), 403);
      // Plain requests and upgrades interleaved: an upgrade must never ride on
      // an upstream connection left over from a plain request.
      for (let i = 0; i < 4; i++) {
        assert.equal((await httpGet(`http://127.0.0.1:${port}/healthz`)).status, 200);
        assert.equal(await RawClient.handshakeStatus(`${endPoint}/websocket?token=${encodeURIComponent(good)}&vsn=2.0.0`), 101, `upgrade #${i} after a plain request`);
      }
      // Internal endpoints are not exposed through the public proxy.
      assert.equal((await httpGet(`http://127.0.0.1:${port}/metrics`)).status, 404);
      assert.equal((await httpGet(`http://127.0.0.1:${port}/api/v1/users/1/unread`)).status, 404);

      // Four users through nginx: lobby joins and fast heartbeats all answered.
      const sockets = [];
      const lobbies = [];
      for (const user of [1, 2, 3, 4]) {
        const s = await ctx.connect(user, { server: a, socketOpts: { endPoint, heartbeatIntervalMs: 300 } });
        const ch = s.channel(`user:${user}`);
        assert.deepEqual(await joinOk(ch), { unread: [] });
        sockets.push(s);
        lobbies.push(ch);
      }
      for (const s of sockets) {
        await s.messages.waitCount(2, (m) => m.topic === "phoenix" && m.event === "phx_reply" && m.payload.status === "ok", "two heartbeat replies through nginx");
      }

      // least_conn spread them over both nodes: killing one closes some
      // sockets and leaves the others open.
      await a.stop("SIGKILL");
      await withTimeout(
        (async () => {
          while (!sockets.some((s) => s.closes.items.length > 0)) await sleep(50);
        })(),
        WAIT_MS,
        "a socket on the killed node to close"
      );
      await sleep(500);
      const survivors = sockets.filter((s) => s.closes.items.length === 0);
      assert.ok(survivors.length >= 1 && survivors.length < sockets.length, `least_conn should have put sockets on both nodes; ${survivors.length} of ${sockets.length} survived the kill`);
      // The closed ones reconnect through nginx to the node that is left and
      // phoenix.js rejoins their lobbies there.
      await withTimeout(
        (async () => {
          while (!lobbies.every((ch, i) => sockets[i].isConnected() && ch.state === "joined")) await sleep(50);
        })(),
        WAIT_MS * 2,
        "every socket reconnected and rejoined through nginx after a node died"
      );
      const fresh = await ctx.connect(5, { server: b, socketOpts: { endPoint } });
      assert.deepEqual(await joinOk(fresh.channel("user:5")), { unread: [] });
    } catch (e) {
      e.message += `\n--- nginx log ---\n${ng.log()}`;
      throw e;
    } finally {
      ng.proc.kill("SIGQUIT");
      await Promise.race([ng.exited, sleep(5000)]);
      ng.proc.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

// ------------------------------------------------------------------ YAML

function loadYAML(file) {
  const script = 'require "yaml"; require "json"; docs = []; YAML.parse_stream(File.read(ARGV[0])) { |d| docs << d.to_ruby }; print JSON.generate(docs)';
  const r = run(RUBY, ["-e", script, file]);
  assert.ok(r.ok, `ruby could not parse ${path.relative(REPO_ROOT, file)}:\n${r.out}`);
  return JSON.parse(r.out).filter((d) => d != null);
}

const seconds = (s) => {
  const m = /^(\d+)(ms|s|m)?$/.exec(String(s));
  assert.ok(m, `duration ${s}`);
  return Number(m[1]) * ({ ms: 0.001, s: 1, m: 60 }[m[2] || "s"]);
};

if (!RUBY && !process.env.CI) {
  test("deploy: k8s and compose YAML (skipped: ruby not installed)", { skip: "ruby not installed" }, () => {});
} else {
  test("deploy: k8s manifests", () => {
    assert.ok(RUBY, "CI is set but ruby is not installed");
    const dir = path.join(DEPLOY, "k8s");
    const docs = [];
    for (const f of fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f))) docs.push(...loadYAML(path.join(dir, f)));
    const byKind = (k) => docs.filter((d) => d.kind === k);
    for (const d of docs) {
      assert.ok(d.apiVersion && d.kind && d.metadata && d.metadata.name, `every manifest has apiVersion, kind and metadata.name: ${JSON.stringify(d).slice(0, 200)}`);
    }

    const [dep] = byKind("Deployment");
    assert.ok(dep, "a Deployment");
    assert.equal(dep.spec.replicas, 3);
    const pod = dep.spec.template.spec;
    assert.deepEqual(dep.spec.selector.matchLabels, dep.spec.template.metadata.labels);
    const [c] = pod.containers;
    assert.equal(c.readinessProbe.httpGet.path, "/readyz");
    assert.equal(c.livenessProbe.httpGet.path, "/healthz");
    const preStop = c.lifecycle.preStop;
    const preStopS = preStop.sleep ? preStop.sleep.seconds : 0;
    assert.ok(preStopS > 0, "preStop waits so the endpoints drop the pod before SIGTERM");
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, "resources set");

    const [cm] = byKind("ConfigMap");
    const [secret] = byKind("Secret");
    assert.ok(Object.keys(cm.data).every((k) => k.startsWith("ELCHAT_")), "ConfigMap holds ELCHAT_* settings");
    for (const k of ["ELCHAT_SECRET", "ELCHAT_API_KEY", "ELCHAT_DATABASE_URL"]) assert.ok(k in secret.stringData, `Secret has ${k}`);
    for (const k of ["ELCHAT_SECRET", "ELCHAT_API_KEY", "ELCHAT_DATABASE_URL"]) assert.ok(!(k in cm.data), `${k} is not in the ConfigMap`);
    const refs = c.envFrom.map((e) => (e.configMapRef || e.secretRef).name);
    assert.ok(refs.includes(cm.metadata.name) && refs.includes(secret.metadata.name), "the container reads both");

    // SIGKILL must never cut the drain short.
    const drain = seconds(cm.data.ELCHAT_DRAIN_TIMEOUT || "20s");
    assert.ok(pod.terminationGracePeriodSeconds > preStopS + drain, `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} > preStop ${preStopS}s + drain ${drain}s`);

    const [svc] = byKind("Service");
    assert.deepEqual(svc.spec.selector, dep.spec.template.metadata.labels);
    assert.equal(svc.spec.ports[0].targetPort, c.ports[0].name);
    const [pdb] = byKind("PodDisruptionBudget");
    assert.deepEqual(pdb.spec.selector.matchLabels, dep.spec.template.metadata.labels);
    assert.ok(pdb.spec.maxUnavailable === 1 || pdb.spec.minAvailable >= 2);
  });

  test("deploy: compose.yaml", () => {
    assert.ok(RUBY, "CI is set but ruby is not installed");
    const [compose] = loadYAML(path.join(DEPLOY, "compose.yaml"));
    const s = compose.services;
    for (const n of ["node1", "node2", "node3"]) {
      const env = s[n].environment;
      assert.ok(env, `${n} has an environment (merged from the x-elchat anchor)`);
      assert.equal(env.ELCHAT_REDIS_URL, "redis://redis:6379/0");
      assert.match(env.ELCHAT_DATABASE_URL, /^postgres:\/\/.*@postgres:5432\//);
      assert.equal(env.ELCHAT_MIGRATE, "true");
      assert.match(env.ELCHAT_SECRET, /^\$\{ELCHAT_SECRET/);
      assert.ok(s[n].ulimits.nofile.soft >= 65536, `${n} raises nofile`);
      assert.ok(seconds(s[n].stop_grace_period) > seconds(env.ELCHAT_DRAIN_TIMEOUT), `${n}: stop_grace_period exceeds the drain`);
    }
    // nginx mounts the files of deploy/nginx; the upstream list names the nodes.
    const mounts = s.nginx.volumes.map((v) => v.split(":"));
    for (const [src, dst] of mounts) {
      assert.ok(fs.existsSync(path.join(DEPLOY, src)), `nginx mounts ${src}, which exists`);
      assert.equal(path.basename(src), path.basename(dst));
    }
    const upstreams = fs.readFileSync(path.join(NGINX_DIR, "elchat-upstreams.conf"), "utf8");
    for (const n of ["node1", "node2", "node3"]) assert.match(upstreams, new RegExp(`server ${n}:4000`));
    assert.ok(s.redis && s.postgres, "redis and postgres services");
    assert.ok(s.postgres.volumes.some((v) => v.split(":")[0] in compose.volumes), "postgres data on a named volume");
  });
}

const dockerCompose = which("docker") && run("docker", ["compose", "version"]).ok;
test("deploy: docker compose config", { skip: dockerCompose ? false : "the docker compose plugin is not available here" }, () => {
  const r = run("docker", ["compose", "-f", path.join(DEPLOY, "compose.yaml"), "config", "--quiet"], { env: { ...process.env, ELCHAT_SECRET: "x".repeat(32) } });
  assert.ok(r.ok, r.out);
});

test("deploy: Dockerfile builds a static non-root image", () => {
  const df = fs.readFileSync(path.join(DEPLOY, "Dockerfile"), "utf8");
  assert.match(df, /^FROM golang:1\.26 AS build$/m);
  assert.match(df, /CGO_ENABLED=0 .*go build -trimpath -ldflags "-s -w"/);
  assert.match(df, /^FROM gcr\.io\/distroless\/static-debian12:nonroot$/m);
  assert.match(df, /^USER 65532:65532$/m);
  assert.match(df, /^EXPOSE 4000$/m);
  const goMod = fs.readFileSync(path.join(REPO_ROOT, "go.mod"), "utf8");
  const goVersion = /^go (\d+\.\d+)/m.exec(goMod)[1];
  assert.equal(goVersion, "1.26", "the builder image's Go matches go.mod");
});

const SYSTEMD_ANALYZE = which("systemd-analyze");
test("deploy: systemd unit", () => {
  const unit = fs.readFileSync(path.join(DEPLOY, "systemd", "elchat.service"), "utf8");
  for (const line of ["LimitNOFILE=1048576", "EnvironmentFile=/etc/elchat/env", "Restart=on-failure", "KillSignal=SIGTERM", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=elchat"]) {
    assert.ok(unit.split("\n").includes(line), `elchat.service has ${line}`);
  }
  const stop = seconds(/^TimeoutStopSec=(\S+)$/m.exec(unit)[1]);
  assert.ok(stop > 20, `TimeoutStopSec ${stop}s exceeds the default 20s drain`);
  if (!SYSTEMD_ANALYZE) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-unit-"));
  const file = path.join(dir, "elchat.service");
  // verify checks that ExecStart exists; point it at something that does.
  fs.writeFileSync(file, unit.replace(/^ExecStart=\/usr\/local\/bin\/elchat /m, `ExecStart=${process.execPath} `));
  const r = run(SYSTEMD_ANALYZE, ["verify", file]);
  fs.rmSync(dir, { recursive: true, force: true });
  assert.ok(r.ok, `systemd-analyze verify:\n${r.out}`);
  assert.equal(r.out.trim(), "", `systemd-analyze verify warned:\n${r.out}`);
});
