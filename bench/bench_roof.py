"""How close is one Adam step to the memory-bandwidth roof?  (pyperf; all peers in one run)

    python bench/bench_roof.py [--size N] [--dtype float32|float64] [pyperf options, e.g. --fast]

An Adam step reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq:
7 arrays of traffic.  Peers, each timed on the same n:
- roof 4R/3W: a Numba prange loop with exactly Adam's traffic and one add per element;
- copy: np.copyto and a Numba prange copy (2 arrays of traffic), reported as bandwidth;
- NumPy Adam as users write it (temporaries), and torch.optim.Adam(fused=True) if installed.
The table prints bandwidth in GB/s (bytes moved / time) and each row's ratio to the roof.
"""
import sys
import time

import numpy as np
import pyperf
from numba import njit, prange

import numba_opt as nopt


@njit(parallel=True, error_model="numpy", cache=True)
def roof_4r3w(a, b, c, d):
    for i in prange(a.size):
        s = a[i] + b[i] + c[i] + d[i]
        a[i] = s
        c[i] = s
        d[i] = s


@njit(parallel=True, error_model="numpy", cache=True)
def parallel_copy(dst, src):
    for i in prange(dst.size):
        dst[i] = src[i]


def arrays(n, dtype, k):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) * 1e-3 for _ in range(k)]


def timed(step, loops):
    step()  # compile / warm outside the timing
    start = time.perf_counter()
    for _ in range(loops):
        step()
    return time.perf_counter() - start


def bench_numba_opt(loops, n, dtype):
    p, g = arrays(n, dtype, 2)
    opt = nopt.Adam([p], lr=1e-6)
    grads = [g]
    return timed(lambda: opt.step(grads), loops)


def bench_roof(loops, n, dtype):
    a, b, c, d = arrays(n, dtype, 4)
    return timed(lambda: roof_4r3w(a, b, c, d), loops)


def bench_numpy_copy(loops, n, dtype):
    a, b = arrays(n, dtype, 2)
    return timed(lambda: np.copyto(a, b), loops)


def bench_numba_copy(loops, n, dtype):
    a, b = arrays(n, dtype, 2)
    return timed(lambda: parallel_copy(a, b), loops)


def bench_numpy_adam(loops, n, dtype):
    p, g = arrays(n, dtype, 2)
    m, v = np.zeros_like(p), np.zeros_like(p)
    lr, b1, b2, eps, t = 1e-6, 0.9, 0.999, 1e-8, [0]

    def step():
        t[0] += 1
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        p[...] -= lr / (1 - b1 ** t[0]) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t[0]) + eps)
    return timed(step, loops)


def bench_torch_fused(loops, n, dtype):
    import torch
    p, g = arrays(n, dtype, 2)
    tp = torch.from_numpy(p).requires_grad_()
    tp.grad = torch.from_numpy(g)
    opt = torch.optim.Adam([tp], lr=1e-6, fused=True)
    return timed(opt.step, loops)


# name, function, arrays of traffic per element
CASES = [
    ("roof 4R/3W (numba prange)", bench_roof, 7),
    ("numba_opt Adam", bench_numba_opt, 7),
    ("torch Adam fused", bench_torch_fused, 7),
    ("NumPy Adam (temporaries)", bench_numpy_adam, 7),
    ("copy (numba prange)", bench_numba_copy, 2),
    ("copy (np.copyto)", bench_numpy_copy, 2),
]


def main():
    runner = pyperf.Runner(processes=2, values=3, warmups=1)  # --rigorous for more
    runner.argparser.add_argument("--size", type=float, default=1e7)
    runner.argparser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = runner.parse_args()
    n, dtype = int(args.size), np.dtype(args.dtype)
    try:
        import torch  # noqa: F401
    except ImportError:
        CASES[:] = [c for c in CASES if c[1] is not bench_torch_fused]
    results = {}
    for name, fn, traffic in CASES:
        bench = runner.bench_time_func(f"{name} n={n} {dtype}", fn, n, dtype)
        if bench is not None and not args.worker:  # the master process holds all the values
            results[name] = (bench.median(), traffic)
    if args.worker:
        return
    roof_seconds = results["roof 4R/3W (numba prange)"][0]
    print(f"\nn = {n:,} {dtype}; ratio = roof time / this time for 7-array rows, "
          "bandwidth ratio for copies")
    print(f"{'case':<28} {'ms/step':>9} {'GB/s':>7} {'vs roof':>8}")
    roof_bw = 7 * n * dtype.itemsize / roof_seconds
    for name, (seconds, traffic) in results.items():
        bandwidth = traffic * n * dtype.itemsize / seconds
        print(f"{name:<28} {seconds * 1e3:>9.3f} {bandwidth / 1e9:>7.2f} "
              f"{bandwidth / roof_bw:>8.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
