"""The `distributed` suite: ZeRO-1 data parallel over MPI, step time and optimizer memory per rank.

    python -m bench --suite distributed [--ranks 1 2 4] [--size 10000000] [--quick] [--out DIR]

For each rank count N it launches ``mpiexec -n N python bench/distributed.py --worker`` and
measures, on every rank, with a barrier before each timed call (medians over the repetitions of
rank 0's view of the slowest rank):
- the whole ``ZeroRedundancyOptimizer(Adam).step`` over one float32 FlatParams of ``--size``
  elements with fresh grads;
- its communication alone: the same Reduce_scatter and Allgatherv on buffers of that size;
- its update alone: a plain Adam step over one shard (size/N elements);
- plain data parallel for comparison: one Allreduce of the grads plus a full Adam step;
- Allreduce / Reduce_scatter / Allgather times over message sizes, fitted to t = a + n*b per
  rank count (the ring model's latency and per-byte cost);
- the optimizer state bytes on each rank.
Then it writes results.json, results.md (with the ring model's step time at 8-1024 ranks, from
the measured update speed and two sets of link parameters) and distributed.png under --out
(bench/results/distributed).  This machine has 2 cores: above 2 ranks the ranks share cores, so
those rows measure oversubscription as much as MPI.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPEATS, QUICK_REPEATS = 15, 5
MESSAGE_SIZES = [1_000, 10_000, 100_000, 1_000_000, 4_000_000]  # float32 elements
# A datacentre link for the model beside this machine's shared memory: InfiniBand HDR,
# 200 Gb/s = 25 GB/s per direction, ~2 us per message (an assumption, not a measurement).
INFINIBAND = {"name": "InfiniBand HDR (assumed)", "latency_s": 2e-6, "bytes_per_s": 25e9}


# ------------------------------------------------------------------------------ the worker
def _timed(comm, call, repeats):
    """Median over ``repeats`` of the slowest rank's seconds for ``call()`` (after a barrier)."""
    call()  # warm up (compile, allocate, first MPI connection)
    seconds = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        seconds.append(comm.allreduce(elapsed, op=_mpi().MAX))
    return statistics.median(seconds)


def _mpi():
    from mpi4py import MPI
    return MPI


