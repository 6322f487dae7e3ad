"""The training-loop suite (pyperf): the optimizer measured the way users run it, between a
forward and backward pass written in NumPy that allocates fresh grad arrays every step.

    python -m bench --suite training-loop [--quick] [--out DIR] [pyperf options: -p N -n N ...]

Models (float32, Adam lr=1e-3):
- "mlp 784-1024-1024-10": a real MLP (ReLU, softmax cross-entropy, batch 256, random inputs and
  labels from a fixed seed), 1.86M params in 6 tensors;
- "transformer 216 tensors": 18 GPT-2-style blocks of 12 tensors at d_model=128 (3.57M params)
  whose "forward/backward" is a per-layer least-squares loss with a transformer's BLAS work:
  for each linear layer Y = X @ W + b against a fixed target, grad W = X.T @ delta, grad b =
  delta.sum(0), for each layer norm an elementwise X * w + b (tokens=256, X fixed random).
Contenders: numba_opt over a list, over a dict, over FlatParams (the model writes its grads into
flat.grads with out=), torch.optim.Adam(fused=True) over zero-copy torch.from_numpy views of the
NumPy params (grads assigned as torch.from_numpy views each step) and a textbook NumPy Adam.
Metrics, each a pyperf benchmark timing only its part of the loop:
- step in loop:      opt.step(grads) (for torch also the grad assignment) between fwd+bwd passes;
- fwd+bwd:           the user's forward+backward in the same loop under that optimizer;
- step back-to-back: steps with the same grads and nothing in between;
- step cold cache:   the same, with a 64 MiB buffer written between steps (not timed): what the
                     step costs when its arrays come from memory, as they do after a fwd+bwd;
                     'loop / cold' near 1 means the loop's extra cost over back-to-back is the
                     cache the model evicted, not threads fighting.
Loads: idle, then busy (one CPU-bound background process, started and killed by the main process
around the busy benchmarks).  Writes results.json, results.md and throughput.png under --out
(bench/results/training-loop).
"""
import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyperf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import report  # noqa: E402

SUITE = "training-loop"
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
METRICS = ("step in loop", "step back-to-back", "step cold cache", "fwd+bwd")
LOADS = ("idle", "busy")
#: thread settings the workers inherit (pyperf passes workers only a few variables otherwise)
THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OMP_PROC_BIND",
              "OMP_PLACES", "KMP_BLOCKTIME", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
              "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------------- models
def _matmul(a, b, out, name):
    """a @ b, fresh or written into out[name] (the same BLAS call either way)."""
    return a @ b if out is None else np.matmul(a, b, out=out[name])


def _sum0(a, out, name):
    return a.sum(axis=0) if out is None else np.sum(a, axis=0, out=out[name])


class MLP:
    """Dense ReLU layers, softmax cross-entropy (mean over the batch) on random data."""

    def __init__(self, layers=(784, 1024, 1024, 10), batch=256, dtype=np.float32, seed=0):
        self.layers, self.dtype, self.seed = tuple(layers), np.dtype(dtype), seed
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((batch, layers[0])).astype(self.dtype)
        self.onehot = np.zeros((batch, layers[-1]), self.dtype)
        self.onehot[np.arange(batch), rng.integers(0, layers[-1], batch)] = 1
        self.shapes = {}
        for k, (din, dout) in enumerate(zip(layers[:-1], layers[1:])):
            self.shapes[f"fc{k}.weight"] = (din, dout)
            self.shapes[f"fc{k}.bias"] = (dout,)
        self.names = list(self.shapes)

    def init_params(self):
        """The same fresh initial params on every call (He init, small biases)."""
        rng = np.random.default_rng(self.seed + 1)
        return {name: (rng.standard_normal(shape) * (math.sqrt(2 / shape[0]) if len(shape) == 2
                                                     else 0.01)).astype(self.dtype)
                for name, shape in self.shapes.items()}

    def _forward(self, params):
        hidden, h = [], self.x
        for k in range(len(self.layers) - 1):
            hidden.append(h)
            z = h @ params[f"fc{k}.weight"]
            z += params[f"fc{k}.bias"]
            h = np.maximum(z, 0, out=z) if k < len(self.layers) - 2 else z
        return hidden, h

    def loss(self, params):
        _, logits = self._forward(params)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -float((log_p * self.onehot).sum()) / len(self.x)

    def forward_backward(self, params, out=None):
        """The grads of the loss: fresh arrays, or written into the arrays of the dict out."""
        hidden, z = self._forward(params)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z -= self.onehot
        z *= 1.0 / len(self.x)
        delta, grads = z, {}
        for k in reversed(range(len(self.layers) - 1)):
            grads[f"fc{k}.weight"] = _matmul(hidden[k].T, delta, out, f"fc{k}.weight")
            grads[f"fc{k}.bias"] = _sum0(delta, out, f"fc{k}.bias")
            if k:
                delta = delta @ params[f"fc{k}.weight"].T
                delta *= hidden[k] > 0
        return {name: grads[name] for name in self.names}


