"""Adam on low-precision storage against all-float32 Adam, interleaved step by step in one
process (issue 14's targets are ratios; on a shared machine whose memory speed drifts, steps
timed minutes apart in separate processes move them by 20% or more).

    python bench/lowp_pair.py [--sizes 1e7] [--reps 40] [--loops serial] [--torch]

Each round runs one step of every contender (the same size, far larger than the cache), after 8
warm-up rounds; the medians are compared with numba_opt's float32 params and state.  Besides the
wall time it reports the CPU time of the calling thread: with ``--loops serial`` that is the
whole step's work on one core, which other processes on a busy machine do not inflate (they
take turns on the cores, and a thread's CPU time counts only its own turns).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba_opt import benchmarking as peers  # noqa: E402

CONTENDERS = [  # (label, param dtype, options)
    ("float32 params, float32 state", "float32", {}),
    ("float32 params, bfloat16 state", "float32", dict(state_dtype="bfloat16")),
    ("bfloat16 params, bfloat16 state", "bfloat16", {}),
    ("bfloat16 params + float32 master, bfloat16 state", "bfloat16",
     dict(master_weights=True, state_dtype="bfloat16")),
    ("float16 params, float16 state", "float16", {}),
    ("float32 params, int8 state", "float32", dict(state_dtype="int8")),
    ("bfloat16 params, bfloat16 state, stochastic", "bfloat16", dict(stochastic_rounding=True)),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--torch", action="store_true", help="add torch fused (float32, bf16)")
    parser.add_argument("--loops", choices=["serial", "parallel"],
                        help="fix numba_opt's loop (default: its own choice per call site)")
    args = parser.parse_args()
    for n in (int(size) for size in args.sizes):
        steps = [(label, peers.numba_opt_list([n], np.dtype(dtype), loops=args.loops,
                                              **options),
                  peers.storage_bytes("Adam", dtype, **options))
                 for label, dtype, options in CONTENDERS]
        steps.insert(0, ("roof 4R/3W (float32)", peers.roof([n], np.dtype(np.float32)),
                         peers.storage_bytes("Adam", "float32")))
        if args.torch:
            for dtype in ("float32", "bfloat16"):
                steps.append((f"torch fused, {dtype} params and state",
                              peers.torch_optim([n], np.dtype(dtype), "Adam", mode="fused"),
                              peers.storage_bytes("Adam", dtype)))
        times = {label: [] for label, _, _ in steps}
        for rep in range(8 + args.reps):
            for label, step, _ in steps:
                start, cpu = time.perf_counter(), time.thread_time()
                step()
                if rep >= 8:
                    times[label].append((time.perf_counter() - start, time.thread_time() - cpu))
        base = np.median(times[CONTENDERS[0][0]], axis=0)
        print(f"n={n:.0e}, medians of {args.reps} interleaved steps, numba_opt loops: "
              f"{args.loops or 'its own choice'}:")
        print(f"{'':50s} {'state B':>8s} {'moved B':>8s} {'wall ms':>8s} {'vs f32':>7s} "
              f"{'CPU ms':>8s} {'vs f32':>7s}")
        for label, _, (state, moved) in steps:
            wall, cpu = np.median(times[label], axis=0)
            print(f"{label:50s} {state:8.3g} {moved:8.3g} {wall * 1e3:8.2f} {base[0] / wall:6.2f}x "
                  f"{cpu * 1e3:8.2f} {base[1] / cpu:6.2f}x")


if __name__ == "__main__":
    main()