def worker(size, repeats):
    MPI = _mpi()
    import numba_opt as nopt
    from numba_opt import distributed as dist
    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    flat = nopt.FlatParams([np.zeros(size, np.float32)])
    dist.broadcast_params(flat, comm)
    zero = dist.ZeroRedundancyOptimizer(flat, nopt.Adam, comm=comm, lr=1e-4)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(2)]
    turn = [0]

    def zero_step():  # fresh grads each step, written where the model's backward would
        flat.grad[...] = grads[turn[0] % 2]
        turn[0] += 1
        zero.step(flat.grads)

    counts = [(r + 1) * size // ranks - r * size // ranks for r in range(ranks)]
    shard = np.empty(counts[rank], np.float32)

    def communication():
        comm.Reduce_scatter(flat.grad, shard, recvcounts=counts, op=MPI.SUM)
        comm.Allgatherv(MPI.IN_PLACE, [flat.data, counts])

    local = [np.zeros(counts[rank], np.float32)]
    plain_shard = nopt.Adam(local, lr=1e-4)
    shard_grad = [grads[0][:counts[rank]].copy()]
    full = [np.zeros(size, np.float32)]
    plain_full = nopt.Adam(full, lr=1e-4)

    def plain_dp_step():
        g = grads[turn[0] % 2].copy()
        turn[0] += 1
        comm.Allreduce(MPI.IN_PLACE, g)
        g *= 1.0 / ranks
        plain_full.step([g])

    record = {"ranks": ranks, "size": size,
              "zero step": _timed(comm, zero_step, repeats),
              "communication": _timed(comm, communication, repeats),
              "update (shard)": _timed(comm, lambda: plain_shard.step(shard_grad), repeats),
              "plain DP step": _timed(comm, plain_dp_step, repeats),
              "update (full, 1 rank's work)": _timed(comm, lambda: plain_full.step(
                  [grads[0]]), repeats),
              "state bytes per rank": comm.allgather(zero.state_nbytes),
              "plain state bytes": sum(b.nbytes for st in plain_full.state for b in st.values()
                                       if isinstance(b, np.ndarray)),
              "collectives": _collectives(comm, repeats)}
    if rank == 0:
        print("JSON " + json.dumps(record), flush=True)


def _collectives(comm, repeats):
    """{collective: [(bytes, seconds)]} over MESSAGE_SIZES float32 messages."""
    MPI = _mpi()
    ranks = comm.Get_size()
    out = {"Allreduce": [], "Reduce_scatter": [], "Allgather": []}
    for n in MESSAGE_SIZES:
        n -= n % ranks
        data = np.ones(n, np.float32)
        part = np.empty(n // ranks, np.float32)
        out["Allreduce"].append((data.nbytes, _timed(
            comm, lambda: comm.Allreduce(MPI.IN_PLACE, data), repeats)))
        out["Reduce_scatter"].append((data.nbytes, _timed(
            comm, lambda: comm.Reduce_scatter_block(data, part, op=MPI.SUM), repeats)))
        out["Allgather"].append((data.nbytes, _timed(
            comm, lambda: comm.Allgather(MPI.IN_PLACE, data), repeats)))
    return out


# ------------------------------------------------------------------------------ the runner
def launch(ranks, size, repeats):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                                   os.environ.get("PYTHONPATH")])))
    command = [mpiexec, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker",
               "--size", str(size), "--repeats", str(repeats)]
    print(f"[distributed] {ranks} rank(s): {' '.join(command[:3])} ...", file=sys.stderr,
          flush=True)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"mpiexec -n {ranks} failed:\n{result.stdout[-3000:]}"
                           f"{result.stderr[-3000:]}")
    line = next(l for l in result.stdout.splitlines() if l.startswith("JSON "))
    return json.loads(line[5:])


def fit(points):
    """(latency seconds, seconds per byte) of t = a + bytes * b, least squares."""
    x = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points], float)
    b, a = np.polyfit(x, t, 1)
    return max(a, 0.0), max(b, 0.0)


def ring_model(records, size, links, rank_counts=(8, 16, 64, 256, 1024)):
    """Modelled ZeRO-1 and plain-DP step seconds at many ranks: ring reduce-scatter and
    all-gather ((N-1) messages of S/N each), the update of S/N elements at the speed measured
    on one rank here; plain DP: a ring allreduce (twice that traffic) and the full update."""
    one = next(r for r in records if r["ranks"] == 1)
    per_element = one["update (full, 1 rank's work)"] / one["size"]
    nbytes = 4 * size
    rows = []
    for link in links:
        alpha, per_byte = link["latency_s"], 1.0 / link["bytes_per_s"]
        for n in rank_counts:
            one_pass = (n - 1) * alpha + (n - 1) / n * nbytes * per_byte
            zero = 2 * one_pass + per_element * size / n
            plain = 2 * one_pass + per_element * size
            rows.append(dict(link=link["name"], ranks=n, zero_s=zero, plain_s=plain,
                             comm_s=2 * one_pass, zero_state_mb=8 * size / n / 1e6,
                             plain_state_mb=8 * size / 1e6))
    return rows