class Transformer:
    """GPT-2-shaped params; the loss is a sum of per-layer least squares with the same BLAS work
    per step as the layers' forward and weight-grad matmuls (tokens x din @ din x dout)."""

    def __init__(self, blocks=18, d_model=128, tokens=256, dtype=np.float32, seed=0):
        self.dtype, self.seed, d = np.dtype(dtype), seed, d_model
        rng = np.random.default_rng(seed)
        self.scale = 1.0 / tokens
        self.shapes, self.layers = {}, []

        def data(width):
            return rng.standard_normal((tokens, width)).astype(self.dtype)
        for i in range(blocks):
            for kind, name, din, dout in (
                    ("norm", "ln_1", d, d), ("linear", "attn.c_attn", d, 3 * d),
                    ("linear", "attn.c_proj", d, d), ("norm", "ln_2", d, d),
                    ("linear", "mlp.c_fc", d, 4 * d), ("linear", "mlp.c_proj", 4 * d, d)):
                weight, bias = f"h.{i}.{name}.weight", f"h.{i}.{name}.bias"
                self.shapes[weight] = (din, dout) if kind == "linear" else (d,)
                self.shapes[bias] = (dout,)
                self.layers.append((kind, weight, bias, data(din), data(dout)))
        self.names = list(self.shapes)

    def init_params(self):
        rng = np.random.default_rng(self.seed + 1)
        params = {}
        for name, shape in self.shapes.items():
            if len(shape) == 2:
                params[name] = rng.standard_normal(shape) * 0.02
            elif name.endswith("weight"):  # a layer norm's gain
                params[name] = 1 + rng.standard_normal(shape) * 0.02
            else:
                params[name] = rng.standard_normal(shape) * 0.02
            params[name] = params[name].astype(self.dtype)
        return params

    def _residuals(self, params):
        for kind, weight, bias, x, target in self.layers:
            y = x @ params[weight] if kind == "linear" else x * params[weight]
            y += params[bias]
            y -= target
            yield kind, weight, bias, x, y

    def loss(self, params):
        return sum(0.5 * self.scale * float((y * y).sum()) for *_, y in self._residuals(params))

    def forward_backward(self, params, out=None):
        grads = {}
        for kind, weight, bias, x, delta in self._residuals(params):
            delta *= self.scale
            grads[bias] = _sum0(delta, out, bias)
            if kind == "linear":
                grads[weight] = _matmul(x.T, delta, out, weight)
            else:
                delta *= x
                grads[weight] = _sum0(delta, out, weight)
        return {name: grads[name] for name in self.names}


MODELS = {  # name -> model factory (keyword arguments: dtype, sizes for the tests)
    "mlp 784-1024-1024-10": MLP,
    "transformer 216 tensors": Transformer,
}


# ---------------------------------------------------------------------------------- contenders
class Contender:
    """A model trained by one optimizer: ``compute()`` is the user's fwd+bwd and returns what
    ``step`` takes; ``params`` maps names to the live param arrays."""

    def __init__(self, params, compute, step):
        self.params, self.compute, self.step = params, compute, step

    def iteration(self):
        self.step(self.compute())


def numba_opt_list(model):
    import numba_opt as nopt
    params = model.init_params()
    opt = nopt.Adam(list(params.values()), lr=LR, betas=BETAS, eps=EPS)
    return Contender(params, lambda: list(model.forward_backward(params).values()), opt.step)


def numba_opt_dict(model):
    import numba_opt as nopt
    params = model.init_params()
    opt = nopt.Adam(params, lr=LR, betas=BETAS, eps=EPS)
    return Contender(params, lambda: model.forward_backward(params), opt.step)


