"""What scripts/forward_bench.py and scripts/move_bench.py share: HS256 tokens for herald's
bench config, and Redis's command and byte counters. Standard library only."""
import base64
import hashlib
import hmac
import json
import socket
import time


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret, user):
    """An HS256 token for `user`, valid for an hour."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    signature = b64(hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest())
    return f"{header}.{claims}.{signature}"


def redis_info(port):
    """Redis's total commands processed, and bytes in and out, from INFO stats."""
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.sendall(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
    data = b""
    while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
        data += s.recv(65536)
    s.close()
    fields = dict(line.split(":", 1) for line in data.decode().splitlines() if ":" in line)
    return int(fields["total_commands_processed"]), int(fields["total_net_input_bytes"]) + int(fields["total_net_output_bytes"])


def append(path, result):
    """Appends `result` to the JSON-lines file at `path`."""
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")
