#!/usr/bin/env python3
"""The cost of moving a session with its WebSocket upgrade (issue #27). Each round opens a
Socket.IO session over long-polling on instance A, then upgrades it on a WebSocket to A itself
(local) or to B, which moves the session from A over Redis. It times the probe (`2probe` sent
to `3probe` read) and the upgrade (`5` and an event with an ack sent in one write, to the ack
read: the event is answered only once the session is served on the WebSocket, so for a move
this includes taking the session over and the cut). Local and moved rounds alternate. Prints
the medians and p99 of each, the difference, and the Redis commands and bytes a move adds to a
local upgrade (from INFO around each upgrade); appends one JSON line to OUT.

Usage: move_bench.py A_URL B_URL REDIS_PORT SECRET [ROUNDS] (scripts/bench.sh move).
Standard library only.
"""
import base64
import http.client
import json
import os
import socket
import statistics
import sys
import time
import urllib.parse

import bench_common

a_url, b_url, redis_port, secret = sys.argv[1:5]
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 300
out_path = os.environ.get("OUT", "bench/results-move.jsonl")


def token(user):
    return bench_common.token(secret, user)


def redis_info():
    return bench_common.redis_info(redis_port)


def address(url):
    u = urllib.parse.urlparse(url)
    return u.hostname, u.port


def polling_session(user):
    """A session on A over long-polling, its Socket.IO CONNECT answered: its id."""
    conn = http.client.HTTPConnection(*address(a_url), timeout=30)
    conn.request("GET", "/socket.io/?EIO=4&transport=polling")
    sid = json.loads(conn.getresponse().read().decode()[1:])["sid"]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    conn.request("POST", path, body=f'40{{"token":"{token(user)}"}}', headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert conn.getresponse().read() == b"ok"
    conn.request("GET", path)
    assert conn.getresponse().read().startswith(b"40{")
    conn.close()
    return sid


class WebSocket:
    """Just enough of a client: text frames, masked, unfragmented."""

    def __init__(self, url, sid):
        self.sock = socket.create_connection(address(url), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    @staticmethod
    def frame(text, opcode=1):
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def send(self, *texts):
        self.sock.sendall(b"".join(self.frame(t) for t in texts))

    def text(self):
        """The next text message; pings are answered on the way."""
        while True:
            while len(self.buf) < 2 or len(self.buf) < self._len():
                chunk = self.sock.recv(65536)
                assert chunk, "closed"
                self.buf += chunk
            n, start = self._len(), self._start()
            opcode, payload, self.buf = self.buf[0] & 0x0F, self.buf[start:n], self.buf[n:]
            assert opcode != 8, f"closed by the server: {payload!r}"
            if opcode == 1 and payload == b"2":
                self.send("3")
            elif opcode == 1:
                return payload.decode()

    def _start(self):
        n = self.buf[1] & 0x7F
        return 2 if n < 126 else 4

    def _len(self):
        n = self.buf[1] & 0x7F
        if n == 126:
            return 4 + int.from_bytes(self.buf[2:4], "big") if len(self.buf) >= 4 else 1 << 30
        return 2 + n

    def close(self):
        self.sock.sendall(self.frame("", opcode=8))
        self.sock.close()


def one_round(i, target, redis):
    """Times one upgrade; adds Redis's commands and bytes over it to `redis`."""
    user = f"move-{i}"
    sid = polling_session(user)
    ws = WebSocket(target, sid)
    before = redis_info()
    started = time.perf_counter()
    ws.send("2probe")
    assert ws.text() == "3probe"
    probed = time.perf_counter()
    ws.send("5", f'421["auth_refresh",{{"token":"{token(user)}"}}]')
    while not (answer := ws.text()).startswith("431"):
        pass
    assert '"ok":true' in answer, answer
    upgraded = time.perf_counter()
    after = redis_info()
    # INFO itself is one command, counted in `after`.
    redis[0] += after[0] - before[0] - 1
    redis[1] += after[1] - before[1]
    ws.close()
    return (probed - started) * 1e6, (upgraded - probed) * 1e6


def p99(xs):
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))]


for i in range(20):  # warm-up
    one_round(-1 - i, a_url if i % 2 else b_url, [0, 0])
local, moved = {"probe": [], "upgrade": [], "redis": [0, 0]}, {"probe": [], "upgrade": [], "redis": [0, 0]}
for i in range(rounds):
    for series, target in ((local, a_url), (moved, b_url)):
        probe, upgrade = one_round(2 * i + (series is moved), target, series["redis"])
        series["probe"].append(probe)
        series["upgrade"].append(upgrade)

result = {"label": "move", "rounds": rounds, "ts": int(time.time())}
for name, series in (("local", local), ("moved", moved)):
    for step in ("probe", "upgrade"):
        result[f"{name}_{step}_p50_us"] = round(statistics.median(series[step]))
        result[f"{name}_{step}_p99_us"] = round(p99(series[step]))
result["added_p50_us"] = round(
    statistics.median([p + u for p, u in zip(moved["probe"], moved["upgrade"])])
    - statistics.median([p + u for p, u in zip(local["probe"], local["upgrade"])])
)
# What a move adds to Redis's work over a local upgrade (both verify the event's token).
result["redis_commands_per_move"] = round((moved["redis"][0] - local["redis"][0]) / rounds, 2)
result["redis_bytes_per_move"] = round((moved["redis"][1] - local["redis"][1]) / rounds)
print(
    f"move: {rounds} rounds each. local probe {result['local_probe_p50_us']} us (p99 {result['local_probe_p99_us']}), "
    f"upgrade {result['local_upgrade_p50_us']} us (p99 {result['local_upgrade_p99_us']}); moved probe "
    f"{result['moved_probe_p50_us']} us (p99 {result['moved_probe_p99_us']}), upgrade {result['moved_upgrade_p50_us']} us "
    f"(p99 {result['moved_upgrade_p99_us']}); a move adds {result['added_p50_us']} us (p50); Redis per move: "
    f"{result['redis_commands_per_move']} commands, {result['redis_bytes_per_move']} bytes"
)
bench_common.append(out_path, result)
