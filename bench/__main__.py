"""The numba_opt benchmark suite (pyperf).  Every peer of a case is measured in the same run.

    python -m bench [--quick] [--suite size|model|optimizer|clipping|fresh-grads|low-precision|
                               memory|all]
                    [--out DIR] [pyperf opts]
    python -m bench --suite training-loop [--quick] [--out DIR] [pyperf opts]
    python -m bench --suite distributed [--ranks 1 2 4] [--size N] [--quick] [--out DIR]

Suites:
- size:      Adam, float32, one tensor of n = 1e3 ... 3e7 elements;
- model:     Adam, float32, model-shaped lists (an MLP; transformer-like lists of 146 tensors);
- optimizer: every optimizer, float32 and float64, one tensor of 1e6 elements;
- clipping:  Adam float32 with global-norm clipping, fused into the step vs clip-then-step;
- low-precision: Adam at 1e7 (and 3e7) params: float32 params and state, float32 params with
  bfloat16 state, bfloat16 params and state, bfloat16 params with float32 master copies, float16
  params; with the bytes per param each keeps and moves (issue 14);
- memory:    Adam at 1e7 params: float32 state, bfloat16 state, int8 state (where numba_opt has
  it), bfloat16 params and state, torch fused on float32 and bfloat16 tensors; the state bytes
  per param measured from each optimizer's state arrays after a step, and the step time;
- training-loop (not in 'all': about 10 minutes): Adam inside a NumPy training loop with fresh
  grads each step, idle and with a busy core; its own runner, see bench/training_loop.py.
- distributed (not in 'all'; needs the mpi extra): ZeRO-1 Adam over MPI for 1, 2, 4 ranks, step
  time split into communication and update, state bytes per rank, and a ring model at 8-1024
  ranks; its own runner, see bench/distributed.py.
Peers: the 4-read/3-write memory roof, numba_opt (serial, parallel; list and FlatParams),
torch.optim (for-loop, foreach, fused) when torch is installed, NumPy as people write it and
NumPy with out=; on a machine with a CUDA GPU also numba_opt CUDA, torch fused CUDA and a
device roof.  Writes results.json, results.md and throughput.png under --out (bench/results).
"""
import argparse
import os
import sys
import time

import numpy as np
import pyperf

# pyperf re-runs this file as a script in its worker processes: make ``bench`` importable there
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import report  # noqa: E402
from numba_opt import _codecs, benchmarking as peers  # noqa: E402

SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000, 30_000_000]
QUICK_SIZES = [1_000, 100_000, 10_000_000]


def transformer_shapes(d_model, layers=12, vocab=1000):
    """A transformer-like list: embeddings, then per layer attention, MLP and two layer norms."""
    shapes = [vocab * d_model, 512 * d_model]
    for _ in range(layers):
        shapes += [3 * d_model * d_model, 3 * d_model, d_model * d_model, d_model,  # attention
                   4 * d_model * d_model, 4 * d_model, 4 * d_model * d_model, d_model,  # MLP
                   d_model, d_model, d_model, d_model]  # two layer norms
    return shapes


MODELS = {
    "mlp 784-512-512-10": [784 * 512, 512, 512 * 512, 512, 512 * 10, 10],
    "transformer d=64": transformer_shapes(64),
    "transformer d=256": transformer_shapes(256),
}


