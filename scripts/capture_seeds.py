"""Captures real traffic into the fuzz targets' seed corpora (fuzz/seeds/<target>/).

Runs herald (the built binary, embedded Kafka) with Redis behind a recording relay, and real
clients through another: npm socket.io-client over WebSocket and over long-polling with upgrade
(events, acks, a binary attachment, a token refresh), python-socketio over long-polling and
WebSocket, a notification through Kafka and Redis, and POST /api/disconnect. Everything stays on
127.0.0.1. What the clients sent becomes seeds for http_head, websocket_frames, engine_io and
socket_io; what redis-server sent herald becomes seeds for resp and bus_envelope.

Usage (after `cargo build`, with the tests' clients installed by scripts/test.sh):
    tests/client/.venv/bin/python scripts/capture_seeds.py [path/to/herald]
"""
import asyncio
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import socketio

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
SECRET = "seed-capture-secret"
API_KEY = "seed-capture-api-key-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A TCP relay on 127.0.0.1 that records both directions of every connection."""

    def __init__(self, target_port):
        self.port = free_port()
        self.target = target_port
        self.connections = []  # [(client bytes, server bytes)]
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, client_r, client_w):
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        record = [bytearray(), bytearray()]
        self.connections.append(record)

        async def pipe(reader, writer, sink):
            try:
                while data := await reader.read(65536):
                    sink.extend(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, server_w, record[0]), pipe(server_r, client_w, record[1]))


