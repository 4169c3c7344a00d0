// ElChat demo client: the unmodified phoenix.js Socket, Channel and Presence
// against an ElChat node. Every piece of user text goes into the page with
// textContent, never as HTML.
import { Socket, Presence } from "/demo/phoenix.mjs";

const USERS_POLL_MS = 3000;
const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOW_MS = 3000;
const TOAST_MS = 5000;

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v); // CSSOM: allowed by the page's CSP
    else if (k.startsWith("data-") || k === "title" || k === "type") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

// chatTopic names the chat of two users: ids in numeric order when both are
// integers, else in byte order of their UTF-8 encoding.
export function chatTopic(a, b) {
  a = String(a);
  b = String(b);
  const num = /^[0-9]+$/;
  let aFirst;
  if (num.test(a) && num.test(b)) aFirst = BigInt(a) <= BigInt(b);
  else aFirst = compareBytes(a, b) <= 0;
  return aFirst ? `chat:${a}:${b}` : `chat:${b}:${a}`;
}

function compareBytes(a, b) {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

function colorFor(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${Math.round((h * 137.508) % 360)} 55% 50%)`;
}

function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

async function getJSON(url) {
  const res = await fetch(url, { cache: "no-store" });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

// ------------------------------------------------------------------ state

const state = {
  me: null, // {id, name}
  users: new Map(), // id -> {id, name, online}
  contacts: new Map(), // id -> {unread, preview, counted:Set}
  blocked: new Set(), // ids this user blocked from this page
  socket: null,
  lobby: null,
  chat: null, // the open chat, see openChat
};

function contact(id) {
  id = String(id);
  let c = state.contacts.get(id);
  if (!c) {
    c = { unread: 0, preview: "", counted: new Set() };
    state.contacts.set(id, c);
  }
  return c;
}

function nameOf(id) {
  const u = state.users.get(String(id));
  return u ? u.name : `user ${id}`;
}

// ------------------------------------------------------------------ boot

async function main() {
  const params = new URLSearchParams(location.search);
  const users = await getJSON("/demo/users");
  for (const u of users) state.users.set(String(u.id), u);
  const id = params.get("user");
  if (!id || !state.users.has(id)) {
    showLogin(users);
    return;
  }
  const { token, user } = await getJSON(`/demo/token?user=${encodeURIComponent(id)}`);
  state.me = { id: String(user.id), name: user.name };
  document.title = `${user.name} · ElChat demo`;
  $("me-name").textContent = user.name;
  $("whoami").hidden = false;
  $("app").hidden = false;
  for (const u of users) if (String(u.id) !== state.me.id) contact(u.id);
  renderContacts();
  connect(token);
  setInterval(pollUsers, USERS_POLL_MS);
  wireComposer();
  $("block").addEventListener("click", toggleBlock);
  $("back").addEventListener("click", closeChat);
  $("load-older").addEventListener("click", loadOlder);
  document.addEventListener("visibilitychange", markRead);
  window.addEventListener("focus", markRead);
}

function showLogin(users) {
  const list = $("user-picker");
  list.replaceChildren();
  for (const u of users) {
    const btn = el(
      "button",
      { type: "button", "data-testid": `login-${u.id}` },
      el("span", { class: "avatar", style: { background: colorFor(u.id) }, text: u.name.slice(0, 1) }),
      el("span", { text: u.name })
    );
    btn.addEventListener("click", () => {
      location.search = `?user=${encodeURIComponent(u.id)}`;
    });
    list.append(el("li", {}, btn));
  }
  $("login").hidden = false;
}

async function pollUsers() {
  try {
    const users = await getJSON("/demo/users");
    for (const u of users) state.users.set(String(u.id), u);
    renderContacts();
    renderChatStatus();
  } catch {
    // the node is restarting; the next poll will tell
  }
}

// ------------------------------------------------------------------ socket

function connect(token) {
  // Where WebSockets are blocked (a proxy refuses the upgrade, or it
  // hangs), phoenix.js falls back to long-polling /socket/longpoll by
  // itself after this long, and remembers it for the tab's session.
  const socket = new Socket("/socket", { params: { token }, longPollFallbackMs: 2500 });
  state.socket = socket;
  window.elchatTransport = () => (socket.conn ? socket.transportName(socket.conn.constructor) : "none");
  socket.onOpen(() => setConn("online", true));
  socket.onError(() => setConn("reconnecting…", false));
  socket.onClose((e) => setConn(e && e.code === 4003 ? `${e.reason || "banned"}: reconnecting when the ban ends…` : "reconnecting…", false));
  socket.connect();

  const lobby = socket.channel(`user:${state.me.id}`);
  state.lobby = lobby;
  lobby.on("notification", onNotification);
  // receive("ok") fires again on every rejoin: the reply is the truth then.
  lobby.join().receive("ok", ({ unread }) => {
    for (const c of state.contacts.values()) {
      c.unread = 0;
      c.counted.clear();
    }
    for (const u of unread || []) {
      const other = String(u.opponent_id);
      if (state.chat && state.chat.other === other) continue; // being read right now
      const c = contact(other);
      c.unread = u.unread;
      if (u.last_message) {
        c.preview = u.last_message.body;
        c.counted.add(u.last_message.id);
      }
    }
    renderContacts();
    $("contact-list").dataset.lobby = "joined";
    pollUsers(); // we are online now; others may be too
  });
}

function setConn(text, ok) {
  $("conn-status").textContent = text;
  $("conn-dot").classList.toggle("online", ok);
}

function onNotification({ room, message }) {
  if (!message) return;
  const other = String(message.user_id === state.me.id ? message.opponent_id : message.user_id);
  const c = contact(other);
  c.preview = message.body;
  if (state.chat && state.chat.room === room) {
    renderContacts();
    return;
  }
  if (!c.counted.has(message.id)) {
    c.counted.add(message.id);
    c.unread += 1;
    toast(other, message.body);
  }
  renderContacts();
}

// ------------------------------------------------------------------ contacts

function renderContacts() {
  const list = $("contact-list");
  const items = [];
  for (const [id, c] of state.contacts) {
    const u = state.users.get(id) || { name: `user ${id}`, online: false };
    const dot = el("span", { class: `dot${u.online ? " online" : ""}`, "data-testid": `online-${id}`, title: u.online ? "online" : "offline" });
    dot.dataset.online = String(Boolean(u.online));
    const badge = el("span", { class: "badge", "data-testid": `unread-${id}`, text: String(c.unread) });
    badge.hidden = c.unread === 0;
    const li = el(
      "li",
      { class: `contact${state.chat && state.chat.other === id ? " active" : ""}`, "data-testid": `contact-${id}` },
      el("span", { class: "avatar", style: { background: colorFor(id) }, text: u.name.slice(0, 1) }, dot),
      el("div", { class: "info" }, el("div", { class: "cname", text: u.name }), el("div", { class: "preview", text: c.preview })),
      badge
    );
    li.addEventListener("click", () => openChat(id));
    items.push(li);
  }
  list.replaceChildren(...items);
}

function toast(from, body) {
  const t = el("div", { class: "toast", "data-testid": "toast" }, el("strong", { text: nameOf(from) }), el("span", { text: body }));
  t.dataset.from = from;
  t.addEventListener("click", () => {
    t.remove();
    openChat(from);
  });
  $("toasts").append(t);
  setTimeout(() => t.remove(), TOAST_MS);
}

// ------------------------------------------------------------------ chat

function openChat(other) {
  other = String(other);
  if (state.chat && state.chat.other === other) return;
  if (state.chat) closeChat();
  const room = chatTopic(state.me.id, other);
  const chat = {
    other,
    room,
    messages: new Map(), // id -> message
    pending: new Map(), // client_id -> {body, error}
    seenUpTo: 0, // newest own message id the other side has read
    readSent: 0, // newest id we reported as read
    hasMore: false,
    lastTypingSent: 0,
    typingTimer: null,
    presentHere: false,
    channel: null,
    presence: null,
  };
  state.chat = chat;
  let joinedWithLastID = false;
  // Params are evaluated on every (re)join: after a reconnect only what is
  // new since the newest message we hold comes back.
  const channel = state.socket.channel(room, () => {
    const newest = newestId(chat);
    joinedWithLastID = newest > 0;
    return newest > 0 ? { last_id: newest } : {};
  });
  chat.channel = channel;
  chat.presence = new Presence(channel);
  chat.presence.onSync(() => {
    chat.presentHere = chat.presence.list((id) => String(id)).includes(other);
    renderChatStatus();
  });
  channel.on("new_message", (m) => {
    if (state.chat !== chat) return;
    addMessage(chat, m);
    if (String(m.user_id) === other) hideTyping(chat);
    renderMessages(chat, true);
    markRead();
  });
  channel.on("read", ({ user_id, last_id }) => {
    if (state.chat !== chat || String(user_id) !== other) return;
    chat.seenUpTo = Math.max(chat.seenUpTo, Number(last_id));
    renderMessages(chat, false);
  });
  channel.on("message_updated", (m) => {
    if (state.chat !== chat || !chat.messages.has(m.id)) return;
    chat.messages.set(m.id, m);
    renderMessages(chat, false);
  });
  channel.on("message_deleted", ({ id }) => {
    const m = state.chat === chat && chat.messages.get(id);
    if (!m) return;
    chat.messages.set(id, { ...m, body: "", deleted: true });
    renderMessages(chat, false);
  });
  channel.on("typing", ({ user_id, name }) => {
    if (state.chat !== chat || String(user_id) === state.me.id) return;
    showTyping(chat, name || nameOf(user_id));
  });
  channel
    .join()
    .receive("ok", ({ messages, has_more }) => {
      if (state.chat !== chat) return;
      if (!joinedWithLastID) {
        chat.messages.clear();
        chat.hasMore = Boolean(has_more);
      }
      for (const m of messages || []) addMessage(chat, m);
      renderMessages(chat, true);
      markRead();
    })
    .receive("error", (resp) => showError(`cannot open the chat: ${(resp && resp.reason) || "error"}`));

  const c = contact(other);
  c.unread = 0;
  c.counted.clear();
  $("no-chat").hidden = true;
  $("chat").hidden = false;
  $("app").classList.add("chat-open");
  $("chat-name").textContent = nameOf(other);
  $("block").textContent = state.blocked.has(other) ? "Unblock" : "Block";
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("send-error").hidden = true;
  renderChatStatus();
  renderContacts();
  $("composer").focus();
}

function closeChat() {
  const chat = state.chat;
  if (!chat) return;
  state.chat = null;
  hideTyping(chat);
  chat.channel.leave();
  $("chat").hidden = true;
  $("no-chat").hidden = false;
  $("app").classList.remove("chat-open");
  renderContacts();
}

function newestId(chat) {
  let max = 0;
  for (const id of chat.messages.keys()) if (id > max) max = id;
  return max;
}

function addMessage(chat, m) {
  chat.messages.set(m.id, m);
  if (String(m.user_id) === state.me.id) {
    if (m.client_id) chat.pending.delete(m.client_id);
    if (m.is_delivered) chat.seenUpTo = Math.max(chat.seenUpTo, m.id);
  }
  contact(chat.other).preview = m.body;
}

function renderChatStatus() {
  const chat = state.chat;
  if (!chat) return;
  const u = state.users.get(chat.other);
  let text = "offline";
  if (chat.presentHere) text = "in this chat";
  else if (u && u.online) text = "online";
  const status = $("chat-status");
  status.textContent = text;
  status.dataset.state = text.replace(/ /g, "-");
}

function renderMessages(chat, scroll) {
  const scroller = $("scroller");
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  const sorted = [...chat.messages.values()].sort((a, b) => a.id - b.id);
  const items = sorted.map((m) => messageItem(chat, m));
  for (const [clientId, p] of chat.pending) {
    const li = el(
      "li",
      { class: `message mine ${p.error ? "failed" : "pending"}`, "data-testid": "message" },
      el("div", { class: "bubble", "data-testid": "message-body", text: p.body }),
      el("div", { class: "meta", text: p.error ? `not sent: ${p.error}` : "sending…" })
    );
    li.dataset.clientId = clientId;
    li.dataset.mine = "true";
    items.push(li);
  }
  $("messages").replaceChildren(...items);
  $("load-older").hidden = !chat.hasMore;
  if (scroll || atBottom) scroller.scrollTop = scroller.scrollHeight;
}

function messageItem(chat, m) {
  const mine = String(m.user_id) === state.me.id;
  const meta = el("div", { class: "meta" }, el("span", { text: timeOf(m.sent_at) }));
  if (mine) {
    const seen = m.id <= chat.seenUpTo;
    const receipt = el("span", { class: `receipt${seen ? " seen" : ""}`, "data-testid": "receipt", text: seen ? " · seen" : " · sent" });
    receipt.dataset.status = seen ? "seen" : "sent";
    meta.append(receipt);
  }
  if (m.edited_at && !m.deleted) meta.append(el("span", { "data-testid": "edited", text: " · edited" }));
  if (mine && !m.deleted) {
    meta.append(
      el("button", { type: "button", class: "amend", "data-testid": "edit", title: "Edit this message", text: "edit", onclick: () => editMessage(chat, m) }),
      el("button", { type: "button", class: "amend", "data-testid": "delete", title: "Delete this message", text: "delete", onclick: () => deleteMessage(chat, m) })
    );
  }
  const li = el(
    "li",
    { class: `message ${mine ? "mine" : "theirs"}${m.deleted ? " deleted" : ""}`, "data-testid": "message" },
    el("div", { class: "bubble", "data-testid": "message-body", text: m.deleted ? "message deleted" : m.body }),
    meta
  );
  li.dataset.id = String(m.id);
  li.dataset.mine = String(mine);
  return li;
}

// markRead reports the newest message from the other side as read, once the
// chat is on screen.
function markRead() {
  const chat = state.chat;
  if (!chat || document.visibilityState !== "visible") return;
  let newest = 0;
  for (const m of chat.messages.values()) {
    if (String(m.user_id) === chat.other && m.id > newest) newest = m.id;
  }
  if (newest <= chat.readSent) return;
  chat.readSent = newest;
  chat.channel.push("read", { last_id: newest }).receive("error", () => {
    if (chat.readSent === newest) chat.readSent = 0; // retry on the next message
  });
}

function loadOlder() {
  const chat = state.chat;
  if (!chat) return;
  let oldest = 0;
  for (const id of chat.messages.keys()) if (oldest === 0 || id < oldest) oldest = id;
  if (oldest === 0) return;
  const scroller = $("scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  chat.channel.push("history", { before: oldest }).receive("ok", ({ messages, has_more }) => {
    if (state.chat !== chat) return;
    for (const m of messages || []) addMessage(chat, m);
    chat.hasMore = Boolean(has_more);
    renderMessages(chat, false);
    scroller.scrollTop = scroller.scrollHeight - fromBottom;
  });
}

function showTyping(chat, name) {
  $("typing").textContent = `${name} is typing…`;
  clearTimeout(chat.typingTimer);
  chat.typingTimer = setTimeout(() => hideTyping(chat), TYPING_SHOW_MS);
}

function hideTyping(chat) {
  clearTimeout(chat.typingTimer);
  chat.typingTimer = null;
  if (state.chat === chat || !state.chat) $("typing").textContent = "";
}

function showError(text) {
  const e = $("send-error");
  e.textContent = text;
  e.hidden = false;
}

// editMessage asks for a new body and sends edit_message; the reply and
// message_updated carry the stored result.
function editMessage(chat, m) {
  const body = window.prompt("Edit your message", m.body);
  if (body == null || body === m.body) return;
  chat.channel
    .push("edit_message", { id: m.id, body })
    .receive("ok", (updated) => {
      chat.messages.set(updated.id, updated);
      if (state.chat === chat) renderMessages(chat, false);
    })
    .receive("error", (resp) => showError(`cannot edit: ${(resp && resp.reason) || "error"}`));
}

function deleteMessage(chat, m) {
  chat.channel
    .push("delete_message", { id: m.id })
    .receive("ok", () => {
      chat.messages.set(m.id, { ...m, body: "", deleted: true });
      if (state.chat === chat) renderMessages(chat, false);
    })
    .receive("error", (resp) => showError(`cannot delete: ${(resp && resp.reason) || "error"}`));
}

// toggleBlock blocks or unblocks the open chat's other user from the lobby.
function toggleBlock() {
  const chat = state.chat;
  if (!chat) return;
  const other = chat.other;
  const block = !state.blocked.has(other);
  state.lobby
    .push(block ? "block" : "unblock", { user_id: other })
    .receive("ok", () => {
      if (block) state.blocked.add(other);
      else state.blocked.delete(other);
      if (state.chat && state.chat.other === other) $("block").textContent = block ? "Unblock" : "Block";
    })
    .receive("error", (resp) => showError(`cannot ${block ? "block" : "unblock"}: ${(resp && resp.reason) || "error"}`));
}

function wireComposer() {
  const input = $("composer");
  input.addEventListener("input", () => {
    const chat = state.chat;
    if (!chat || input.value.trim() === "") return;
    const now = Date.now();
    if (now - chat.lastTypingSent < TYPING_SEND_EVERY_MS) return;
    chat.lastTypingSent = now;
    chat.channel.push("typing", {});
  });
  $("composer-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const chat = state.chat;
    const body = input.value;
    if (!chat || body.trim() === "") return;
    input.value = "";
    $("send-error").hidden = true;
    const clientId = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
    chat.pending.set(clientId, { body, error: null });
    chat.lastTypingSent = 0;
    renderMessages(chat, true);
    chat.channel
      .push("new_message", { body, client_id: clientId })
      .receive("ok", (m) => {
        if (state.chat !== chat) return;
        addMessage(chat, m);
        renderMessages(chat, true);
      })
      .receive("error", (resp) => {
        const p = chat.pending.get(clientId);
        if (p) p.error = (resp && resp.reason) || "error";
        if (state.chat === chat) renderMessages(chat, false);
      })
      .receive("timeout", () => {
        const p = chat.pending.get(clientId);
        if (p) p.error = "timed out";
        if (state.chat === chat) renderMessages(chat, false);
      });
  });
}

main().catch((err) => {
  document.body.append(el("pre", { class: "error", "data-testid": "fatal", text: String(err && err.stack ? err.stack : err) }));
});
