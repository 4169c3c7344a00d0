// ElChat in the browser with the official phoenix client (npm install phoenix).
// The host page provides the token it minted for the signed-in user and the
// user's id; nothing else is needed.
import { Socket, Presence } from "phoenix";

// chatTopic names the chat of two users: "chat:A:B" with the ids in numeric
// order when both are integers, else in byte order.
export function chatTopic(a, b) {
  a = String(a);
  b = String(b);
  const num = /^[0-9]+$/;
  let aFirst;
  if (num.test(a) && num.test(b)) {
    aFirst = BigInt(a) <= BigInt(b);
  } else {
    const x = new TextEncoder().encode(a);
    const y = new TextEncoder().encode(b);
    let d = 0;
    for (let i = 0; d === 0 && i < Math.min(x.length, y.length); i++) d = x[i] - y[i];
    aFirst = (d || x.length - y.length) <= 0;
  }
  return aFirst ? `chat:${a}:${b}` : `chat:${b}:${a}`;
}

// connectElchat opens the socket and joins the user's lobby.
//   url:            ElChat's socket endpoint: "/socket" when the page and
//                   ElChat share a host (behind one proxy), else
//                   "wss://chat.example.com/socket"
//   onUnread(list): [{room, opponent_id, unread, last_message}] on every (re)join
//   onNotification(room, message): a message in a chat the user has not open
export function connectElchat({ token, me, url = "/socket", transport, onUnread, onNotification, onError }) {
  const opts = { params: { token } };
  if (transport) opts.transport = transport; // only outside browsers (Node: the "ws" package)
  const socket = new Socket(url, opts);
  if (onError) socket.onError(onError);
  socket.connect();

  const lobby = socket.channel(`user:${me}`);
  lobby.on("notification", ({ room, message }) => onNotification && onNotification(room, message));
  lobby
    .join()
    .receive("ok", ({ unread }) => onUnread && onUnread(unread))
    .receive("error", (resp) => onError && onError(resp));

  return {
    socket,
    lobby,
    openChat: (other, handlers) => openChat(socket, me, other, handlers),
    disconnect: () => socket.disconnect(),
  };
}

// openChat joins the chat with `other`. Handlers:
//   onMessage(message)     each message once (history oldest first; older
//                          pages from loadOlder arrive later: order by id)
//   onHistory({hasMore})   after the join reply
//   onRead({user_id, last_id})   read receipts (both sides)
//   onTyping({user_id, name})    the other side is typing
//   onPresence([{id, name}])     who has this chat open right now
function openChat(socket, me, other, handlers = {}) {
  const { onMessage, onHistory, onRead, onTyping, onPresence } = handlers;
  const topic = chatTopic(me, other);
  const seen = new Set();
  let newest = 0;
  let oldest = 0;
  let lastTyping = 0;

  // Params are re-read on every rejoin: after a reconnect the server sends
  // only what came after the newest message we already have.
  const channel = socket.channel(topic, () => (newest ? { last_id: newest } : {}));

  const deliver = (m) => {
    if (seen.has(m.id)) return; // the sender gets its message as reply and broadcast
    seen.add(m.id);
    newest = Math.max(newest, m.id);
    oldest = oldest ? Math.min(oldest, m.id) : m.id;
    if (onMessage) onMessage(m);
  };
  channel.on("new_message", deliver);
  channel.on("read", (p) => onRead && onRead(p));
  channel.on("typing", (p) => String(p.user_id) !== String(me) && onTyping && onTyping(p));

  const presence = new Presence(channel);
  presence.onSync(() => onPresence && onPresence(presence.list((id, { metas }) => ({ id, name: metas[0].name }))));

  const joined = new Promise((resolve, reject) => {
    channel
      .join()
      .receive("ok", ({ messages, has_more }) => {
        messages.forEach(deliver);
        if (onHistory) onHistory({ hasMore: has_more });
        resolve();
      })
      .receive("error", reject)
      .receive("timeout", () => reject(new Error("join timeout")));
  });

  const push = (event, payload) =>
    new Promise((resolve, reject) => {
      channel
        .push(event, payload)
        .receive("ok", resolve)
        .receive("error", (resp) => reject(new Error(resp.reason)))
        .receive("timeout", () => reject(new Error(`${event}: timeout`)));
    });

  return {
    topic,
    channel,
    joined,
    // send resolves with the stored message. client_id makes a retry safe:
    // the server stores a (user, client_id) pair once.
    send: (body, clientId = crypto.randomUUID()) =>
      push("new_message", { body, client_id: clientId }).then((m) => {
        deliver(m);
        return m;
      }),
    // markRead tells the other side (and the lobby's unread count) that
    // everything up to lastId was read. Call it when the chat is on screen.
    markRead: (lastId = newest) => push("read", { last_id: lastId }),
    // typing: call on input; sends at most one event every 2 seconds.
    typing: () => {
      const now = Date.now();
      if (now - lastTyping < 2000) return;
      lastTyping = now;
      channel.push("typing", {});
    },
    // loadOlder fetches the page before the oldest message held.
    loadOlder: () =>
      push("history", { before: oldest }).then(({ messages, has_more }) => {
        messages.forEach(deliver);
        return { hasMore: has_more };
      }),
    leave: () => channel.leave(),
  };
}