def torch_installed():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def cases(suite, quick):
    """(suite, case, optimizer, dtype, peer, sizes, setup, options) for every benchmark."""
    has_torch, has_gpu = torch_installed(), peers.gpu_available()
    out = []

    def add(suite_name, case, optimizer, dtype, peer, sizes, setup, **options):
        out.append((suite_name, case, optimizer, dtype, peer, sizes, setup, options))

    if suite in ("size", "all"):
        for n in QUICK_SIZES if quick else SIZES:
            case, sizes = f"n={n:.0e}", [n]
            add("size", case, "Adam", "float32", "roof 4R/3W", sizes, peers.roof)
            add("size", case, "Adam", "float32", "numba_opt serial", sizes,
                peers.numba_opt_list, loops="serial")
            add("size", case, "Adam", "float32", "numba_opt parallel", sizes,
                peers.numba_opt_list, loops="parallel")
            add("size", case, "Adam", "float32", "numba_opt", sizes, peers.numba_opt_list)
            if has_torch:
                for mode in ("loop", "foreach", "fused"):
                    add("size", case, "Adam", "float32", f"torch {mode}", sizes,
                        peers.torch_optim, mode=mode)
            if n <= 10_000_000 or not quick:
                add("size", case, "Adam", "float32", "numpy", sizes, peers.numpy_adam)
                add("size", case, "Adam", "float32", "numpy out=", sizes, peers.numpy_adam_out)
            if has_gpu:
                add("size", case, "Adam", "float32", "GPU roof 4R/3W", sizes, peers.cuda_roof)
                add("size", case, "Adam", "float32", "GPU numba_opt", sizes,
                    peers.numba_opt_cuda)
                if peers.torch_cuda_available():
                    add("size", case, "Adam", "float32", "GPU torch fused", sizes,
                        peers.torch_optim, mode="fused", device="cuda")
    if suite in ("model", "all"):
        models = {k: v for k, v in MODELS.items() if not quick or k == "transformer d=64"}
        for model, sizes in models.items():
            case = f"{model} ({len(sizes)} tensors, {sum(sizes) / 1e6:.2f}M)"
            add("model", case, "Adam", "float32", "roof 4R/3W", sizes, peers.roof)
            add("model", case, "Adam", "float32", "numba_opt FlatParams", sizes,
                peers.numba_opt_flat)
            add("model", case, "Adam", "float32", "numba_opt list", sizes, peers.numba_opt_list)
            if has_torch:
                for mode in ("loop", "foreach", "fused"):
                    add("model", case, "Adam", "float32", f"torch {mode}", sizes,
                        peers.torch_optim, mode=mode)
            add("model", case, "Adam", "float32", "numpy", sizes, peers.numpy_adam)
    if suite in ("optimizer", "all"):
        n = 1_000_000
        for dtype in ("float32",) if quick else ("float32", "float64"):
            add("optimizer", f"n={n:.0e}", "Adam", dtype, "roof 4R/3W", [n], peers.roof)
            for optimizer in peers.OPTIMIZERS:
                case = f"n={n:.0e}"
                add("optimizer", case, optimizer, dtype, "numba_opt", [n], peers.numba_opt_list)
                if has_torch and peers.torch_class(optimizer) is not None:  # no torch Lion
                    mode = "fused" if peers.torch_has_fused(optimizer) else "foreach"
                    add("optimizer", case, optimizer, dtype, f"torch {mode}", [n],
                        peers.torch_optim, mode=mode)
    if suite in ("fresh-grads", "all"):
        # the per-array cost of new grad arrays every step: same grads vs fresh ones
        for count in (50, 216):
            case, sizes = f"{count} tensors x 100", [100] * count
            add("fresh-grads", case, "Adam", "float32", "numba_opt same grads", sizes,
                peers.numba_opt_list)
            add("fresh-grads", case, "Adam", "float32", "numba_opt fresh grads", sizes,
                peers.numba_opt_fresh_grads)
            if has_torch:
                add("fresh-grads", case, "Adam", "float32", "torch fused", sizes,
                    peers.torch_optim, mode="fused")
    if suite in ("clipping", "all"):
        shapes = {f"n={n:.0e}": [n] for n in ((1_000_000,) if quick else
                                               (100_000, 1_000_000, 10_000_000))}
        shapes["transformer d=64 (146 tensors)"] = MODELS["transformer d=64"]
        for case, sizes in shapes.items():
            add("clipping", case, "Adam", "float32", "roof 4R/3W", sizes, peers.roof)
            add("clipping", case, "Adam", "float32", "numba_opt no clipping", sizes,
                peers.numba_opt_flat)
            add("clipping", case, "Adam", "float32", "numba_opt fused clip", sizes,
                peers.numba_opt_clipped, how="fused")
            add("clipping", case, "Adam", "float32", "numba_opt + NumPy clip-then-step", sizes,
                peers.numba_opt_clipped, how="numpy")
            if has_torch:
                add("clipping", case, "Adam", "float32", "torch clip_grad_norm_ + fused",
                    sizes, peers.torch_clipped)
    def storage_cases(suite_name, n, storages, roof=True):
        """Adam at n params on each (dtype, peer, options) storage, beside torch fused on
        float32 and bfloat16 tensors (torch keeps the state in the param's dtype)."""
        case, sizes = f"n={n:.0e}", [n]
        if roof:
            add(suite_name, case, "Adam", "float32", "roof 4R/3W", sizes, peers.roof)
        for dtype, peer, options in storages:
            add(suite_name, case, "Adam", dtype, peer, sizes, peers.numba_opt_list, **options)
        if has_torch:
            for dtype in ("float32", "bfloat16"):
                add(suite_name, case, "Adam", dtype, "torch fused", sizes, peers.torch_optim,
                    mode="fused")

    if suite in ("low-precision", "all"):
        # what each storage costs in bytes and time, Adam at 1e7
        for n in (10_000_000,) if quick else (10_000_000, 30_000_000):
            storage_cases("low-precision", n, [
                STORAGE_FLOAT32, STORAGE_BFLOAT16_STATE, STORAGE_BFLOAT16,
                ("bfloat16", "numba_opt master_weights",
                 dict(master_weights=True, state_dtype="bfloat16")),
                ("float16", "numba_opt", {})])
    if suite in ("memory", "all"):
        # the state each storage keeps, measured from its arrays after a step, and its time
        int8 = [("float32", "numba_opt state int8", dict(state_dtype="int8"))]
        storage_cases("memory", 10_000_000, [STORAGE_FLOAT32, STORAGE_BFLOAT16_STATE]
                      + (int8 if "int8" in _codecs.STATE_DTYPES else []) + [STORAGE_BFLOAT16],
                      roof=False)
    return out


