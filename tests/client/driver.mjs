// Drives real socket.io-client sockets for herald's tests.
//
// Reads one JSON command per line on stdin and writes one JSON event per line on stdout:
//   {"op":"connect","id":"a","url":"http://127.0.0.1:3000","auth":{"token":"..."},
//    "transports":["websocket"],"extraHeaders":{},"query":{},"reconnection":false}
//   {"op":"emit","id":"a","event":"x","data":{...},"ack":true}
//   {"op":"cut","id":"a"}  (drop the TCP connection; the client reconnects if reconnection is on)
//   {"op":"pause","id":"a"}  (stop reading from the TCP connection: a stalled client)
//   {"op":"close","id":"a"}
//   {"op":"exit"}
// Events: {"id","type":"connect"|"connect_error"|"disconnect"|"event"|"ack"|"transport", ...}.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const sockets = new Map();
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function connect(cmd) {
  // With `replay`, the auth callback sends the last notification id seen on every (re)connect.
  let lastId = cmd.since ?? null;
  const auth = cmd.replay ? (cb) => cb({ ...cmd.auth, ...(lastId ? { since: lastId } : {}) }) : cmd.auth;
  const socket = io(cmd.url, {
    auth,
    reconnectionDelay: cmd.reconnectionDelay ?? 1000,
    reconnectionDelayMax: cmd.reconnectionDelayMax ?? 5000,
    transports: cmd.transports ?? ["websocket"],
    extraHeaders: cmd.extraHeaders,
    query: cmd.query,
    reconnection: cmd.reconnection ?? false,
    forceNew: true,
    timeout: cmd.timeout ?? 10000,
  });
  sockets.set(cmd.id, socket);
  // From the session's open: the upgrade may complete before the CONNECT reply arrives.
  socket.io.on("open", () => socket.io.engine.once("upgrade", (t) => out({ id: cmd.id, type: "transport", transport: t.name })));
  socket.on("connect", () => out({ id: cmd.id, type: "connect", transport: socket.io.engine.transport.name }));
  socket.on("connect_error", (err) => out({ id: cmd.id, type: "connect_error", message: err.message }));
  socket.on("disconnect", (reason) => out({ id: cmd.id, type: "disconnect", reason }));
  socket.onAny((event, ...args) => {
    if (args[1] && typeof args[1].id === "string") lastId = args[1].id;
    out({ id: cmd.id, type: "event", event, args });
  });
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  switch (cmd.op) {
    case "connect":
      connect(cmd);
      break;
    case "emit": {
      const socket = sockets.get(cmd.id);
      if (cmd.ack) socket.emit(cmd.event, cmd.data, (...args) => out({ id: cmd.id, type: "ack", event: cmd.event, args }));
      else socket.emit(cmd.event, cmd.data);
      break;
    }
    case "cut": {
      // Cut the TCP connection under the socket, as a network change would.
      const engine = sockets.get(cmd.id)?.io.engine;
      const raw = engine?.transport?.ws?._socket;
      if (raw) raw.destroy();
      else engine?.close();
      break;
    }
    case "pause": {
      // Stop reading from the TCP connection: a client that no longer keeps up.
      sockets.get(cmd.id)?.io.engine?.transport?.ws?._socket?.pause();
      break;
    }
    case "close":
      sockets.get(cmd.id)?.close();
      break;
    case "exit":
      process.exit(0);
  }
});
rl.on("close", () => process.exit(0));
out({ type: "ready" });
