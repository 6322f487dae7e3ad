"""numba_opt's CUDA step against the HBM roof, with its kernel launches and host syncs counted.

    python bench/gpu_roof.py [--sizes 1e6 1e7 1e8] [--reps 50] [--out bench/results/gpu]
    make bench-gpu

For each case (Adam float32: one FlatParams span, the same elements as a model's separate
tensors -- one launch over a device table --, those with the first grad None every step, and
with int8 state; each also clipped by the global norm) it counts the
kernel launches and host syncs of one step, then times ``--reps`` steps back to back between
two CUDA events (no sync between steps: what a training loop sees), and the same number of
calls of a roof kernel that reads 4 and writes 3 arrays of the same size (Adam's traffic; the
best any Adam step can do on this device).  ``of roof`` = roof time / step time; GB/s counts
Adam's 7 arrays (28 bytes an element; int8 state: 16, the roof time scaled to match).  The device's theoretical HBM bandwidth (memory clock x bus width) is printed
beside.  Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) it runs tiny sizes once as a smoke
test: the counts mean something there, the times nothing.
"""
import argparse
import json
import os
import sys

import numpy as np
from numba import config, cuda

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numba_opt as nopt  # noqa: E402
from numba_opt import benchmarking as peers  # noqa: E402
from bench.__main__ import MODELS  # noqa: E402

SIMULATED = bool(config.ENABLE_CUDASIM)
ADAM_ARRAYS = 7  # param, grad, exp_avg, exp_avg_sq read; param and both states written


class Counter:
    """Kernel launches and host syncs while active (patches numba's launch and copy paths)."""

    def __init__(self):
        self.launches = self.syncs = 0
        self._undo = []

    def _patch(self, owner, name, field):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if field == "launches" and SIMULATED and (args[0]._device or _in_kernel()):
                return original(*args, **kwargs)
            setattr(self, field, getattr(self, field) + 1)
            return original(*args, **kwargs)
        setattr(owner, name, counted)
        self._undo.append((owner, name, original))

    def __enter__(self):
        if SIMULATED:
            from numba.cuda.simulator import kernel
            from numba.cuda.simulator.cudadrv import devicearray
            self._patch(kernel.FakeCUDAKernel, "__call__", "launches")
            self._patch(devicearray.FakeCUDAArray, "copy_to_host", "syncs")
        else:
            from numba.cuda import dispatcher
            from numba.cuda.cudadrv import devicearray
            self._patch(dispatcher._Kernel, "launch", "launches")
            self._patch(devicearray.DeviceNDArray, "copy_to_host", "syncs")
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def _in_kernel():
    from numba.cuda.simulator import kernel
    return kernel._kernel_context is not None


def hbm_bandwidth():
    """Theoretical bytes/s of the device memory, or None (simulator)."""
    if SIMULATED:
        return None
    device = cuda.get_current_device()
    clock_khz = device.MEMORY_CLOCK_RATE
    bus_bits = device.GLOBAL_MEMORY_BUS_WIDTH
    return 2 * clock_khz * 1e3 * bus_bits / 8


# the layouts: one FlatParams span; separate tensors (one launch over a device table); the
# same with the first grad None every step (the others step over a table of them); separate
# tensors with int8 state (one blockwise launch; tensors of 4096 elements or more quantized)
LAYOUTS = ("FlatParams", "list", "list, grad 0 None", "list, int8 state")
BYTES_PER_ELEMENT = {"list, int8 state": 16}  # else Adam float32's 28: 7 arrays of 4 bytes


def make_case(sizes, layout, clip, rng):
    host = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    if layout == "FlatParams":
        flat = nopt.FlatParams([cuda.to_device(a) for a in host])
        for view, a in zip(flat.grads, host):
            view.copy_to_device(a * 0.01)
        opt, grads = nopt.Adam(flat, lr=1e-3), flat.grads
    else:
        params = [cuda.to_device(a) for a in host]
        int8 = dict(state_dtype="int8") if layout.endswith("int8 state") else {}
        opt, grads = nopt.Adam(params, lr=1e-3, **int8), [cuda.to_device(a * 0.01) for a in host]
        if layout.endswith("None"):
            grads[0] = None
    options = dict(max_grad_norm=1.0) if clip else {}
    return lambda: opt.step(grads, **options)


def time_calls(call, reps):
    """Seconds per call, ``reps`` calls queued back to back between two events."""
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(reps):
        call()
    end.record()
    end.synchronize()
    return cuda.event_elapsed_time(start, end) / 1e3 / reps


def run_case(label, sizes, layout, clip, reps, rng):
    step = make_case(sizes, layout, clip, rng)
    step()  # compile, allocate the state
    step()
    with Counter() as counted:
        step()
    n = sum(sizes[1:]) if layout.endswith("None") else sum(sizes)  # the elements stepped
    record = dict(case=label, layout=layout, clipped=clip, n=n, tensors=len(sizes),
                  launches=counted.launches, host_syncs=counted.syncs)
    if SIMULATED:
        return record
    a, b, c, d = (cuda.to_device(np.ones(n, np.float32)) for _ in range(4))
    blocks = min((n + 255) // 256, 65535)
    roof = peers.cuda_roof_kernel()[blocks, 256]

    def roof_call():
        roof(a, b, c, d)
    roof_call()
    cuda.synchronize()
    seconds, roof_seconds = time_calls(step, reps), time_calls(roof_call, reps)
    # the roof of this layout's traffic: the 28-byte roof kernel's time scaled to its bytes
    moved = BYTES_PER_ELEMENT.get(layout, ADAM_ARRAYS * 4)
    roof_seconds *= moved / (ADAM_ARRAYS * 4)
    record.update(seconds=seconds, roof_seconds=roof_seconds, of_roof=roof_seconds / seconds,
                  gb_per_s=moved * n / seconds / 1e9)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", default=os.path.join("bench", "results", "gpu"))
    args = parser.parse_args()
    if not SIMULATED and not cuda.is_available():
        sys.exit("no CUDA GPU (run under NUMBA_ENABLE_CUDASIM=1 for a smoke test)")
    rng = np.random.default_rng(0)
    cases = [(f"n={n:.0e}", [int(n)], "FlatParams") for n in args.sizes]
    cases += [(f"{m} ({len(MODELS[m])} tensors)", MODELS[m], layout)
              for m in args.models for layout in LAYOUTS]
    if SIMULATED:  # a smoke test: tiny arrays (too small for int8 state), the same code paths
        cases = [("smoke", [37, 5, 64], layout) for layout in LAYOUTS[:3]]
    records = [run_case(label, sizes, layout, clip, args.reps, rng)
               for label, sizes, layout in cases for clip in (False, True)]
    bandwidth = hbm_bandwidth()
    lines = [f"device: {'simulator' if SIMULATED else cuda.get_current_device().name}"
             + ("" if bandwidth is None else f", theoretical HBM {bandwidth / 1e9:.0f} GB/s"),
             "", "| case | layout | clipped | launches | host syncs | step us | of roof | GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        timing = ("| - | - | - |" if "seconds" not in r else
                  f"| {r['seconds'] * 1e6:.1f} | {r['of_roof']:.2f} | {r['gb_per_s']:.0f} |")
        lines.append(f"| {r['case']} | {r['layout']} | {r['clipped']} | {r['launches']} | "
                     f"{r['host_syncs']} {timing}")
    text = "\n".join(lines)
    print(text)
    if not SIMULATED:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(dict(hbm_bytes_per_s=bandwidth, records=records), f, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text + "\n")
    return records


if __name__ == "__main__":
    main()
