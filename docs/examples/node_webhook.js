// Verifies an ElChat webhook (ElChat-Signature: t=<unix>,v1=<hex HMAC-SHA256
// of "<t>.<raw body>">) with node:crypto only, and returns the event.
const crypto = require("node:crypto");

const TOLERANCE = 300; // seconds: an older timestamp is a replay

function verifyElchatWebhook(rawBody, header, secret, now = Date.now() / 1000) {
  const parts = String(header || "").split(",").map((p) => p.trim().split("="));
  const t = (parts.find(([k]) => k === "t") || [])[1] || "";
  if (!/^\d+$/.test(t) || Math.abs(now - Number(t)) > TOLERANCE) throw new Error("stale or missing timestamp");
  const expected = Buffer.from(crypto.createHmac("sha256", secret).update(`${t}.`).update(rawBody).digest("hex"));
  const ok = parts.some(([k, v]) => k === "v1" && v && v.length === expected.length && crypto.timingSafeEqual(Buffer.from(v), expected));
  if (!ok) throw new Error("bad signature");
  return JSON.parse(rawBody);
}
module.exports = { verifyElchatWebhook };

// A bare receiver for trying it out (node node_webhook.js PORT): prints each
// verified event as one JSON line, answers 400 to anything unsigned.
if (require.main === module) {
  const http = require("node:http");
  http
    .createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        try {
          const event = verifyElchatWebhook(Buffer.concat(chunks), req.headers["elchat-signature"], process.env.ELCHAT_WEBHOOK_SECRET);
          console.log(JSON.stringify(event));
          res.writeHead(200).end();
        } catch {
          res.writeHead(400).end();
        }
      });
    })
    .listen(Number(process.argv[2]), "127.0.0.1", () => console.log("listening"));
}