def numba_opt_flat(model):
    import numba_opt as nopt
    flat = nopt.FlatParams(model.init_params())
    opt = nopt.Adam(flat, lr=LR, betas=BETAS, eps=EPS)

    def compute():
        model.forward_backward(flat.params, out=flat.grads)
        return flat.grads
    return Contender(flat.params, compute, opt.step)


def torch_fused(model):
    import torch
    params = model.init_params()
    tensors = [torch.from_numpy(p).requires_grad_() for p in params.values()]
    opt = torch.optim.Adam(tensors, lr=LR, betas=BETAS, eps=EPS, fused=True)

    def step(grads):
        with torch.no_grad():
            for tensor, grad in zip(tensors, grads.values()):
                tensor.grad = torch.from_numpy(grad)
            opt.step()
    return Contender(params, lambda: model.forward_backward(params), step)


def numpy_adam(model):
    """Adam as people write it in NumPy: whole-array expressions, temporaries everywhere (the
    bias corrections are Python floats, so float32 arrays stay float32)."""
    params = model.init_params()
    ms = {n: np.zeros_like(p) for n, p in params.items()}
    vs = {n: np.zeros_like(p) for n, p in params.items()}
    (b1, b2), t = BETAS, [0]

    def step(grads):
        t[0] += 1
        step_size, bc2_sqrt = LR / (1 - b1 ** t[0]), math.sqrt(1 - b2 ** t[0])
        for name, p in params.items():
            g, m, v = grads[name], ms[name], vs[name]
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            p -= step_size * m / (np.sqrt(v) / bc2_sqrt + EPS)
    return Contender(params, lambda: model.forward_backward(params), step)


def numba_opt_list_serial(model):
    """numba_opt over a list with the serial loops only: what a parallel step is held to."""
    import numba_opt as nopt
    nopt.threads.set_loops("serial")  # this worker process only
    return numba_opt_list(model)


def numba_opt_flat_state(state_dtype):
    """numba_opt over FlatParams with float32 params and low-precision state (issue 14): the
    same loop with 4 (bfloat16) or ~2 (int8) bytes of state per param instead of 8."""
    def contender(model):
        import numba_opt as nopt
        flat = nopt.FlatParams(model.init_params())
        opt = nopt.Adam(flat, lr=LR, betas=BETAS, eps=EPS, state_dtype=state_dtype)

        def compute():
            model.forward_backward(flat.params, out=flat.grads)
            return flat.grads
        return Contender(flat.params, compute, opt.step)
    return contender


CONTENDERS = {
    "numba_opt list": numba_opt_list,
    "numba_opt list, serial loops": numba_opt_list_serial,
    "numba_opt dict": numba_opt_dict,
    "numba_opt FlatParams": numba_opt_flat,
    "torch fused": torch_fused,
    "numpy": numpy_adam,
    "numba_opt FlatParams, bfloat16 state": numba_opt_flat_state("bfloat16"),
    "numba_opt FlatParams, int8 state": numba_opt_flat_state("int8"),
}
#: not in the pyperf suite by default (it is long enough): compare them with bench/loop_pair.py
LOW_PRECISION = ("numba_opt FlatParams, bfloat16 state", "numba_opt FlatParams, int8 state")


def timed_iteration(contender):
    """(fwd+bwd seconds, step seconds) of one iteration of ``contender``'s training loop."""
    start = time.perf_counter()
    grads = contender.compute()
    middle = time.perf_counter()
    contender.step(grads)
    return middle - start, time.perf_counter() - middle


# ------------------------------------------------------------------------------------- metrics
def step_in_loop(contender, loops, grads):
    total = 0.0
    for _ in range(loops):
        grads = contender.compute()
        start = time.perf_counter()
        contender.step(grads)
        total += time.perf_counter() - start
    return total


def fwd_bwd_in_loop(contender, loops, grads):
    total = 0.0
    for _ in range(loops):
        start = time.perf_counter()
        grads = contender.compute()
        total += time.perf_counter() - start
        contender.step(grads)
    return total


def step_back_to_back(contender, loops, grads):
    start = time.perf_counter()
    for _ in range(loops):
        contender.step(grads)
    return time.perf_counter() - start


