#!/usr/bin/env python3
"""Where a massif heap snapshot's bytes go, per connection: each allocation is charged to the
first frame above it that is herald's own code (or a task's future, named by its type), and the
sites are listed by bytes, divided by the number of connections.

Usage: scripts/massif_sites.py massif.out CONNECTIONS [SNAPSHOT [BASELINE]]
SNAPSHOT defaults to the peak; with BASELINE (a detailed snapshot taken before the connections),
what it held is subtracted, site by site, so the figures are what the connections added.
"""
import re
import sys


def parse(path):
    """The snapshots: (number, heap bytes, tree) with tree = (bytes, desc, children)."""
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    snapshots, i = [], 0
    while i < len(lines):
        if lines[i].startswith("snapshot="):
            number = int(lines[i].split("=")[1])
            heap = 0
            j = i + 1
            while j < len(lines) and not lines[j].startswith(("heap_tree=", "snapshot=")):
                if lines[j].startswith("mem_heap_B="):
                    heap = int(lines[j].split("=")[1])
                j += 1
            kind = lines[j].split("=")[1] if j < len(lines) and lines[j].startswith("heap_tree=") else "empty"
            tree = None
            if kind in ("detailed", "peak"):
                tree, j = node(lines, j + 1)
            snapshots.append((number, heap, kind, tree))
            i = j
        else:
            i += 1
    return snapshots


def node(lines, i):
    m = re.match(r"\s*n(\d+): (\d+) (.*)", lines[i])
    children, j = [], i + 1
    for _ in range(int(m.group(1))):
        child, j = node(lines, j)
        children.append(child)
    return (int(m.group(2)), m.group(3), children), j


def site(desc):
    task = re.search(r"Cell<(.+?)::\{", desc)
    if "task::core::Cell" in desc and task:
        return "task: " + task.group(1)
    m = re.search(r"(herald::[\w:<>]+)", desc)
    return m.group(1) if m else None


def charge(tree, found, sites):
    bytes_, desc, children = tree
    here = found or site(desc)
    if not children:
        sites[here or "(outside herald)"] = sites.get(here or "(outside herald)", 0) + bytes_
        return
    covered = sum(c[0] for c in children)
    if bytes_ > covered:
        sites[here or "(below threshold)"] = sites.get(here or "(below threshold)", 0) + bytes_ - covered
    for c in children:
        # Charged to the frame nearest the allocation (the first one met going up).
        charge(c, here, sites)


def sites_of(snap):
    sites = {}
    for child in snap[3][2]:
        charge(child, None, sites)
    return sites


def main():
    path, conns = sys.argv[1], int(sys.argv[2])
    snapshots = [s for s in parse(path) if s[3] is not None]
    wanted = int(sys.argv[3]) if len(sys.argv) > 3 else None
    snap = next(s for s in snapshots if (s[0] == wanted if wanted is not None else s[2] == "peak"))
    sites = sites_of(snap)
    heap = snap[1]
    if len(sys.argv) > 4:
        base = next(s for s in snapshots if s[0] == int(sys.argv[4]))
        for name, b in sites_of(base).items():
            sites[name] = sites.get(name, 0) - b
        heap -= base[1]
        print(f"snapshot {snap[0]} minus snapshot {base[0]}:")
    total = sum(sites.values())
    print(f"{heap:,} B of heap, {heap / conns:,.0f} B per connection ({conns} connections)")
    for name, b in sorted(sites.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{b / conns:8.0f} B  {100 * b / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
