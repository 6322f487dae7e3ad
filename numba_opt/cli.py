"""The numba-opt command line: ``python -m numba_opt {demo,plot,bench}`` (or ``numba-opt``).

    demo   train a NumPy MLP on the bundled digits data with each optimizer: table + loss PNG
    plot   optimizer paths on Rosenbrock, Beale and a saddle, and Adam's bias correction (PNGs)
    bench  a quick CPU/GPU comparison of one optimizer step: devices found, table, PNG
           (the rigorous pyperf suite is ``python -m bench`` in a source checkout)
"""
import argparse
import importlib
import os
import sys
import time

import numpy as np

DEFAULT_OUT = "numba_opt_output"


def _positive_int(text):
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") \
            from None
    if value < 1 or value != float(text):
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _optimizer_option(command, use, what, several=True):
    """``--optimizer``: the registry's names, the same for every subcommand; argparse refuses
    any other (exit status 2) with the list of valid ones."""
    from .examples import registry
    default = registry.DEFAULTS[use] if several else registry.DEFAULTS[use][0]
    command.add_argument(
        "--optimizer", nargs="+" if several else None, choices=list(registry.OPTIMIZERS),
        metavar="NAME", default=default,
        help=f"{what} (default: {' '.join(registry.DEFAULTS[use])}; names: "
        f"{', '.join(registry.OPTIMIZERS)}; quote names with spaces)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="numba-opt", description="numba_opt: torch.optim-style optimizers for NumPy and "
        "CUDA arrays. Try the demo, draw the plots, or time a step on this machine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train a NumPy MLP on the digits data with each optimizer",
        description="Train a 64-H-10 NumPy MLP (hand-written backprop, FlatParams) on "
        "scikit-learn's bundled digits data with each optimizer; print the accuracy table and "
        "write loss_curves.png.")
    _optimizer_option(demo, "demo", "optimizers to train")
    demo.add_argument("--epochs", type=_positive_int, default=15, help="default 15")
    demo.add_argument("--hidden", type=_positive_int, default=64, help="hidden units, default 64")
    demo.add_argument("--seed", type=int, default=0, help="weights and batch order, default 0")
    demo.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--distributed", action="store_true",
                      help="train data parallel over MPI with the optimizer state sharded "
                      "(ZeRO-1); launch with mpiexec -n N (needs the mpi extra)")

    plot = commands.add_parser(
        "plot", help="optimizer paths on 2-D test functions; Adam's bias correction",
        description="Draw each optimizer's path over the contours of Rosenbrock, Beale and a "
        "saddle (trajectories.png), and Adam with and without bias correction over its first "
        "steps (bias_correction.png).")
    _optimizer_option(plot, "plot", "optimizers to draw")
    plot.add_argument("--steps", type=_positive_int, default=500, help="default 500")
    plot.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")

    bench = commands.add_parser(
        "bench", help="time one optimizer step on the CPU and GPU found here",
        description="Time one optimizer step per size with numba_opt on the CPU and on a CUDA "
        "GPU when one is found, next to torch.optim (fused where it has it) and NumPy; print "
        "the table and write bench.png. Best of several runs; for rigorous figures use the "
        "pyperf suite (python -m bench in a source checkout).")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="auto: every device found (default); cpu or cuda: that one only")
    bench.add_argument("--size", nargs="+", type=_positive_int, metavar="N",
                       default=[1_000, 100_000, 10_000_000],
                       help="elements in the tensor (default: 1000 100000 10000000)")
    _optimizer_option(bench, "bench", "the optimizer to time", several=False)
    bench.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    bench.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return parser


