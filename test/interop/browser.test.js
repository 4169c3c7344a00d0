"use strict";
// The demo page (elchat serve --dev) in a real browser: Debian's chromium
// driven by playwright-core. Two users chat both ways, see each other type
// and read, get a lobby notification for a closed chat, and find history and
// unread counts again after a reload.
//
// Skipped only when /usr/bin/chromium is missing and CI is unset; under CI
// a missing browser fails the test. Screenshots of both pages go to
// test-output/ when a step fails.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { serverTest, httpGet, REPO_ROOT } = require("./helpers");

const CHROMIUM = process.env.ELCHAT_CHROMIUM || "/usr/bin/chromium";
const OUT_DIR = path.join(REPO_ROOT, "test-output");
// UI waits: the contact list polls presence every 3s, so allow a few polls.
const UI_MS = 10000;

function loadPlaywright() {
  try {
    return require("playwright-core");
  } catch (e) {
    return null;
  }
}

const haveChromium = fs.existsSync(CHROMIUM);
const playwright = loadPlaywright();

if ((!haveChromium || !playwright) && !process.env.CI) {
  const what = !haveChromium ? `${CHROMIUM} not found (apt-get install chromium)` : "playwright-core is not installed (npm ci in test/interop)";
  test(`browser: demo page (skipped: ${what}; set CI=1 to make this a failure)`, { skip: what }, () => {});
} else {
  serverTest("browser: two users chat on the demo page (typing, read receipts, notification, reload)", { timeout: 120000, env: { ELCHAT_DEV: "true" } }, async (ctx) => {
    assert.ok(haveChromium, `CI is set but ${CHROMIUM} is missing: install Debian's chromium`);
    assert.ok(playwright, "CI is set but playwright-core is not installed in test/interop/node_modules");
    const base = ctx.server.httpUrl;

    // The demo endpoints themselves.
    const usersRes = await httpGet(`${base}/demo/users`);
    assert.equal(usersRes.status, 200, `GET /demo/users on a --dev node: is pkg/demo mounted at "/" in cmd/elchat under --dev? (${usersRes.status} ${usersRes.body.slice(0, 100)})`);
    const page = await httpGet(`${base}/`);
    assert.equal(page.status, 200);
    assert.match(page.body, /<title>ElChat demo<\/title>/);
    const users = JSON.parse(usersRes.body);
    assert.deepEqual(users.map((u) => [u.id, u.name]), [["1", "alice"], ["2", "bob"], ["3", "carol"], ["4", "dave"], ["5", "erin"]]);
    assert.ok(users.every((u) => u.online === false), `nobody is connected yet: ${JSON.stringify(users)}`);
    assert.equal((await httpGet(`${base}/demo/token?user=42`)).status, 404, "tokens only for demo users");
    const mjs = await httpGet(`${base}/demo/phoenix.mjs`);
    assert.equal(mjs.status, 200);
    assert.match(mjs.headers["content-type"], /javascript/);

    const browser = await playwright.chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const pages = {};
    const pageErrors = [];
    try {
      const open = async (label, user) => {
        const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
        const page = await context.newPage();
        page.setDefaultTimeout(UI_MS);
        page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
        page.on("console", (m) => {
          if (m.type() === "error") pageErrors.push(`${label} console: ${m.text()}`);
        });
        pages[label] = page;
        await page.goto(`${base}/?user=${user}`);
        return page;
      };
      const tid = (page, id) => page.locator(`[data-testid="${id}"]`);
      const messages = (page) => page.locator('[data-testid="messages"] [data-testid="message"]');

      const alice = await open("alice", 1);
      const bob = await open("bob", 2);
      await tid(alice, "me-name").filter({ hasText: "alice" }).waitFor();
      await tid(bob, "me-name").filter({ hasText: "bob" }).waitFor();
      await tid(alice, "conn-status").filter({ hasText: "online" }).waitFor();
      await tid(bob, "conn-status").filter({ hasText: "online" }).waitFor();

      // Contacts: everybody but me; online dots follow the lobby presence.
      const aliceContacts = await tid(alice, "contact-list").locator("li").evaluateAll((lis) => lis.map((li) => li.dataset.testid));
      assert.deepEqual(aliceContacts, ["contact-2", "contact-3", "contact-4", "contact-5"]);
      await alice.locator('[data-testid="online-2"][data-online="true"]').waitFor();
      await bob.locator('[data-testid="online-1"][data-online="true"]').waitFor();
      assert.equal(await tid(alice, "online-3").getAttribute("data-online"), "false", "carol is not connected");

      // Both open their chat; presence shows the other one in it.
      await tid(alice, "contact-2").click();
      await tid(bob, "contact-1").click();
      await tid(alice, "chat-name").filter({ hasText: "bob" }).waitFor();
      await tid(alice, "chat-status").filter({ hasText: "in this chat" }).waitFor();
      await tid(bob, "chat-status").filter({ hasText: "in this chat" }).waitFor();
      assert.equal(await messages(alice).count(), 0, "a new chat has no history");

      // Alice types: bob sees the indicator, then the message; it clears.
      await tid(alice, "composer").pressSequentially("hello bob", { delay: 20 });
      await tid(bob, "typing").filter({ hasText: "alice is typing…" }).waitFor();
      await tid(alice, "composer").press("Enter");
      await messages(bob).filter({ hasText: "hello bob" }).waitFor();
      await tid(bob, "typing").filter({ hasText: /^$/ }).waitFor();
      assert.equal(await tid(alice, "composer").inputValue(), "", "the composer is cleared after sending");

      // Bob has the chat on screen, so it is read: alice's message turns "seen".
      const aliceFirst = messages(alice).filter({ hasText: "hello bob" });
      await aliceFirst.locator('[data-testid="receipt"][data-status="seen"]').waitFor();
      assert.equal(await aliceFirst.getAttribute("data-mine"), "true");

      // Bob answers with markup, which must arrive as text.
      await tid(bob, "composer").fill("hi <b>alice</b> & <img src=x onerror=alert(1)>");
      await tid(bob, "send").click();
      const reply = messages(alice).filter({ hasText: "hi <b>alice</b>" });
      await reply.waitFor();
      assert.equal(await reply.locator('[data-testid="message-body"]').textContent(), "hi <b>alice</b> & <img src=x onerror=alert(1)>");
      assert.equal(await tid(alice, "messages").locator("b, img").count(), 0, "user text is never parsed as HTML");
      await messages(bob).filter({ hasText: "hi <b>alice</b>" }).locator('[data-testid="receipt"][data-status="seen"]').waitFor();
      assert.equal(await messages(alice).count(), 2);
      assert.equal(await messages(bob).count(), 2, "the sender sees its own message once (reply and broadcast deduped)");

      // Alice closes the chat; bob's presence sees her leave it.
      await tid(alice, "back").click();
      await tid(alice, "no-chat").waitFor();
      await tid(bob, "chat-status").filter({ hasText: /^online$/ }).waitFor();

      // Bob writes twice: alice gets lobby notifications, a badge and a toast.
      await tid(bob, "composer").fill("are you there?");
      await tid(bob, "composer").press("Enter");
      await tid(alice, "toast").filter({ hasText: "are you there?" }).waitFor();
      await tid(bob, "composer").fill("ping");
      await tid(bob, "composer").press("Enter");
      await alice.locator('[data-testid="unread-2"]:visible').filter({ hasText: /^2$/ }).waitFor();
      await messages(bob).filter({ hasText: "ping" }).locator('[data-testid="receipt"][data-status="sent"]').waitFor();
      assert.equal(await tid(alice, "unread-3").isVisible(), false, "no badge on other contacts");

      // Reload alice: the lobby's unread count and the history are back.
      await alice.reload();
      await tid(alice, "conn-status").filter({ hasText: "online" }).waitFor();
      await alice.locator('[data-testid="unread-2"]:visible').filter({ hasText: /^2$/ }).waitFor();
      await tid(alice, "contact-2").locator(".preview").filter({ hasText: "ping" }).waitFor();
      await tid(alice, "contact-2").click();
      await messages(alice).nth(3).waitFor();
      const history = await messages(alice).locator('[data-testid="message-body"]').allTextContents();
      assert.deepEqual(history, ["hello bob", "hi <b>alice</b> & <img src=x onerror=alert(1)>", "are you there?", "ping"]);
      // Opening the chat reads it: the badge goes, bob's messages turn "seen".
      assert.equal(await tid(alice, "unread-2").isVisible(), false);
      await messages(bob).filter({ hasText: "ping" }).locator('[data-testid="receipt"][data-status="seen"]').waitFor();
      // Alice's own earlier message still shows as seen after the reload.
      await messages(alice).filter({ hasText: "hello bob" }).locator('[data-testid="receipt"][data-status="seen"]').waitFor();

      // The server agrees: nothing unread for alice any more.
      await alice.reload();
      await tid(alice, "conn-status").filter({ hasText: "online" }).waitFor();
      await alice.locator('[data-testid="contact-list"][data-lobby="joined"]').waitFor({ state: "attached" });
      assert.equal(await tid(alice, "unread-2").isVisible(), false, "unread is 0 after reading");

      // Edit, delete and block from the page.
      await tid(alice, "contact-2").click();
      const mine = messages(alice).filter({ hasText: "hello bob" });
      alice.once("dialog", (d) => d.accept("hello bob (edited)"));
      await mine.locator('[data-testid="edit"]').click();
      await messages(bob).filter({ hasText: "hello bob (edited)" }).locator('[data-testid="edited"]').waitFor();
      await messages(alice).filter({ hasText: "hello bob (edited)" }).locator('[data-testid="delete"]').click();
      await messages(bob).filter({ hasText: "message deleted" }).waitFor();
      assert.equal(await messages(bob).filter({ hasText: "hello bob" }).count(), 0, "a deleted body is gone from the other side");
      await tid(alice, "block").click();
      await tid(alice, "block").filter({ hasText: "Unblock" }).waitFor();
      await tid(bob, "composer").fill("still there?");
      await tid(bob, "composer").press("Enter");
      await messages(bob).filter({ hasText: "not sent: blocked by the recipient" }).waitFor();
      await tid(alice, "block").click();
      await tid(alice, "block").filter({ hasText: /^Block$/ }).waitFor();
      await tid(bob, "composer").fill("unblocked");
      await tid(bob, "composer").press("Enter");
      await messages(alice).filter({ hasText: "unblocked" }).waitFor();

      assert.deepEqual(pageErrors, [], "no script errors on the pages");
    } catch (e) {
      fs.mkdirSync(OUT_DIR, { recursive: true });
      for (const [label, page] of Object.entries(pages)) {
        const file = path.join(OUT_DIR, `browser-${label}.png`);
        try {
          await page.screenshot({ path: file, fullPage: true });
          process.stderr.write(`screenshot: ${file}\n`);
        } catch {}
      }
      if (pageErrors.length) e.message += `\npage errors: ${pageErrors.join("\n")}`;
      throw e;
    } finally {
      await browser.close();
    }
  });
}
