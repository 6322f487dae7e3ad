"""Import + first step in a fresh process, with numba's on-disk kernel cache cold and warm.

    python bench/cold_start.py [--runs N]

Each run is a new Python process that imports numba_opt and makes one Adam step on a small
(serial kernel) and a large (parallel kernel) float32 array.  'cold' gives every run an empty
NUMBA_CACHE_DIR (the kernels compile); 'warm' reuses a filled one (they load from disk).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PROBE = """
import time
start = time.perf_counter()
import numpy as np
import numba_opt as nopt
imported = time.perf_counter()
small, large = np.zeros(1000, np.float32), np.zeros(1_000_000, np.float32)
opt = nopt.Adam([small, large])
opt.step([np.ones_like(small), np.ones_like(large)])
stepped = time.perf_counter()
print(imported - start, stepped - imported)
"""


def run_probe(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def measure(runs):
    results = {"cold": [], "warm": []}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            results["cold"].append(run_probe(cache))
    with tempfile.TemporaryDirectory() as cache:
        run_probe(cache)  # fill the cache
        for _ in range(runs):
            results["warm"].append(run_probe(cache))
    return {state: {"import_s": statistics.median(r[0] for r in values),
                    "first_step_s": statistics.median(r[1] for r in values), "runs": runs}
            for state, values in results.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per cache state")
    parser.add_argument("--out", default=os.path.join("bench", "results", "cold_start.json"))
    args = parser.parse_args()
    summary = measure(args.runs)
    print(f"{'cache':<6} {'import':>8} {'first step':>11}   (median of {args.runs} processes)")
    for state, row in summary.items():
        print(f"{state:<6} {row['import_s']:>7.2f}s {row['first_step_s']:>10.2f}s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
