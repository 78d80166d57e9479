#!/usr/bin/env python3
"""Medians of the herald-bench runs in bench/results.jsonl, as Markdown tables, and two SVG charts
(latency percentiles vs rate, RSS per connection vs connections). Standard library only.

Usage: scripts/bench_report.py [bench/results.jsonl] [docs/bench]
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

results = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.jsonl")
out_dir = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/bench")
runs = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
med = statistics.median

# Memory: per label (memory-N), the per-connection RSS of the socket-holding instance.
memory = defaultdict(list)
for r in runs:
    if r["label"].startswith("memory-"):
        memory[r["connected"]].append(r["rss"][0]["per_conn_kib"])
print("## Idle memory\n\n| connections | runs | KiB RSS per connection (median) | min | max |\n|---|---|---|---|---|")
for n in sorted(memory):
    v = memory[n]
    print(f"| {n} | {len(v)} | {med(v):.1f} | {min(v):.1f} | {max(v):.1f} |")

# Load phases: per (label, rate).
phases = defaultdict(list)
for r in runs:
    for p in r.get("phases", []):
        phases[(r["label"], p["rate"])].append(p)
print("\n## Load phases (medians)\n")
print("| run | rate/s | runs | sent | delivered | lost | dup | delivered/s | e2e p50/p90/p99/max ms "
      "| herald share p50/p90/p99/max ms | herald us/notif | herald CPU s | bench CPU s | workers CPU s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (label, rate), ps in sorted(phases.items()):
    def m(key):
        return med([p[key] for p in ps])

    def pct(key):
        vals = [p[key] for p in ps if p.get(key)]
        if not vals:
            return "-"
        return "/".join(f"{med([v[i] for v in vals]) / 1000:.2f}" for i in range(4))

    print(f"| {label} | {rate or 'max'} | {len(ps)} | {m('sent'):.0f} | {m('delivered'):.0f} | {m('lost'):.0f} "
          f"| {m('duplicated'):.0f} | {m('delivered_per_sec'):.0f} | {pct('e2e_us')} | {pct('share_us')} "
          f"| {m('herald_cpu_us_per_delivered'):.2f} | {m('herald_cpu_us') / 1e6:.2f} | {m('bench_cpu_us') / 1e6:.2f} "
          f"| {m('workers_cpu_us') / 1e6:.2f} |")

others = [r for r in runs if r["label"].startswith("five")]
if others:
    print("\n## Five instances\n")
    for r in others:
        per = ", ".join(f"{x['sockets']}: {x['per_conn_kib']:.1f} KiB" for x in r["rss"])
        p = r.get("phases", [{}])[0]
        print(f"- {r['connected']} connected ({r['connect_failed']} failed) in {r['connect_secs']:.0f} s; per instance {per}; "
              f"sent {p.get('sent')} delivered {p.get('delivered')} lost {p.get('lost')} dup {p.get('duplicated')}")


def svg_chart(path, title, xlabel, ylabel, series, log_x=False, log_y=False):
    """series: [(name, colour, [(x, y), ...])]; a plain line chart."""
    import math
    w, h, left, bottom, top, right = 640, 400, 70, 50, 40, 160
    xs = [x for _, _, pts in series for x, _ in pts]
    ys = [y for _, _, pts in series for _, y in pts]
    if not xs:
        return
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    if log_y:  # decades from 0.01; values below (a negative estimate) sit on the axis
        lo, hi = -2, math.ceil(math.log10(max(ys)))
        fy = lambda v: (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo)
        ticks = [10 ** e for e in range(lo, hi + 1)]
    else:
        y1 = max(ys) * 1.1 or 1
        fy = lambda v: v / y1
        ticks = [y1 * i / 5 for i in range(6)]
    px = lambda v: left + (fx(v) - x0) / ((x1 - x0) or 1) * (w - left - right)
    py = lambda v: h - bottom - fy(v) * (h - top - bottom)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
             f'<text x="{(w - right + left) / 2}" y="{h - 10}" text-anchor="middle">{xlabel}</text>',
             f'<text x="15" y="{h / 2}" text-anchor="middle" transform="rotate(-90 15 {h / 2})">{ylabel}</text>']
    for v in ticks:
        parts.append(f'<text x="{left - 5}" y="{py(v) + 4}" text-anchor="end">{v:.3g}</text>')
        parts.append(f'<line x1="{left}" y1="{py(v)}" x2="{w - right}" y2="{py(v)}" stroke="#ddd"/>')
    for x in sorted(set(xs)):
        parts.append(f'<text x="{px(x)}" y="{h - bottom + 15}" text-anchor="middle">{x:g}</text>')
    for k, (name, colour, pts) in enumerate(series):
        pts = sorted(pts)
        d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<rect x="{w - right + 10}" y="{top + k * 18}" width="12" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{w - right + 27}" y="{top + k * 18 + 5}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


out_dir.mkdir(parents=True, exist_ok=True)
colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
series = []
for label in ("single", "pair"):
    for key, tag in (("share_us", "herald share"), ("e2e_us", "end-to-end")):
        for i, q in ((0, "p50"), (2, "p99")):
            pts = []
            for (lab, rate), ps in phases.items():
                vals = [p[key][i] for p in ps if p.get(key)]
                if lab == label and rate and vals:
                    pts.append((rate, med(vals) / 1000))
            if pts:
                series.append((f"{label} {tag} {q}", colours[len(series) % len(colours)], pts))
svg_chart(out_dir / "latency.svg", "Latency percentiles vs rate (medians)", "records/s (log)", "ms (log)", series, log_x=True, log_y=True)
mem = [("KiB per idle connection", colours[0], [(n, med(v)) for n, v in memory.items()])]
svg_chart(out_dir / "memory.svg", "herald RSS per idle WebSocket vs connections", "connections", "KiB", mem)
