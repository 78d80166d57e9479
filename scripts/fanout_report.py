#!/usr/bin/env python3
"""Medians for docs/benchmarks.md's fan-out section (issue #25): per scenario (broadcast, group,
scale), over the runs of `scripts/bench.sh broadcast|group|scale`, the time from produce to the
first and to the last socket, CPU per delivered notification, lost and duplicated, memory per
connection and the instances' total RSS. Standard library only.

Usage: scripts/fanout_report.py [bench/results-fanout-scale.jsonl]
"""
import json
import statistics
import sys
from collections import OrderedDict

path = sys.argv[1] if len(sys.argv) > 1 else "bench/results-fanout-scale.jsonl"
runs = OrderedDict()
for line in open(path):
    if line.strip():
        r = json.loads(line)
        runs.setdefault(r["label"], []).append(r)


def med(values, digits=1):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def ms(values, index):
    return med([v[index] / 1000 for v in values], 0)


print("| scenario | runs | sockets | records x audience | to first ms p50 / p99 | to last ms p50 / p99 / max | herald µs per delivery (kernel share) | clients µs per delivery | lost | dup |")
print("|---|---|---|---|---|---|---|---|---|---|")
for label, rs in runs.items():
    f = [r["fanout"] for r in rs]
    first = [x["to_first_us"] for x in f]
    last = [x["to_last_us"] for x in f]
    print(
        f"| {label} | {len(rs)} | {statistics.median(r['connected'] for r in rs):,.0f} "
        f"| {f[0]['records']} x {rs[0]['audience_size']:,} "
        f"| {ms(first, 0)} / {ms(first, 2)} "
        f"| {ms(last, 0)} / {ms(last, 2)} / {ms(last, 3)} "
        f"| {med([x['herald_cpu_us_per_delivered'] for x in f], 2)} ({statistics.median(x.get('herald_kernel_share', 0) for x in f):.0%}) "
        f"| {med([x.get('workers_cpu_us_per_delivered', 0) for x in f], 2)} "
        f"| {sum(x['lost'] for x in f)} | {sum(x['duplicated'] for x in f)} |"
    )

print()
# What the machine's two cores must do per record whatever herald's own code costs: its kernel
# writes (one per socket) and the clients' reads, spread perfectly over both cores.
print("| scenario | runs | herald's kernel µs + clients' µs per delivery | x audience / 2 cores = least time to the last socket, ms | measured to last p50 ms |")
print("|---|---|---|---|---|")
for label, rs in runs.items():
    f = [r["fanout"] for r in rs]
    kernel = statistics.median(x["herald_cpu_us_per_delivered"] * x.get("herald_kernel_share", 0) for x in f)
    clients = statistics.median(x.get("workers_cpu_us_per_delivered", 0) for x in f)
    audience = rs[0]["audience_size"]
    floor = (kernel + clients) * audience / 2 / 1000
    print(f"| {label} | {len(rs)} | {kernel:.2f} + {clients:.2f} | {floor:.0f} | {statistics.median(x['to_last_us'][0] for x in f) / 1000:.0f} |")

print()
print("| scenario | runs | instances | KiB per connection (median over instances and runs) | instances' total RSS MiB | per-user records: lost / dup, e2e ms p50 / p99 |")
print("|---|---|---|---|---|---|")
for label, rs in runs.items():
    per_conn = [i["per_conn_kib"] for r in rs for i in r["rss"]]
    total = [r["rss_total_kib"] / 1024 for r in rs]
    pu = [r["per_user"] for r in rs if "per_user" in r]
    per_user = "-"
    if pu:
        per_user = (
            f"{sum(p['lost'] for p in pu)} / {sum(p['duplicated'] for p in pu)} of {sum(p['sent'] for p in pu):,}, "
            f"{ms([p['e2e_us'] for p in pu], 0)} / {ms([p['e2e_us'] for p in pu], 2)}"
        )
    print(f"| {label} | {len(rs)} | {rs[0]['instances']} | {statistics.median(per_conn):.2f} | {med(total, 0)} | {per_user} |")
