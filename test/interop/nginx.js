"use strict";
// A real nginx loading deploy/nginx/elchat.conf on loopback, for the deploy
// and long-poll tests: a minimal main config around it (pid, logs and temp
// paths in a temp dir, the listen line and the upstream list in the two
// files elchat.conf includes), plus whatever extra http-level config a test
// needs (a second server that refuses WebSocket upgrades, say).
const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const { httpGet, sleep, REPO_ROOT } = require("./helpers");

const DEPLOY = path.join(REPO_ROOT, "deploy");
const NGINX_DIR = path.join(DEPLOY, "nginx");

function which(cmd, extra = []) {
  for (const dir of [...(process.env.PATH || "").split(":"), ...extra]) {
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {}
  }
  return null;
}

function run(cmd, args, opts = {}) {
  try {
    const out = execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 60000, ...opts });
    return { ok: true, out };
  } catch (e) {
    return { ok: false, out: `${e.stdout || ""}${e.stderr || ""}${e.message}` };
  }
}

const NGINX = which("nginx", ["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"]);
const RUBY = which("ruby");

// ------------------------------------------------------------------ nginx

// nginxWrapper writes the minimal main config a test needs around
// deploy/nginx/elchat.conf: pid, logs and temp paths in dir, the listen line
// and the upstream list in the two files elchat.conf includes.
function nginxWrapper(dir, port, nodes, extra = "") {
  fs.writeFileSync(path.join(dir, "elchat-upstreams.conf"), nodes.map((n) => `server 127.0.0.1:${n.port} max_fails=1 fail_timeout=30s;\n`).join(""));
  fs.writeFileSync(path.join(dir, "elchat-listen.conf"), `listen 127.0.0.1:${port};\n`);
  const conf = `
worker_processes 1;
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
  include ${path.join(NGINX_DIR, "elchat.conf")};
${extra}
}
`;
  const file = path.join(dir, "nginx.conf");
  fs.writeFileSync(file, conf);
  return file;
}

async function startNginx(dir, conf, port) {
  const t = run(NGINX, ["-t", "-c", conf, "-e", path.join(dir, "error.log")]);
  assert.ok(t.ok, `nginx -t failed for deploy/nginx/elchat.conf:\n${t.out}`);
  const proc = spawn(NGINX, ["-c", conf, "-e", path.join(dir, "error.log"), "-g", "daemon off;"], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  proc.stdout.on("data", (c) => (log += c));
  proc.stderr.on("data", (c) => (log += c));
  const exited = new Promise((r) => proc.on("exit", (code, signal) => r({ code, signal })));
  let done = null;
  exited.then((x) => (done = x));
  const deadline = Date.now() + 10000;
  let last = "";
  while (Date.now() < deadline) {
    if (done) throw new Error(`nginx exited ${JSON.stringify(done)}: ${log}\n${readLog(dir)}`);
    try {
      const res = await httpGet(`http://127.0.0.1:${port}/healthz`, { timeout: 500 });
      if (res.status === 200) return { proc, exited, log: () => log + readLog(dir) };
      last = `${res.status} ${res.body}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  proc.kill("SIGKILL");
  throw new Error(`nginx did not proxy /healthz within 10s (last: ${last})\n${log}\n${readLog(dir)}`);
}

function readLog(dir) {
  try {
    return fs.readFileSync(path.join(dir, "error.log"), "utf8").slice(-5000);
  } catch {
    return "";
  }
}

module.exports = { which, run, NGINX, RUBY, DEPLOY, NGINX_DIR, nginxWrapper, startNginx, readLog };
