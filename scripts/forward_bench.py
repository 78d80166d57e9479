#!/usr/bin/env python3
"""The cost of a long-polling request forwarded to the instance holding its session (issue
#27): one Socket.IO session on instance A; the same round trip (a POST of an event with an
ack, then the GET that brings the ack back) sent straight to A, or to B, which forwards both
requests to A over Redis. Interleaved, on fresh keep-alive connections per instance. Prints
the medians and p99 of each, the difference, and Redis's commands and bytes per forwarded
request (from INFO before and after); appends one JSON line to OUT.

Usage: forward_bench.py A_URL B_URL REDIS_PORT SECRET [ROUNDS] (scripts/bench.sh forward).
Standard library only.
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse

import bench_common

a_url, b_url, redis_port, secret = sys.argv[1:5]
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
out_path = __import__("os").environ.get("OUT", "bench/results-forward.jsonl")


def token(user):
    return bench_common.token(secret, user)


def redis_info():
    return bench_common.redis_info(redis_port)


class Instance:
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def request(self, method, path, body=None):
        self.conn.request(method, path, body=body, headers={"Content-Type": "text/plain;charset=UTF-8"} if body else {})
        r = self.conn.getresponse()
        return r.status, r.read().decode()


a, b = Instance(a_url), Instance(b_url)
status, body = a.request("GET", "/socket.io/?EIO=4&transport=polling")
sid = json.loads(body[1:])["sid"]
path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
a.request("POST", path, "40" + json.dumps({"token": token("forward-bench")}))
status, body = a.request("GET", path)
assert body.startswith("40"), body

fresh = json.dumps({"token": token("forward-bench")})


def round_trip(via, n):
    """POST an auth_refresh with ack id n, then GET until its ack comes back: seconds."""
    start = time.perf_counter()
    status, _ = via.request("POST", path, f'42{n}["auth_refresh",{fresh}]')
    assert status == 200, status
    while True:
        status, body = via.request("GET", path)
        assert status == 200, (status, body)
        if f"43{n}[" in body:
            return time.perf_counter() - start


local, forwarded = [], []
commands_before, bytes_before = redis_info()
for n in range(rounds):
    forwarded.append(round_trip(b, 2 * n))
commands_after, bytes_after = redis_info()
for n in range(rounds):
    local.append(round_trip(a, 2 * n + 1))
# Interleaved too, to see the noise of the machine.
for n in range(rounds):
    local.append(round_trip(a, 2 * rounds + 2 * n))
    forwarded.append(round_trip(b, 2 * rounds + 2 * n + 1))


def us(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1e6


requests_forwarded = 2 * rounds  # a POST and (at least) one GET per round trip
result = {
    "label": "forward",
    "rounds": rounds,
    "local_us_p50": us(local, 0.5),
    "local_us_p99": us(local, 0.99),
    "forwarded_us_p50": us(forwarded, 0.5),
    "forwarded_us_p99": us(forwarded, 0.99),
    "redis_commands_per_forwarded_request": (commands_after - commands_before) / requests_forwarded,
    "redis_bytes_per_forwarded_request": (bytes_after - bytes_before) / requests_forwarded,
}
print(
    f"round trip (POST + GET) local p50 {result['local_us_p50']:.0f} us p99 {result['local_us_p99']:.0f} us | "
    f"forwarded p50 {result['forwarded_us_p50']:.0f} us p99 {result['forwarded_us_p99']:.0f} us | "
    f"added p50 {result['forwarded_us_p50'] - result['local_us_p50']:.0f} us per round trip | "
    f"Redis {result['redis_commands_per_forwarded_request']:.2f} commands, "
    f"{result['redis_bytes_per_forwarded_request']:.0f} bytes per forwarded request ({rounds} x 2 rounds)"
)
bench_common.append(out_path, result)