_FLUSH = []  # the cache-evicting buffer, made once per worker process


def step_cold_cache(contender, loops, grads):
    if not _FLUSH:
        _FLUSH.append(np.empty(16 << 20, np.float32))  # 64 MiB: twice the L3 here
    total = 0.0
    for _ in range(loops):
        _FLUSH[0].fill(1.0)
        start = time.perf_counter()
        contender.step(grads)
        total += time.perf_counter() - start
    return total


MEASURE = {"step in loop": step_in_loop, "fwd+bwd": fwd_bwd_in_loop,
           "step back-to-back": step_back_to_back, "step cold cache": step_cold_cache}

_BUILT = {}  # benchmark name -> (contender, grads), built once per worker process
# Training iterations before anything is timed: a real loop runs thousands, and its first few
# steps compile or load kernels, allocate state and (numba_opt) try both loops of each call site.
BURN_IN = 12


def timed(loops, name, model, contender, metric):
    built = _BUILT.get(name)
    if built is None:
        trained = CONTENDERS[contender](MODELS[model]())
        for _ in range(BURN_IN):
            grads = trained.compute()
            trained.step(grads)
        built = _BUILT[name] = (trained, grads)
    return MEASURE[metric](built[0], loops, built[1])


def cases(contenders=None, loads=LOADS):
    """(model, load, contender, metric) for every benchmark: all idle ones, then all busy."""
    if contenders is None:
        contenders = [c for c in CONTENDERS if c not in LOW_PRECISION
                      and (c != "torch fused" or _torch_installed())]
    return [(model, load, contender, metric) for load in loads for model in MODELS
            for contender in contenders for metric in METRICS]


def _torch_installed():
    import importlib.util
    return importlib.util.find_spec("torch") is not None  # without importing it (seconds)


# Rough costs on the 2-core dev machine, seconds: fwd+bwd per (model, load), a step per
# (model, load, contender).  Used only to pick how many iterations one pyperf value times (no
# calibration process).  Under load the threads of OpenBLAS and of torch wait for the core the
# spinner holds: the transformer's fwd+bwd and torch's step over it take about a second there.
_FWD_BWD = {("mlp", "idle"): 0.035, ("mlp", "busy"): 0.1,
            ("transformer", "idle"): 0.07, ("transformer", "busy"): 1.0}
_STEP = {("mlp", "idle", "numba_opt"): 0.005, ("mlp", "idle", "torch"): 0.005,
         ("mlp", "idle", "numpy"): 0.015, ("mlp", "busy", "numba_opt"): 0.01,
         ("mlp", "busy", "torch"): 0.04, ("mlp", "busy", "numpy"): 0.05,
         ("transformer", "idle", "numba_opt"): 0.008, ("transformer", "idle", "torch"): 0.008,
         ("transformer", "idle", "numpy"): 0.02, ("transformer", "busy", "numba_opt"): 0.1,
         ("transformer", "busy", "torch"): 1.0, ("transformer", "busy", "numpy"): 0.06}


def loops_for(model, load, contender, metric, quick):
    model = model.split()[0]
    step = _STEP[model, load, contender.split()[0]]
    per_loop = step if metric == "step back-to-back" else step + 0.008 \
        if metric == "step cold cache" else step + _FWD_BWD[model, load]
    target = 0.1 if quick else 0.2
    return int(min(1000, max(1, round(target / per_loop))))


# ------------------------------------------------------------------------------ background load
# Spins one core; exits by itself when its parent (the pyperf main process) is gone, so even a
# killed run leaves no spinner behind.
SPINNER = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
           "    for _ in range(100000):\n        pass\n")


class BusyLoad:
    """One CPU-bound background process while the context is open (killed on any exit)."""

    def __init__(self):
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", SPINNER],
                                        stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def cpu_seconds(self):
        return 0.0 if self.process is None else _process_cpu_seconds(self.process.pid)


