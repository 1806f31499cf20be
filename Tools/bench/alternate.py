#!/usr/bin/env python3
"""Alternates `arcflow bench` over compiled model folders and pools every timed run (never run by CI).

On a shared host one folder's runs spread by 5-15% from one process to the next, which hides a 3%
difference between two compiles of one model (f32 against int8, a pass on or off). Alternating the
folders round by round (the order reversed every other round) lets all of them see the same machine
states; the medians of the pooled runs (`bench --json`'s ms_runs) and their ratio to the first folder
are what to read, next to the minima (a quiet host puts min and median within about 1%).

    python3 Tools/bench/alternate.py [--rounds 8] [--runs 4] [--threads 2] [--arcflow PATH] FOLDER...
"""
import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--rounds", type=int, default=8)
ap.add_argument("--runs", type=int, default=4, help="timed runs per folder and round (after one warm-up)")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--arcflow", default=os.path.join(ROOT, ".build/release/arcflow"))
ap.add_argument("folders", nargs="+")
args = ap.parse_args()
pool = {f: [] for f in args.folders}
for r in range(args.rounds):
    for f in args.folders if r % 2 == 0 else args.folders[::-1]:
        out = subprocess.run([args.arcflow, "bench", "--model", f, "--runs", str(args.runs), "--warmup", "1", "--no-baseline",
                              "--threads", str(args.threads), "--json"], check=True, capture_output=True, text=True).stdout
        pool[f] += json.loads(out[out.index("{"):])["ms_runs"]
    print(f"round {r + 1}/{args.rounds} done", flush=True)
base = statistics.median(pool[args.folders[0]])
print(f"{'folder':40s} {'median ms':>10s} {'min ms':>10s} {'runs':>5s} {'median / first':>15s}")
for f in args.folders:
    med = statistics.median(pool[f])
    print(f"{f:40s} {med:10.1f} {min(pool[f]):10.1f} {len(pool[f]):5d} {med / base:15.3f}")
