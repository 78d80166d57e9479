#!/usr/bin/env python3
"""Medians for docs/benchmarks.md's bus section (issue #14): herald CPU per delivered
notification and delivered/s at max rate, one instance (in-process bus) against two with Redis,
for each bus variant measured. "fred" rows are the transport series' final runs (the bus before
#14, same harness). Standard library only.

Usage: scripts/bus_report.py [bench/results-bus.jsonl] [bench/results-transport.jsonl]
"""
import json
import statistics
import sys
from collections import OrderedDict

bus = sys.argv[1] if len(sys.argv) > 1 else "bench/results-bus.jsonl"
before = sys.argv[2] if len(sys.argv) > 2 else "bench/results-transport.jsonl"


def runs(path, variant=None):
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            yield (variant or r.get("variant", "?")), r


groups = OrderedDict()
for variant, r in list(runs(before, "fred (before)")) + list(runs(bus)):
    # The max-rate bursts, with their variants (single-max-2k-deflate: 2 KiB notifications to
    # clients that negotiated permessage-deflate).
    if not r.get("label", "").startswith(("single-max", "pair-max", "cluster-max")):
        continue
    for p in r.get("phases", []):
        groups.setdefault((variant, r["label"]), []).append(p)


def fmt(values, digits):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f}, {len(values)} runs)"


print("| bus | scenario | herald CPU µs per notification | delivered/s | WebSocket bytes per notification | lost (all runs) |")
print("|---|---|---|---|---|---|")
for (variant, label), phases in groups.items():
    cpu = [p["herald_cpu_us_per_delivered"] for p in phases]
    rate = [p["delivered_per_sec"] for p in phases]
    ws_bytes = [p["ws_bytes_per_delivered"] for p in phases if "ws_bytes_per_delivered" in p]
    lost = sum(p["lost"] for p in phases)
    print(f"| {variant} | {label} | {fmt(cpu, 2)} | {fmt(rate, 0)} | {fmt(ws_bytes, 0) if ws_bytes else '-'} | {lost} |")

memory = OrderedDict()
for variant, r in runs(bus):
    if r.get("label", "").startswith("memory-"):
        # Runs without a variant are told apart by their label without its connection count
        # (memory-moved-10000: memory-moved; memory-10000-before: memory-before).
        variant = variant if "variant" in r else "-".join(p for p in r["label"].split("-") if not p.isdigit())
        memory.setdefault((variant, r["connected"]), []).append(r["rss"][0]["per_conn_kib"])
if memory:
    print()
    print("| build | idle connections | KiB RSS per connection |")
    print("|---|---|---|")
    for (variant, n), values in memory.items():
        print(f"| {variant} | {n} | {fmt(values, 3)} |")