def _process_cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class OtherLoad:
    """How many cores other processes kept busy while a benchmark ran (the machine is shared):
    the machine's busy and stolen time (/proc/stat) less this process's, its finished children's
    (the pyperf workers) and the background load's.  None where /proc/stat is missing."""

    def __init__(self, load):
        self.load, self.begin = load, None

    def _sample(self):
        with open("/proc/stat") as f:
            user, nice, system, _, _, irq, softirq, steal = (int(x) for x in
                                                              f.readline().split()[1:9])
        times = os.times()
        ours = (times.user + times.system + times.children_user + times.children_system
                + self.load.cpu_seconds())
        machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        return time.perf_counter(), machine, ours

    def start(self):
        try:
            self.begin = self._sample()
        except (OSError, ValueError):
            self.begin = None

    def stop(self):
        if self.begin is None:
            return None
        (t0, machine0, ours0), (t1, machine1, ours1) = self.begin, self._sample()
        return max(0.0, (machine1 - machine0) - (ours1 - ours0)) / max(t1 - t0, 1e-9)


# ------------------------------------------------------------------------------------- report
def thread_environment(env=None):
    """The thread settings a worker process sees: variables, threadpoolctl's libraries after
    a parallel numba_opt step (and torch's thread count), from a probe with the workers' env."""
    env = dict(os.environ if env is None else env)
    variables = {name: env[name] for name in THREAD_ENV if name in env}
    probe = (
        "import json, numpy as np, threadpoolctl, numba, numba_opt as nopt\n"
        "p = np.zeros(1 << 20, np.float32); nopt.Adam([p]).step([np.ones_like(p)])\n"
        "out = dict(numba_threads=numba.config.NUMBA_NUM_THREADS, "
        "numba_layer=numba.threading_layer())\n"
        "out['pools'] = [dict((k, i.get(k)) for k in ('internal_api', 'num_threads', "
        "'threading_layer', 'version', 'prefix', 'filepath')) "
        "for i in threadpoolctl.threadpool_info()]\n"
        "try:\n"
        "    import torch; out['torch_threads'] = torch.get_num_threads()\n"
        "except ImportError:\n"
        "    pass\n"
        "print(json.dumps(out))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, timeout=120)
        probed = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as exc:
        probed = {"error": f"probe failed: {exc!r}"}
    return dict(variables=variables, **probed)


def describe_threads(info):
    variables = ", ".join(f"{k}={v}" for k, v in info.get("variables", {}).items())
    lines = [f"Thread environment of the workers: {variables or 'no thread variables set'}"
             f" (passed on: {', '.join(THREAD_ENV)})."]
    if "error" in info:
        return lines + [info["error"]]
    pools = "; ".join(f"{p['internal_api']} {p['version'] or ''} "
                      f"({os.path.basename(p.get('filepath') or p['prefix'])}): "
                      f"{p['num_threads']} threads"
                      + (f", {p['threading_layer']}" if p['threading_layer'] else "")
                      for p in info.get("pools", []))
    lines.append(f"numba: {info.get('numba_threads')} threads, threading layer "
                 f"{info.get('numba_layer')}; torch (its workers only): "
                 f"{info.get('torch_threads', 'absent')} threads; threadpoolctl in a numba_opt "
                 f"worker after a parallel step: {pools}.")
    return lines


def _median(records, key="seconds", **where):
    match = [r for r in records if all(r[k] == v for k, v in where.items())]
    return match[0].get(key) if match else None


def rows(records):
    """Per (model, load): each contender's three times and the ratios."""
    out = []
    for model in dict.fromkeys(r["model"] for r in records):
        for load in dict.fromkeys(r["load"] for r in records if r["model"] == model):
            group = [r for r in records if r["model"] == model and r["load"] == load]
            torch_step = _median(group, contender="torch fused", metric="step in loop")
            numpy_fb = _median(group, contender="numpy", metric="fwd+bwd")
            for contender in dict.fromkeys(r["contender"] for r in group):
                t = {m: _median(group, contender=contender, metric=m) for m in METRICS}
                sd = {m: _median(group, "stdev", contender=contender, metric=m)
                      for m in METRICS}
                others = [_median(group, "other_load", contender=contender, metric=m)
                          for m in METRICS]
                others = [o for o in others if o is not None]
                loop, b2b, fb = t["step in loop"], t["step back-to-back"], t["fwd+bwd"]
                cold = t["step cold cache"]
                out.append(dict(
                    model=model, load=load, contender=contender, step_in_loop=loop,
                    back_to_back=b2b, cold_cache=cold, fwd_bwd=fb,
                    stdev_step_in_loop=sd["step in loop"],
                    stdev_cold_cache=sd["step cold cache"],
                    stdev_back_to_back=sd["step back-to-back"], stdev_fwd_bwd=sd["fwd+bwd"],
                    iteration=None if None in (loop, fb) else loop + fb,
                    vs_torch=None if None in (loop, torch_step) else torch_step / loop,
                    loop_over_b2b=None if None in (loop, b2b) else loop / b2b,
                    loop_over_cold=None if None in (loop, cold) else loop / cold,
                    fb_over_numpy=None if None in (fb, numpy_fb) else fb / numpy_fb,
                    other_load=max(others) if others else None))
    return out


def _t(seconds, stdev=None):
    if seconds is None:
        return ""
    text = (f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3g} ms"
            if seconds < 1 else f"{seconds:.3g} s")
    return text if not stdev else f"{text} ±{100 * stdev / seconds:.0f}%"