def write(records, size, out):
    os.makedirs(out, exist_ok=True)
    two = next((r for r in records if r["ranks"] == 2), None)
    links = []
    if two is not None:  # this machine's shared memory, from the 2-rank fits
        a, b = fit(two["collectives"]["Reduce_scatter"])
        links.append({"name": "this machine, shared memory (measured, 2 ranks)",
                      "latency_s": a, "bytes_per_s": 1.0 / b if b else float("inf")})
    links.append(INFINIBAND)
    model = ring_model(records, size, links)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"records": records, "model": model, "links": links}, f, indent=1)
    lines = [f"# distributed suite: ZeRO-1 Adam over MPI, {size:,} float32 params", "",
             "Medians of the slowest rank; fresh grads each step. This machine has 2 cores: "
             "above 2 ranks the ranks share cores.", "",
             "| ranks | ZeRO step | comm (RS + AG) | update (shard) | plain DP step | "
             "state MB per rank | plain state MB |", "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['ranks']} | {r['zero step'] * 1e3:.2f} ms | "
                     f"{r['communication'] * 1e3:.2f} ms | {r['update (shard)'] * 1e3:.2f} ms | "
                     f"{r['plain DP step'] * 1e3:.2f} ms | "
                     f"{max(r['state bytes per rank']) / 1e6:.1f} | "
                     f"{r['plain state bytes'] / 1e6:.1f} |")
    lines += ["", "Collective fits t = a + bytes/B (Reduce_scatter, Allgather, Allreduce):", "",
              "| ranks | collective | a (us) | B (GB/s) |", "|---|---|---|---|"]
    for r in records:
        if r["ranks"] == 1:  # no communication to fit
            continue
        for name, points in r["collectives"].items():
            a, b = fit(points)
            lines.append(f"| {r['ranks']} | {name} | {a * 1e6:.1f} | "
                         f"{(1 / b / 1e9) if b else float('inf'):.2f} |")
    lines += ["", "Ring model at many ranks (update speed measured on 1 rank here):", "",
              "| link | ranks | ZeRO-1 step | of which comm | plain DP step | ZeRO state MB/rank "
              "| plain state MB/rank |", "|---|---|---|---|---|---|---|"]
    for m in model:
        lines.append(f"| {m['link']} | {m['ranks']} | {m['zero_s'] * 1e3:.2f} ms | "
                     f"{m['comm_s'] * 1e3:.2f} ms | {m['plain_s'] * 1e3:.2f} ms | "
                     f"{m['zero_state_mb']:.2f} | {m['plain_state_mb']:.1f} |")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(records, os.path.join(out, "distributed.png"))
    return "\n".join(lines)


def _plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4.5))
    ranks = [r["ranks"] for r in records]
    x = np.arange(len(ranks))
    for k, (key, label) in enumerate([("zero step", "ZeRO-1 step"),
                                      ("communication", "its comm (RS + AG)"),
                                      ("update (shard)", "its update (shard)"),
                                      ("plain DP step", "plain DP step")]):
        ax.bar(x + (k - 1.5) * 0.2, [r[key] * 1e3 for r in records], 0.2, label=label)
    ax.set(xticks=x, xticklabels=[str(n) for n in ranks], xlabel="MPI ranks",
           ylabel="ms per step (median, slowest rank)", title="Adam step, data parallel")
    ax.legend(fontsize=8)
    mem.bar(x - 0.2, [max(r["state bytes per rank"]) / 1e6 for r in records], 0.4,
            label="ZeRO-1")
    mem.bar(x + 0.2, [r["plain state bytes"] / 1e6 for r in records], 0.4, label="plain DP")
    mem.set(xticks=x, xticklabels=[str(n) for n in ranks], xlabel="MPI ranks",
            ylabel="optimizer state MB per rank", title="Adam state per rank")
    mem.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench --suite distributed")
    parser.add_argument("--suite", default="distributed")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "distributed"))
    args = parser.parse_args(argv)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    if args.worker:
        return worker(args.size, repeats)
    if 1 not in args.ranks:
        parser.error("--ranks must include 1 (the model's update speed comes from it)")
    records = [launch(n, args.size, repeats) for n in args.ranks]
    print(write(records, args.size, args.out))
    print(f"wrote {args.out}/results.json, results.md, distributed.png")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
