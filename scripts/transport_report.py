#!/usr/bin/env python3
"""Before/after medians for docs/benchmarks.md's transport section (issue #13): herald on
socketioxide (bench/results-transport-before.jsonl) against herald's own server
(bench/results-transport.jsonl), the same herald-bench and config. Standard library only.

Usage: scripts/transport_report.py [before.jsonl] [after.jsonl]
"""
import json
import statistics
import sys

before = sys.argv[1] if len(sys.argv) > 1 else "bench/results-transport-before.jsonl"
after = sys.argv[2] if len(sys.argv) > 2 else "bench/results-transport.jsonl"
med = statistics.median


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def memory(runs, prefix):
    out = {}
    for r in runs:
        label = r["label"]
        if label.startswith(prefix) and label[len(prefix):].isdigit():
            out.setdefault(int(label[len(prefix):]), []).append(r["rss"][0]["per_conn_kib"])
    return out


def phases(runs):
    out = {}
    for r in runs:
        for p in r.get("phases", []):
            out.setdefault((r["label"], p["rate"]), []).append(p)
    return out


def fmt(values, digits=2):
    return f"{med(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f}, {len(values)} runs)"


b, a = load(before), load(after)
print("| idle memory, KiB RSS per connection | before (socketioxide) | after | ratio |")
print("|---|---|---|---|")
for prefix, name in [("memory-", "WebSocket"), ("memory-polling-", "long-polling session")]:
    mb, ma = memory(b, prefix), memory(a, prefix)
    for n in sorted(set(mb) | set(ma)):
        if n in mb and n in ma:
            print(f"| {name}, {n:,} | {fmt(mb[n])} | {fmt(ma[n])} | {med(mb[n]) / med(ma[n]):.1f}x |")

pb, pa = phases(b), phases(a)
print()
print("| load | metric | before | after |")
print("|---|---|---|---|")
for key in sorted(set(pb) & set(pa), key=lambda k: (k[0], k[1] or 10**9)):
    label, rate = key
    name = f"{label} {rate or 'max'}/s"
    cpu = lambda ps: [p["herald_cpu_us_per_delivered"] for p in ps]
    dps = lambda ps: [p["delivered_per_sec"] for p in ps]
    lost = lambda ps: sum(p["lost"] for p in ps)
    print(f"| {name} | herald CPU us per notification | {fmt(cpu(pb[key]))} | {fmt(cpu(pa[key]))} |")
    print(f"| {name} | delivered/s | {fmt(dps(pb[key]), 0)} | {fmt(dps(pa[key]), 0)} |")
    share = lambda ps, i: [p["herald_share_us"][i] / 1000 for p in ps if p.get("herald_share_us")]
    if rate and share(pb[key], 2) and share(pa[key], 2):
        print(f"| {name} | herald share p50 ms | {fmt(share(pb[key], 0))} | {fmt(share(pa[key], 0))} |")
        print(f"| {name} | herald share p99 ms | {fmt(share(pb[key], 2))} | {fmt(share(pa[key], 2))} |")
    print(f"| {name} | lost (all runs) | {lost(pb[key])} | {lost(pa[key])} |")
