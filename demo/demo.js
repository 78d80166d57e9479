// herald demo page: connect with the token from the form (or the URL fragment `#token=...`,
// which browsers never send to a server) and list notifications as they arrive.
"use strict";

const settings = JSON.parse(document.getElementById("settings").textContent);
const form = document.getElementById("connect");
const tokenInput = document.getElementById("token");
const statusBox = document.getElementById("status");
const hint = document.getElementById("hint");
const list = document.getElementById("notifications");
let socket = null;

function setStatus(state, text) {
  statusBox.dataset.state = state;
  statusBox.textContent = text;
}

function show(event, payload, meta) {
  const item = document.createElement("li");
  item.className = "notification";
  const head = document.createElement("div");
  head.className = "meta";
  const name = document.createElement("span");
  name.className = "event";
  name.textContent = event;
  const time = document.createElement("span");
  time.textContent = new Date().toLocaleTimeString();
  head.append(name, time);
  if (meta && meta.id) {
    const id = document.createElement("span");
    id.textContent = "id " + meta.id;
    head.append(id);
  }
  const body = document.createElement("pre");
  body.textContent = JSON.stringify(payload, null, 2);
  item.append(head, body);
  list.prepend(item);
}

function connect(token) {
  if (socket) socket.close();
  list.replaceChildren();
  setStatus("connecting", "Connecting…");
  // Same origin as the page: herald serves both.
  socket = io({ auth: { token } });
  socket.on("connect", () => {
    setStatus("connected", `Connected (socket ${socket.id}). Waiting for "${settings.event}" events…`);
  });
  socket.on("connect_error", (err) => setStatus("error", `Refused: ${err.message}`));
  socket.on("disconnect", (reason) => setStatus("idle", `Disconnected: ${reason}.`));
  socket.on(settings.event, (payload, meta) => show(settings.event, payload, meta));
  socket.on(settings.expiredEvent, () => setStatus("error", "The token expired: paste a new one."));
}

if (typeof io !== "function") {
  setStatus("error", "socket.io-client is not installed on the server: run `npm ci --prefix demo` and restart herald.");
} else {
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = tokenInput.value.trim();
    if (token) connect(token);
  });
  hint.innerHTML = "";
  if (settings.produceExample) {
    const p = document.createElement("p");
    p.append("Then send one: ");
    const code = document.createElement("code");
    code.textContent = settings.produceExample;
    p.append(code);
    hint.append(p);
  }
  const fromFragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromFragment) {
    tokenInput.value = fromFragment;
    connect(fromFragment);
  }
}
