"use strict";
// ElChat token for the signed-in user, signed with the secret the ElChat
// nodes run with (ELCHAT_SECRET). Node's built-in crypto only: an HS256 JWT
// is base64url(header).base64url(payload).base64url(HMAC-SHA256).
const crypto = require("node:crypto");

const TTL = 3600; // seconds

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

// mintElchatToken returns an HS256 JWT whose sub is the user's id as a string.
function mintElchatToken({ userId, name }, { ttl = TTL, secret = process.env.ELCHAT_SECRET } = {}) {
  if (!secret) throw new Error("ELCHAT_SECRET is not set");
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(
    JSON.stringify({
      sub: String(userId),
      name: String(name),
      exp: Math.floor(Date.now() / 1000) + ttl,
    })
  );
  const signature = crypto.createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

module.exports = { mintElchatToken };

// Command line, for scripts and tests: node node_token.js USER_ID NAME
if (require.main === module) {
  const [userId, name] = process.argv.slice(2);
  if (!userId || !name) {
    console.error("usage: node node_token.js USER_ID NAME");
    process.exit(2);
  }
  console.log(mintElchatToken({ userId, name }));
}