# (param dtype, peer, options) of the storages both the low-precision and memory suites time
STORAGE_FLOAT32 = ("float32", "numba_opt", {})
STORAGE_BFLOAT16_STATE = ("float32", "numba_opt state bfloat16", dict(state_dtype="bfloat16"))
STORAGE_BFLOAT16 = ("bfloat16", "numba_opt", {})


# Rough costs per peer: (per call, per tensor, bytes per second).  Used only to pick how many
# steps one pyperf value times (about 0.1 s), which spares a calibration process per benchmark.
_COST = {"roof": (4e-6, 0, 3e10), "numba_opt": (5e-6, 3e-6, 2.5e10),
         "torch fused": (8e-5, 5e-6, 2e10), "torch foreach": (5e-5, 2e-5, 1e10),
         "torch loop": (1e-5, 6e-5, 1e10), "torch clip": (1.5e-4, 1e-5, 1e10),
         "numpy out=": (5e-6, 2e-5, 3e9),
         "numpy": (5e-6, 2e-5, 1.5e9), "GPU": (2e-5, 0, 1e12)}


def loops_for(peer, sizes, optimizer, dtype):
    key = next(k for k in _COST if peer.startswith(k) or peer.replace(" 4R/3W", "") == k)
    per_call, per_tensor, bandwidth = _COST[key]
    moved = peers.traffic(optimizer) * sum(sizes) * np.dtype(dtype).itemsize
    estimate = per_call + per_tensor * len(sizes) + moved / bandwidth
    return int(min(100_000, max(1, round(0.1 / estimate))))


