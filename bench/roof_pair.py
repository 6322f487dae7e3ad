"""numba_opt's Adam step against the memory roof, interleaved step by step in one process.

    python bench/roof_pair.py [--sizes 1e7 3e7] [--reps 40]

The size suite times the roof and numba_opt minutes apart; on a shared machine whose memory
speed drifts that moves "of roof" by 20% or more.  Here each roof call (a prange loop with Adam's
4-read/3-write traffic) is followed by one numba_opt step of the same size (both far larger than
the cache), after 12 warm-up calls each, and the medians are compared.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba_opt import benchmarking as peers  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7, 3e7])
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    for n in (int(size) for size in args.sizes):
        roof = peers.roof([n], np.dtype(np.float32))
        adam = peers.numba_opt_list([n], np.dtype(np.float32))
        for _ in range(12):
            roof()
            adam()
        roof_times, adam_times = [], []
        for _ in range(args.reps):
            for step, times in ((roof, roof_times), (adam, adam_times)):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
        r, a = np.median(roof_times), np.median(adam_times)
        print(f"n={n:.0e}: roof {r * 1e3:.2f} ms, numba_opt {a * 1e3:.2f} ms, of roof {r / a:.2f}")


if __name__ == "__main__":
    main()