def token(user):
    import base64
    import hmac

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    body = b64(json.dumps({"sub": user, "iat": now - 5, "exp": now + 3600, "groups": ["team"]}).encode())
    sig = b64(hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


NODE_CLIENTS = r"""
const { io } = require("socket.io-client");
const [url, transports, token, fresh] = process.argv.slice(1);
const socket = io(url, { transports: transports.split(","), auth: { token }, reconnection: false, forceNew: true });
socket.on("connect", () => {
  socket.emit("receipt", { id: "t/0/1/0", state: "read" }, () => {});
  socket.emit("auth_refresh", { token: fresh }, () => {
    socket.emit("upload", Buffer.from([0, 1, 2, 250, 255]), { nested: [Buffer.from("x")] });
    setTimeout(() => { socket.disconnect(); process.exit(0); }, 400);
  });
});
socket.on("connect_error", (e) => { console.error(e.message); process.exit(1); });
"""


def node_client(url, transports):
    env = dict(os.environ, NODE_PATH=str(ROOT / "tests" / "client" / "node_modules"))
    subprocess.run(["node", "-e", NODE_CLIENTS, url, transports, token("node-user"), token("node-user")], env=env, check=True, timeout=30)


def python_client(url, transports):
    client = socketio.Client(reconnection=False)
    got = threading.Event()
    client.on("notification", lambda *args: got.set())
    client.connect(url, auth={"token": token("py-user")}, transports=transports, wait_timeout=10)
    client.call("auth_refresh", {"token": token("py-user")}, timeout=10)
    client.emit("upload", b"\x00\x01binary\xff")
    return client, got


def save(target, name, data):
    if not data:
        return
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"captured-{name}-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(bytes(data))


def http_requests(stream):
    """(head, body) of each HTTP request at the start of a client's stream, and the rest."""
    requests = []
    while b"\r\n\r\n" in stream:
        end = stream.index(b"\r\n\r\n") + 4
        head = stream[:end]
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        requests.append((head, stream[end:end + length]))
        upgrade = b"upgrade: websocket" in head.lower()
        stream = stream[end + length:]
        if upgrade:
            return requests, stream
    return requests, b""


def client_messages(stream):
    """Unmasked payloads of the text and binary messages in a client's WebSocket stream."""
    out, fragments = [], b""
    while len(stream) >= 2:
        b0, b1 = stream[0], stream[1]
        length, at = b1 & 0x7F, 2
        if length == 126:
            length, at = int.from_bytes(stream[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(stream[2:10], "big"), 10
        mask, at = stream[at:at + 4], at + 4
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(stream[at:at + length]))
        stream = stream[at + length:]
        fragments += payload if b0 & 0x0F in (0, 1, 2) else b""
        if b0 & 0x80 and b0 & 0x0F in (0, 1, 2):
            out.append(fragments)
            fragments = b""
    return out


def resp_messages(stream):
    """The payloads of the Pub/Sub messages in what Redis pushed to a connection."""
    out, at = [], 0
    marker = b"\r\nmessage\r\n"
    while (found := stream.find(marker, at)) >= 0:
        at = found + len(marker)
        for _ in range(2):  # the channel, then the payload
            line_end = stream.index(b"\r\n", at)
            length = int(stream[at + 1:line_end])
            value, at = stream[line_end + 2:line_end + 2 + length], line_end + 2 + length + 2
        out.append(value)
    return out


def main():
    herald = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "debug" / "herald")
    work = pathlib.Path(tempfile.mkdtemp())
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    redis_relay = Relay(redis_port)
    http_port, kafka_port = free_port(), free_port()
    (work / "config.yaml").write_text(json.dumps({
        "server": {"listen": f"127.0.0.1:{http_port}", "shutdown_grace_secs": 2},
        "kafka": {"brokers": "embedded", "embedded": {"listen": f"127.0.0.1:{kafka_port}"},
                  "topics": [{"name": "user-notifications", "retain": True}]},
        "redis": {"url": f"redis://127.0.0.1:{redis_relay.port}"},
        "auth": {"jwt": {"secret": SECRET, "groups_claim": "groups"}},
        "api": {"key": API_KEY},
        "log": {"level": "warn"},
    }))
    process = subprocess.Popen([str(herald), "--config", str(work / "config.yaml")], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        relay = Relay(http_port)
        url = f"http://127.0.0.1:{relay.port}"
        node_client(url, "websocket")
        node_client(url, "polling,websocket")
        node_client(url, "polling")
        clients = [python_client(url, ["polling"]), python_client(url, ["websocket"])]
        record = json.dumps({"userId": "py-user", "type": "captured", "body": {"n": 1, "text": "κόσμε"}})
        subprocess.run([str(herald), "--config", str(work / "config.yaml"), "produce", record], check=True, timeout=30)
        for _, got in clients:
            got.wait(10)
        request = urllib.request.Request(f"{url}/api/disconnect", data=json.dumps({"user_ids": ["py-user"], "revoke_tokens": True}).encode(),
                                         headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()
        time.sleep(0.5)
        for client, _ in clients:
            client.disconnect()
    finally:
        process.terminate()
        process.wait(10)
        redis.terminate()
        shutil.rmtree(work, ignore_errors=True)

    for n, (sent, _) in enumerate(relay.connections):
        requests, websocket = http_requests(bytes(sent))
        for head, body in requests:
            save("http_head", f"c{n}", head)
            if body:
                save("engine_io", f"c{n}", body)
                for part in body.split(b"\x1e"):
                    if part.startswith(b"4"):
                        save("socket_io", f"c{n}", part[1:])
        if websocket:
            save("websocket_frames", f"c{n}", b"\x07" + websocket)
            for message in client_messages(websocket):
                save("engine_io", f"c{n}", message)
                if message.startswith(b"4"):
                    save("socket_io", f"c{n}", message[1:])
    for n, (_, pushed) in enumerate(redis_relay.connections):
        save("resp", f"r{n}", b"\x05" + bytes(pushed)[:16384])
        for message in resp_messages(bytes(pushed)):
            save("bus_envelope", f"r{n}", message)
    for target in ["http_head", "websocket_frames", "engine_io", "socket_io", "resp", "bus_envelope"]:
        print(target, len(list((SEEDS / target).glob("captured-*"))) if (SEEDS / target).exists() else 0)


if __name__ == "__main__":
    main()
