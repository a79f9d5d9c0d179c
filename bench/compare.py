#!/usr/bin/env python3
"""Ratios of our JSON GetMe (through Envoy) against the FastAPI peer's /users/me, same database
and concurrency, from one bench/run: bench/compare.py bench/results/<timestamp>"""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
ours = json.loads((out / "ours" / "results.json").read_text())["results"]
peer = json.loads((out / "peer" / "peer.json").read_text())

def row(db, name):
    return next((r for r in ours if r["db"] == db and r["scenario"] == name), None)


print("| db | c | ours req/s | peer req/s | ratio | ours p99 ms | peer p99 ms | ours peak RSS MiB | peer peak RSS MiB "
      "| Envoy ceiling req/s | ceiling ÷ peer | ours ÷ ceiling |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for p in peer:
    c = p["concurrency"]
    mine = row(p["db"], f"getme json via envoy c={c}")
    if mine is None:
        continue
    ratio = mine["throughput"] / p["rps"] if p["rps"] else float("inf")
    # What Envoy alone does when it answers the same reply itself: no route through it does more.
    ceiling = row(p["db"], f"envoy ceiling (static reply) c={c}")
    top = ceiling["throughput"] if ceiling else float("nan")
    over_peer = top / p["rps"] if p["rps"] else float("inf")
    print(f"| {p['db']} | {c} | {mine['throughput']:.0f} | {p['rps']:.1f} | {ratio:.1f}x "
          f"| {mine['p99_ms']:.2f} | {p['p99_ms']:.2f} | {mine['peak_rss_mib']:.1f} | {p['peak_rss_mib']:.1f} "
          f"| {top:.0f} | {over_peer:.1f}x | {100 * mine['throughput'] / top:.0f}% |")