def _x(ratio):
    return "" if ratio is None else f"{ratio:.2f}x"


def markdown(records, machine="", threads=(), command=""):
    lines = [f"Machine: {machine}", ""] if machine else []
    lines += [line + "  " for line in threads]
    if command:
        lines += [f"Command: `{command}"]
    lines += ["", "Times are pyperf medians per step or per fwd+bwd (± the standard deviation "
              "of the values). 'vs torch fused': torch "
              "fused's step-in-loop time / this one (above 1 = faster). 'loop / b2b': step in "
              "the loop over the same step back-to-back; 'loop / cold': over the step with a cold "
              "cache (a 64 MiB buffer written between steps). 'fwd+bwd / numpy': this contender's "
              "fwd+bwd over the numpy contender's (the user's own code slowed down or not). "
              "'iteration' = fwd+bwd + step in loop. 'other load': the most cores that other "
              "processes on the machine kept busy during this row's three benchmarks (the busy "
              "load's spinner not counted): rows above ~0.2 were measured on a machine not as "
              "idle or busy as labelled."]
    current = None
    for row in rows(records):
        if (row["model"], row["load"]) != current:
            current = row["model"], row["load"]
            lines += ["", f"### {row['model']}, {row['load']}", "",
                      "| contender | step in loop | step back-to-back | step cold cache | "
                      "fwd+bwd | iteration | vs torch fused | loop / b2b | loop / cold | "
                      "fwd+bwd / numpy | other load |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines.append(f"| {row['contender']} | {_t(row['step_in_loop'], row['stdev_step_in_loop'])}"
                     f" | {_t(row['back_to_back'], row['stdev_back_to_back'])} | "
                     f"{_t(row['cold_cache'], row['stdev_cold_cache'])} | "
                     f"{_t(row['fwd_bwd'], row['stdev_fwd_bwd'])} | "
                     f"{_t(row['iteration'])} | {_x(row['vs_torch'])} | "
                     f"{_x(row['loop_over_b2b'])} | {_x(row['loop_over_cold'])} | "
                     f"{_x(row['fb_over_numpy'])} | "
                     f"{'' if row['other_load'] is None else format(row['other_load'], '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    """One panel per (model, load): per contender a bar of fwd+bwd with the step in loop on top,
    and a black tick at the step back-to-back."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    table = rows(records)
    panels = list(dict.fromkeys((r["model"], r["load"]) for r in table)) or [("", "")]
    models = list(dict.fromkeys(p[0] for p in panels))
    loads = list(dict.fromkeys(p[1] for p in panels))
    fig, axes = plt.subplots(len(models), len(loads), figsize=(6.5 * len(loads),
                                                                4.5 * len(models)),
                             squeeze=False)
    for i, model in enumerate(models):
        for j, load in enumerate(loads):
            ax = axes[i][j]
            group = [r for r in table if r["model"] == model and r["load"] == load]
            x = np.arange(len(group))

            def ms(key):
                return np.array([np.nan if r[key] is None else r[key] * 1e3 for r in group])
            fb, loop, b2b = ms("fwd_bwd"), ms("step_in_loop"), ms("back_to_back")
            ax.bar(x, fb, 0.6, label="fwd+bwd", color="#9db4d0")
            ax.bar(x, loop, 0.6, bottom=fb, label="step in loop", color="#d9822b")
            ax.scatter(x, fb + b2b, marker="_", s=600, color="black", zorder=3,
                       label="fwd+bwd + step back-to-back")
            ax.set_xticks(x)
            ax.set_xticklabels([r["contender"].replace("numba_opt ", "numba_opt\n")
                                for r in group], fontsize=8)
            ax.set(ylabel="ms per training iteration", title=f"{model}, {load}")
            ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=3)
    fig.suptitle("Adam float32 in a NumPy training loop", x=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(records, directory, machine="", threads=(), command=""):
    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, "results.json"),
             "markdown": os.path.join(directory, "results.md"),
             "plot": os.path.join(directory, "throughput.png")}
    with open(paths["json"], "w") as f:
        json.dump({"machine": machine, "threads": list(threads), "command": command,
                   "records": records, "rows": rows(records)}, f, indent=1)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(records, machine, threads, command))
    plot(records, paths["plot"])
    return paths