# what each subcommand imports beyond numba_opt's own dependencies, and the extra that brings it
_NEEDS = {"demo": (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm")),
          "plot": (("matplotlib", "matplotlib"),)}


def _missing(modules):
    """The package names of the modules in ``(module, package)`` pairs that cannot be imported."""
    missing = []
    for module, package in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = _missing(_NEEDS.get(args.command, ()))
    if missing:
        parser.exit(2, f"numba-opt {args.command}: needs {' and '.join(missing)}, which "
                       f"{'is' if len(missing) == 1 else 'are'} not installed: "
                       "pip install 'numba-opt[demo]'\n")
    os.makedirs(args.out, exist_ok=True)
    if args.command == "demo":
        from .examples import mlp
        comm = _mpi_world(parser) if args.distributed else None
        png = os.path.join(args.out, "loss_curves.png")
        mlp.run(args.optimizer, args.epochs, args.hidden, args.seed, png,
                show_progress=not args.no_progress and sys.stderr.isatty(), comm=comm)
        if comm is None or comm.Get_rank() == 0:
            print(f"loss curves: {png}")
    elif args.command == "plot":
        from .examples import trajectories
        paths = os.path.join(args.out, "trajectories.png")
        bias = os.path.join(args.out, "bias_correction.png")
        trajectories.plot_trajectories(args.optimizer, args.steps, paths)
        trajectories.plot_bias_correction(bias)
        print(f"optimizer paths: {paths}\nAdam bias correction: {bias}")
    else:
        return run_bench(parser, args)
    return 0


def _mpi_world(parser):
    """MPI's COMM_WORLD for ``demo --distributed``, or a clean exit saying what to install."""
    try:
        from . import distributed  # the one module that imports MPI; its error says what to add
    except ImportError as exc:
        parser.exit(2, f"numba-opt demo --distributed: {exc}\n")
    return distributed.MPI.COMM_WORLD


# ------------------------------------------------------------------------------------ bench
def _devices():
    """What this machine offers: (CPU description, CUDA GPU name or None, torch available)."""
    import platform
    from . import benchmarking
    cpu = f"{platform.machine()}, {os.cpu_count()} cores"
    gpu = None
    if benchmarking.gpu_available():
        gpu = benchmarking.cuda.get_current_device().name
        gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    return cpu, gpu, has_torch


def _best_time(step, budget=1.0, repeats=7):
    """Best seconds per step over a few timed batches (each at least ~5 ms)."""
    step()
    start = time.perf_counter()
    step()
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(1, min(100_000, int(0.005 / once)))
    repeats = max(2, min(repeats, int(budget / (once * loops))))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            step()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def run_bench(parser, args):
    from . import benchmarking as peers
    cpu, gpu, has_torch = _devices()
    print(f"devices: CPU {cpu}; CUDA GPU: {gpu or 'none found'}; "
          f"torch: {'yes' if has_torch else 'not installed'}")
    if args.device == "cuda" and gpu is None:
        parser.exit(2, "numba-opt bench: error: --device cuda, but no CUDA GPU was found "
                       "(numba.cuda.is_available() is False)\n")
    contenders = []  # (label, setup, options)
    if args.device in ("auto", "cpu"):
        contenders.append(("numba_opt CPU", peers.numba_opt_list, {}))
        if has_torch and peers.torch_class(args.optimizer) is not None:
            mode = "fused" if peers.torch_has_fused(args.optimizer) else "foreach"
            contenders.append((f"torch {mode} CPU", peers.torch_optim, {"mode": mode}))
        if args.optimizer == "Adam":
            contenders.append(("NumPy", peers.numpy_adam, {}))
    if gpu is not None and args.device in ("auto", "cuda"):
        contenders.append(("numba_opt GPU", peers.numba_opt_cuda, {}))
        if has_torch and peers.torch_cuda_available() and peers.torch_has_fused(args.optimizer):
            contenders.append(("torch fused GPU", peers.torch_optim,
                               {"mode": "fused", "device": "cuda"}))
    dtype = np.dtype(args.dtype)
    traffic = peers.traffic(args.optimizer)
    rows = []
    for size in args.size:
        for label, setup, options in contenders:
            step = setup([size], dtype, optimizer=args.optimizer, **options)
            seconds = _best_time(step)
            rows.append((size, label, seconds, traffic * size * dtype.itemsize / seconds / 1e9))
            del step
    print(f"\n{args.optimizer} step, {args.dtype}; GB/s counts the {traffic} arrays the step "
          "must move per element")
    print(f"{'size':>12} {'contender':<18} {'time/step':>12} {'GB/s':>8}")
    for size, label, seconds, gbs in rows:
        shown = f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"
        print(f"{size:>12,} {label:<18} {shown:>12} {gbs:>8.2f}")
    if not has_torch:
        print("(no torch rows: torch is not installed; pip install 'numba-opt[bench]' adds them)")
    elif peers.torch_class(args.optimizer) is None:
        print(f"(no torch rows: torch.optim has no {peers.OPTIMIZERS[args.optimizer][0]})")
    if _missing([("matplotlib", "matplotlib")]):
        print("(no plot: matplotlib is not installed; pip install 'numba-opt[bench]' adds it)")
        return 0
    png = os.path.join(args.out, "bench.png")
    _plot_bench(rows, f"One {args.optimizer} step, {args.dtype} (CPU {cpu}; GPU {gpu or 'none'})",
                png)
    print(f"plot: {png}")
    return 0


def _plot_bench(rows, title, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for label in dict.fromkeys(r[1] for r in rows):
        points = sorted((r[0], r[3]) for r in rows if r[1] == label)
        ax.plot(*zip(*points), "--" if "GPU" in label else "-", marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="elements", ylabel="useful GB/s", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
