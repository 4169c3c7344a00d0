"use strict";
// ElChat chat grant: lets the signed-in user open the chat with peer when
// ElChat runs with --chat-policy granted. Render it next to the "message this
// user" button; the browser passes it in the chat join: {grant: "<jwt>"}.
const crypto = require("node:crypto");

const TTL = 3600; // seconds; a grant is needed once, the chat then stays open

function mintElchatGrant({ userId, peerId }, { ttl = TTL, secret = process.env.ELCHAT_SECRET } = {}) {
  if (!secret) throw new Error("ELCHAT_SECRET is not set");
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: String(userId), peer: String(peerId), exp: Math.floor(Date.now() / 1000) + ttl })}`;
  return `${body}.${crypto.createHmac("sha256", secret).update(body).digest("base64url")}`;
}

module.exports = { mintElchatGrant };

// Command line, for scripts and tests: node node_grant.js USER_ID PEER_ID
if (require.main === module) {
  const [userId, peerId] = process.argv.slice(2);
  if (!userId || !peerId) {
    console.error("usage: node node_grant.js USER_ID PEER_ID");
    process.exit(2);
  }
  console.log(mintElchatGrant({ userId, peerId }));
}