# --------------------------------------------------------------------------------------- main
def forward_options(command, args):
    """pyperf starts workers with its own options only: pass ours on, so they list the same
    benchmarks in the same order."""
    command.extend(["--suite", SUITE, "--out", args.out, "--load", args.load]
                   + ["--quick"] * args.quick)


def _load_average():
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # run the finally clauses: the busy load is killed


def main():
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    quick = pre.parse_known_args()[0].quick
    # (the setup already ran BURN_IN iterations: kernels compiled, state and buffers allocated)
    runner = pyperf.Runner(processes=1 if quick else 2, values=2 if quick else 3,
                           warmups=0 if quick else 1, min_time=0.05,
                           add_cmdline_args=forward_options)
    runner.argparser.add_argument("--suite", choices=[SUITE], default=SUITE)
    runner.argparser.add_argument("--quick", action="store_true",
                                  help="one worker process, 2 values, no warmup, shorter values")
    runner.argparser.add_argument("--out", default=os.path.join("bench", "results", SUITE))
    runner.argparser.add_argument("--load", choices=["idle", "busy", "both"], default="both",
                                  help="run the idle or the busy half only")
    args = runner.parse_args()
    if not args.worker:
        args.inherit_environ = list(args.inherit_environ or []) + list(THREAD_ENV)
        signal.signal(signal.SIGTERM, _terminate)
    todo = cases(loads=LOADS if args.load == "both" else (args.load,))
    records, load, started = [], BusyLoad(), time.perf_counter()
    other = OtherLoad(load)
    load_averages = {"start": _load_average()}
    try:
        for number, (model, phase, contender, metric) in enumerate(todo):
            name = f"{SUITE} | {model} | {phase} | {contender} | {metric}"
            if not args.worker:
                if phase == "busy" and load.process is None:
                    load_averages["end of idle"] = _load_average()
                    load.__enter__()
                print(f"[{number + 1}/{len(todo)}] {name}", file=sys.stderr, flush=True)
                runner.args.loops = loops_for(model, phase, contender, metric, args.quick)
                other.start()
            bench = runner.bench_time_func(name, timed, name, model, contender, metric)
            if bench is not None and not args.worker:
                values = bench.get_values()
                records.append(dict(suite=SUITE, model=model, load=phase, contender=contender,
                                    metric=metric, seconds=bench.median(),
                                    stdev=bench.stdev() if len(values) > 1 else 0.0,
                                    values=len(values), loops=runner.args.loops,
                                    other_load=other.stop()))
    finally:
        load.stop()
    if args.worker or not records:
        return
    elapsed = time.perf_counter() - started
    load_averages["end"] = _load_average()
    try:  # the environment pyperf gives its workers
        from pyperf._utils import create_environ
        env = create_environ(args.inherit_environ, args.locale, args.copy_env)
    except (ImportError, TypeError):
        env = os.environ
    threads = describe_threads(thread_environment(env))
    command = (f"python -m bench --suite {SUITE}{' --quick' * args.quick} --load {args.load} "
               f"-p {args.processes} "
               f"-n {args.values} -w {args.warmups}` (took {elapsed / 60:.1f} min; 1-minute "
               "load average at " + ", ".join(f"{k} {v}" for k, v in load_averages.items()) +
               ": this run's own worker counts about 1, the busy load 1 more)")
    paths = write(records, args.out, machine=report.machine_description(), threads=threads,
                  command=command)
    print(open(paths["markdown"]).read())
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