def mixed_storage(optimizer, dtype, options):
    """The low-precision suite's record fields: state dtype, state bytes and bytes moved per
    param (the roof moves float32 Adam's bytes, torch keeps its state in the param's dtype)."""
    state_dtype = options.get("state_dtype")
    state_bytes, moved = peers.storage_bytes(optimizer, dtype, state_dtype,
                                             options.get("master_weights", False))
    return dict(state_dtype=state_dtype, state_bytes=state_bytes, moved_bytes=moved)


def measured_storage(setup, sizes, optimizer, dtype, options):
    """The memory suite's record fields: the state bytes per param measured from the state
    arrays the optimizer holds after a step (per-block scales and master copies included), and
    the bytes a step moves with that much state."""
    state_bytes = peers.measured_state_bytes(setup, sizes, dtype, optimizer, **options)
    master = options.get("master_weights", False)
    return dict(state_dtype=options.get("state_dtype"), state_bytes=state_bytes,
                moved_bytes=peers.moved_bytes(dtype, state_bytes, master))


_STEPS = {}  # benchmark name -> its step function, built once per worker process


def timed(loops, name, setup, sizes, optimizer, dtype, options):
    step = _STEPS.get(name)
    if step is None:
        step = _STEPS[name] = setup(sizes, np.dtype(dtype), optimizer=optimizer, **options)
        step()  # compile, allocate state
    start = time.perf_counter()
    for _ in range(loops):
        step()
    return time.perf_counter() - start


def forward_options(command, args):
    """pyperf starts workers with its own options only: pass ours on, so they list the same
    benchmarks in the same order."""
    command.extend(["--suite", args.suite, "--out", args.out] + ["--quick"] * args.quick)


def main():
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--suite")
    if pre.parse_known_args()[0].suite == "training-loop":  # a runner of its own (one a process)
        from bench import training_loop
        return training_loop.main()
    if pre.parse_known_args()[0].suite == "distributed":  # launches mpiexec per rank count
        from bench import distributed
        return distributed.main()
    runner = pyperf.Runner(processes=1, values=3, warmups=1, min_time=0.05,
                           add_cmdline_args=forward_options)
    runner.argparser.add_argument("--suite",
                                  choices=["size", "model", "optimizer", "clipping",
                                           "fresh-grads", "low-precision", "memory", "all",
                                           "training-loop", "distributed"],
                                  default="all")
    runner.argparser.add_argument("--quick", action="store_true",
                                  help="fewer sizes and models (a few minutes)")
    runner.argparser.add_argument("--out", default=os.path.join("bench", "results"))
    args = runner.parse_args()
    todo = cases(args.suite, args.quick)
    records = []
    for number, (suite, case, optimizer, dtype, peer, sizes, setup, options) in enumerate(todo):
        name = f"{suite} | {case} | {optimizer} {dtype} | {peer}"
        if not args.worker:
            print(f"[{number + 1}/{len(todo)}] {name}", file=sys.stderr, flush=True)
            runner.args.loops = loops_for(peer, sizes, optimizer, dtype)
        bench = runner.bench_time_func(name, timed, name, setup, sizes, optimizer, dtype, options)
        if bench is not None and not args.worker:
            records.append(dict(suite=suite, case=case, optimizer=optimizer, dtype=dtype,
                                peer=peer, n=sum(sizes), tensors=len(sizes),
                                traffic=peers.traffic(optimizer), seconds=bench.median(),
                                stdev=bench.stdev() if len(bench.get_values()) > 1 else 0.0))
            if suite == "low-precision":
                records[-1].update(mixed_storage(optimizer, dtype, options))
            elif suite == "memory":
                records[-1].update(measured_storage(setup, sizes, optimizer, dtype, options))
    if args.worker or not records:
        return
    paths = report.write(records, args.out, machine=report.machine_description())
    print(open(paths["markdown"]).read())
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
