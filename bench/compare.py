#!/usr/bin/env python3
"""Ratios of our JSON GetMe (through Envoy) against the FastAPI peer's /users/me, same database
and concurrency, from one bench/run: bench/compare.py bench/results/<timestamp>"""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
ours = json.loads((out / "ours" / "results.json").read_text())["results"]
peer = json.loads((out / "peer" / "peer.json").read_text())

print("| db | c | ours req/s | peer req/s | ratio | ours p99 ms | peer p99 ms | ours peak RSS MiB | peer peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for p in peer:
    name = f"getme json via envoy c={p['concurrency']}"
    mine = next((r for r in ours if r["db"] == p["db"] and r["scenario"] == name), None)
    if mine is None:
        continue
    ratio = mine["throughput"] / p["rps"] if p["rps"] else float("inf")
    print(f"| {p['db']} | {p['concurrency']} | {mine['throughput']:.0f} | {p['rps']:.1f} | {ratio:.1f}x "
          f"| {mine['p99_ms']:.2f} | {p['p99_ms']:.2f} | {mine['peak_rss_mib']:.1f} | {p['peak_rss_mib']:.1f} |")
