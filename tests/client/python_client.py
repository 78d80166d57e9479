"""Drives python-socketio clients for herald's tests, with the line protocol of driver.mjs.

Reads one JSON command per line on stdin and writes one JSON event per line on stdout:
  {"op":"connect","id":"a","url":"http://127.0.0.1:3000","auth":{"token":"..."},"transports":["polling"]}
  {"op":"emit","id":"a","event":"x","data":{...},"ack":true}
  {"op":"close","id":"a"}
  {"op":"exit"}
Events: {"id","type":"connect"|"connect_error"|"disconnect"|"event"|"ack", ...}.
"""
import json
import logging
import sys
import threading

import socketio

lock = threading.Lock()
sockets = {}


def out(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def connect(cmd):
    sid = cmd["id"]
    # python-engineio says why it gave up a connection only in its log: warnings go to stderr,
    # which the tests show.
    log = logging.getLogger(f"engineio.client.{sid}")
    log.setLevel(logging.INFO if cmd.get("verbose") else logging.WARNING)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s python-engineio {sid}: %(message)s"))
        log.addHandler(handler)
    client = socketio.Client(reconnection=False, engineio_logger=log)
    # python-engineio runs each message's handler on a thread of its own, so the order the
    # test would see is the threads', not the order herald sent. Handled in the read loop
    # instead (the handlers here only print), the test sees what arrived, in order.
    trigger = client.eio._trigger_event
    client.eio._trigger_event = lambda event, *args, **kwargs: trigger(event, *args, **{**kwargs, "run_async": False})
    sockets[sid] = client

    @client.event
    def connect():
        out({"id": sid, "type": "connect", "transport": client.transport()})

    @client.event
    def connect_error(data):
        message = data.get("message") if isinstance(data, dict) else str(data)
        out({"id": sid, "type": "connect_error", "message": message})

    @client.event
    def disconnect(*_):
        out({"id": sid, "type": "disconnect", "reason": "disconnect"})

    @client.on("*")
    def any_event(event, *args):
        out({"id": sid, "type": "event", "event": event, "args": list(args)})

    try:
        client.connect(cmd["url"], auth=cmd.get("auth"), transports=cmd.get("transports"), wait_timeout=10)
    except socketio.exceptions.ConnectionError as e:
        # A refusal was reported by connect_error already; anything else is reported here.
        if not str(e).startswith("One or more namespaces failed to connect"):
            out({"id": sid, "type": "connect_error", "message": str(e)})


def emit(cmd):
    client = sockets[cmd["id"]]
    if cmd.get("ack"):
        def on_ack(*args):
            out({"id": cmd["id"], "type": "ack", "event": cmd["event"], "args": list(args)})
        client.emit(cmd["event"], cmd.get("data"), callback=on_ack)
    else:
        client.emit(cmd["event"], cmd.get("data"))


def main():
    out({"type": "ready"})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "connect":
            threading.Thread(target=connect, args=(cmd,), daemon=True).start()
        elif op == "emit":
            emit(cmd)
        elif op == "close":
            sockets[cmd["id"]].disconnect()
        elif op == "exit":
            break
    for client in sockets.values():
        client.disconnect()


if __name__ == "__main__":
    main()
