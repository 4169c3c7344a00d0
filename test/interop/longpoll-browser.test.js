"use strict";
// The demo page in real Chromium (playwright-core) behind a proxy that
// refuses WebSocket upgrades, as some corporate proxies do: phoenix.js
// falls back to long-polling by itself (the page sets longPollFallbackMs)
// and chats with a user on WebSockets. The refusing proxy is a second nginx
// server in front of the deploy's own (deploy/nginx/elchat.conf), so the
// long-polls also cross the project's nginx configuration.
//
// Skipped only when chromium, playwright-core or nginx is missing and CI is
// unset.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { serverTest, freePort, httpGet, REPO_ROOT } = require("./helpers");
const { NGINX, nginxWrapper, startNginx } = require("./nginx");

const CHROMIUM = process.env.ELCHAT_CHROMIUM || "/usr/bin/chromium";
const OUT_DIR = path.join(REPO_ROOT, "test-output");
const UI_MS = 15000;

let playwright = null;
try {
  playwright = require("playwright-core");
} catch {}
const missing = !fs.existsSync(CHROMIUM) ? `${CHROMIUM} not found` : !playwright ? "playwright-core not installed" : !NGINX ? "nginx not installed" : "";

if (missing && !process.env.CI) {
  test(`longpoll browser: fallback (skipped: ${missing})`, { skip: missing }, () => {});
} else {
  serverTest("longpoll browser: WebSockets refused by a proxy, the demo page falls back to long-polling and chats with a WebSocket user", { timeout: 120000, env: { ELCHAT_DEV: "true" } }, async (ctx) => {
    assert.equal(missing, "", `CI is set but ${missing}`);
    const node = ctx.server;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "elchat-nginx-lp-"));
    const port = await freePort(); // deploy/nginx/elchat.conf
    const blockPort = await freePort(); // the proxy that refuses upgrades
    const blocking = `
  server {
    listen 127.0.0.1:${blockPort};
    location = /socket/websocket { return 403; }
    location / {
      proxy_pass http://127.0.0.1:${port};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_read_timeout 30s;
    }
  }`;
    const ng = await startNginx(dir, nginxWrapper(dir, port, [node], blocking), port);
    const browser = await playwright.chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const pages = {};
    const pageErrors = [];
    try {
      const open = async (label, base, user) => {
        const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
        const page = await context.newPage();
        page.setDefaultTimeout(UI_MS);
        page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
        page.on("console", (m) => {
          // The refused upgrade itself is what the browser reports.
          if (m.type() === "error" && !/WebSocket connection to .* failed/.test(m.text())) pageErrors.push(`${label} console: ${m.text()}`);
        });
        pages[label] = page;
        await page.goto(`${base}/?user=${user}`);
        return page;
      };
      const tid = (page, id) => page.locator(`[data-testid="${id}"]`);
      const messages = (page) => page.locator('[data-testid="messages"] [data-testid="message"]');

      const alice = await open("alice", `http://127.0.0.1:${blockPort}`, 1);
      const bob = await open("bob", node.httpUrl, 2);
      await tid(alice, "conn-status").filter({ hasText: "online" }).waitFor();
      await tid(bob, "conn-status").filter({ hasText: "online" }).waitFor();
      assert.equal(await alice.evaluate(() => window.elchatTransport()), "LongPoll", "alice fell back to long-polling");
      assert.equal(await bob.evaluate(() => window.elchatTransport()), "WebSocket", "bob stays on WebSockets");
      const metrics = await httpGet(`${node.httpUrl}/metrics`);
      assert.match(metrics.body, /^elchat_longpoll_sessions 1$/m, "one long-poll session: alice's");

      // Lobby presence works both ways across the transports.
      await alice.locator('[data-testid="online-2"][data-online="true"]').waitFor();
      await bob.locator('[data-testid="online-1"][data-online="true"]').waitFor();

      await tid(alice, "contact-2").click();
      await tid(bob, "contact-1").click();
      await tid(alice, "chat-status").filter({ hasText: "in this chat" }).waitFor();
      await tid(bob, "chat-status").filter({ hasText: "in this chat" }).waitFor();

      // Typing and messages from the long-poll side to the WebSocket side…
      await tid(alice, "composer").pressSequentially("hello over long-poll", { delay: 20 });
      await tid(bob, "typing").filter({ hasText: "alice is typing…" }).waitFor();
      await tid(alice, "composer").press("Enter");
      await messages(bob).filter({ hasText: "hello over long-poll" }).waitFor();
      await messages(alice).filter({ hasText: "hello over long-poll" }).locator('[data-testid="receipt"][data-status="seen"]').waitFor();
      // …and back.
      await tid(bob, "composer").fill("hi from a websocket");
      await tid(bob, "composer").press("Enter");
      await messages(alice).filter({ hasText: "hi from a websocket" }).waitFor();
      await messages(bob).filter({ hasText: "hi from a websocket" }).locator('[data-testid="receipt"][data-status="seen"]').waitFor();
      assert.equal(await messages(alice).count(), 2);
      assert.equal(await messages(bob).count(), 2);

      // A reload keeps the fallback (remembered for the tab) and the history.
      await alice.reload();
      await tid(alice, "conn-status").filter({ hasText: "online" }).waitFor();
      assert.equal(await alice.evaluate(() => window.elchatTransport()), "LongPoll");
      await tid(alice, "contact-2").click();
      await messages(alice).nth(1).waitFor();
      assert.deepEqual(await messages(alice).locator('[data-testid="message-body"]').allTextContents(), ["hello over long-poll", "hi from a websocket"]);

      const access = fs.readFileSync(path.join(dir, "access.log"), "utf8");
      assert.match(access, /"GET \/socket\/websocket\?[^"]*" 403/, "the proxy refused the upgrade");
      assert.match(access, /"POST \/socket\/longpoll\?[^"]*" 200/, "long-poll posts went through");
      assert.deepEqual(pageErrors, [], "no script errors on the pages");
    } catch (e) {
      fs.mkdirSync(OUT_DIR, { recursive: true });
      for (const [label, page] of Object.entries(pages)) {
        try {
          await page.screenshot({ path: path.join(OUT_DIR, `longpoll-browser-${label}.png`), fullPage: true });
        } catch {}
      }
      if (pageErrors.length) e.message += `\npage errors: ${pageErrors.join("\n")}`;
      e.message += `\nnginx: ${ng.log().slice(-3000)}`;
      throw e;
    } finally {
      await browser.close();
      ng.proc.kill("SIGQUIT");
      await ng.exited;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
