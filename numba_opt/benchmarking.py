"""Benchmark contenders, each a ``setup(...) -> step()`` function (used by ``python -m bench``
and ``python -m numba_opt bench``): everything is allocated in setup, ``step()`` does one
optimizer step and nothing else.

Traffic (arrays read + written per element) is what the memory roof and the GB/s column count.
"""
import functools

import numpy as np
from numba import config, njit, prange

from . import _codecs, _quant
from .examples import registry

try:  # a module global, so that numba's CUDA simulator can stand in for it in tests
    from numba import cuda
except ImportError:
    cuda = None

import numba_opt as nopt

# name -> (numba_opt / torch class, kwargs): every name of the registry, with its bench settings
OPTIMIZERS = {name: (entry.cls, registry.settings(name, "bench"))
              for name, entry in registry.OPTIMIZERS.items()}


@functools.cache
def traffic(optimizer):
    """Arrays moved per element by one step of ``optimizer`` (a registry name): the param read
    and written, the grad read, each state buffer its bench settings use read and written."""
    cls, kwargs = OPTIMIZERS[optimizer]
    opt = getattr(nopt, cls)([np.zeros(1)], **kwargs)
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    return 3 + 2 * len(opt._layout(hyper)[1])


def torch_class(optimizer):
    """torch.optim's class for ``optimizer`` (a registry name), or None if torch lacks it."""
    import torch
    return getattr(torch.optim, OPTIMIZERS[optimizer][0], None)


def arrays(sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 1e-3).astype(dtype) for n in sizes]


# ---------------------------------------------------------------------------------- roofs
@njit(parallel=True, error_model="numpy", cache=True)
def _roof_4r3w(a, b, c, d):
    for i in prange(a.size):
        s = a[i] + b[i] + c[i] + d[i]
        a[i] = s
        c[i] = s
        d[i] = s


def roof(sizes, dtype, optimizer="Adam"):
    """A prange loop with exactly Adam's memory traffic (4 reads, 3 writes) and one add."""
    a, b, c, d = arrays([sum(sizes)] * 4, dtype)
    return lambda: _roof_4r3w(a, b, c, d)


# -------------------------------------------------------------------------------- numba_opt
def numba_opt_list(sizes, dtype, optimizer="Adam", loops=None, **options):
    """numba_opt on separate arrays (one multi-tensor call per step, or a span call for one
    array); ``loops``: 'serial' or 'parallel' fixes the loop for every size (this worker process
    only), None keeps numba_opt's own choice; ``options``: state_dtype, master_weights."""
    from numba_opt import _cpu
    if loops is not None:
        _cpu.SERIAL_BELOW = 0 if loops == "parallel" else 1 << 62
        _cpu.LOOPS = loops
    cls, kwargs = OPTIMIZERS[optimizer]
    params, grads = arrays(sizes, dtype), arrays(sizes, dtype, seed=1)
    opt = getattr(nopt, cls)(params, **kwargs, **options)

    def step():
        opt.step(grads)
    step.optimizer = opt  # whose state the memory suite measures
    return step


def storage_bytes(optimizer, dtype, state_dtype=None, master_weights=False,
                  stochastic_rounding=False):
    """(state bytes per param, bytes one step reads and writes per param) of numba_opt's
    kernel on params of ``dtype`` with these options (torch's fused kernels move the same for
    the same dtypes), from the dtypes: see ``moved_bytes`` (stochastic rounding moves the same)."""
    states = (traffic(optimizer) - 3) // 2
    storage, state = _codecs.storage(dtype, _codecs.state_dtype_option(state_dtype),
                                     master_weights)
    per_element = state.itemsize
    if storage.state == _codecs.INT8:  # a code, and a float32 scale per block
        per_element += _quant.SCALE.itemsize / _quant.BLOCK
    state_bytes = states * per_element + 4 * storage.master
    return state_bytes, moved_bytes(dtype, state_bytes, storage.master)


def moved_bytes(dtype, state_bytes, master=False):
    """Bytes one step reads and writes per param of ``dtype`` with ``state_bytes`` of state (a
    master copy included): the param is read and written, the grad read, the state read and
    written; with a master copy the param is only written (the copy is read instead)."""
    param = np.dtype(dtype).itemsize
    return (param if master else 2 * param) + param + 2 * state_bytes


def state_nbytes(optimizer):
    """Bytes of every array in ``optimizer.state`` (numba_opt's list or dict of per-param dicts,
    torch's dict keyed by tensor): NumPy and device arrays, torch tensors, inside dicts, lists
    and tuples (a quantized buffer's codes and per-block scales alike); each array counted once.
    """
    seen = set()

    def nbytes(value):
        if isinstance(value, dict):
            return sum(nbytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(nbytes(v) for v in value)
        size = getattr(value, "nbytes", None)
        if not isinstance(size, (int, np.integer)) or id(value) in seen:
            return 0  # step counters (ints) and the like
        seen.add(id(value))
        return int(size)
    state = optimizer.state
    return nbytes(list(state.values()) if isinstance(state, dict) else list(state))


def measured_state_bytes(setup, sizes, dtype, optimizer="Adam", **options):
    """State bytes per param of the optimizer a benchmark ``setup`` makes (numba_opt's or
    torch's), measured from its state arrays after one step."""
    step = setup(sizes, np.dtype(dtype), optimizer=optimizer, **options)
    step()
    owner = getattr(step, "optimizer", None) or step.__self__  # torch's bound opt.step
    return state_nbytes(owner) / sum(sizes)


def numba_opt_fresh_grads(sizes, dtype, optimizer="Adam", pool=64):
    """numba_opt on separate arrays with NEW grad arrays every step, as a training loop makes
    them: the step cycles through ``pool`` lists of copies (made in setup, so no copy is timed;
    small enough to stay in cache), so no grad is the object of the previous step."""
    cls, kwargs = OPTIMIZERS[optimizer]
    params, grads = arrays(sizes, dtype), arrays(sizes, dtype, seed=1)
    lists = [[g.copy() for g in grads] for _ in range(pool)]
    opt = getattr(nopt, cls)(params, **kwargs)
    turn = [0]

    def step():
        turn[0] = (turn[0] + 1) % pool
        opt.step(lists[turn[0]])
    return step


def numba_opt_flat(sizes, dtype, optimizer="Adam"):
    """numba_opt on a FlatParams model: one kernel call per step."""
    cls, kwargs = OPTIMIZERS[optimizer]
    flat = nopt.FlatParams(arrays(sizes, dtype))
    for view, grad in zip(flat.grads, arrays(sizes, dtype, seed=1)):
        view[...] = grad
    opt = getattr(nopt, cls)(flat, **kwargs)
    return lambda: opt.step(flat.grads)


CLIP_NORM = 0.5  # below the bench grads' global norm (~1e-3 * sqrt(n)) from n = 1e6 on


def numba_opt_clipped(sizes, dtype, optimizer="Adam", how="fused"):
    """Global-norm clipping and a step on a FlatParams model.  'fused': ``step(grads,
    max_grad_norm=...)`` (a read pass for the norm, the scale folded into the update);
    'numpy': the same norm, then ``grad *= scale`` with NumPy (a read and a write pass more),
    then a plain step: what clip-then-step costs with the same kernels."""
    from numba_opt import _cpu
    cls, kwargs = OPTIMIZERS[optimizer]
    flat = nopt.FlatParams(arrays(sizes, dtype))
    flat.grad[...] = np.concatenate(arrays(sizes, dtype, seed=1))
    opt = getattr(nopt, cls)(flat, **kwargs)

    def fused_step():
        opt.step(flat.grads, max_grad_norm=CLIP_NORM)

    def step():
        norm = np.sqrt(_cpu.sum_squares(flat.grad))
        flat.grad *= dtype.type(min(1.0, CLIP_NORM / (norm + 1e-6)))  # torch always multiplies
        opt.step(flat.grads)
    step = fused_step if how == "fused" else step
    step.params = flat.params  # for the tests
    return step


def torch_clipped(sizes, dtype, optimizer="Adam"):
    """torch.nn.utils.clip_grad_norm_ (foreach) then torch.optim's fused step."""
    import torch
    step = torch_optim(sizes, dtype, optimizer, mode="fused")
    tensors = [p for group in step.__self__.param_groups for p in group["params"]]

    def clipped_step():
        torch.nn.utils.clip_grad_norm_(tensors, CLIP_NORM, foreach=True)
        step()
    clipped_step.params = tensors  # for the tests
    return clipped_step


# ------------------------------------------------------------------------------------ NumPy
def numpy_adam(sizes, dtype, optimizer="Adam"):
    """Adam as people write it in NumPy: whole-array expressions, temporaries everywhere."""
    params, grads = arrays(sizes, dtype), arrays(sizes, dtype, seed=1)
    ms, vs = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    lr, b1, b2, eps, t = 1e-3, 0.9, 0.999, 1e-8, [0]

    def step():
        t[0] += 1
        for p, g, m, v in zip(params, grads, ms, vs):
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            p -= lr / (1 - b1 ** t[0]) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t[0]) + eps)
    return step


def numpy_adam_out(sizes, dtype, optimizer="Adam"):
    """Adam in NumPy written carefully: in-place ufuncs with out=, one scratch array."""
    params, grads = arrays(sizes, dtype), arrays(sizes, dtype, seed=1)
    ms, vs = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    scratch = [np.empty_like(p) for p in params]
    lr, b1, b2, eps, t = 1e-3, 0.9, 0.999, 1e-8, [0]

    def step():
        t[0] += 1
        step_size = lr / (1 - b1 ** t[0])
        bc2_sqrt = np.sqrt(1 - b2 ** t[0])
        for p, g, m, v, s in zip(params, grads, ms, vs, scratch):
            m *= b1
            np.multiply(g, 1 - b1, out=s)
            m += s
            v *= b2
            np.multiply(g, g, out=s)
            s *= 1 - b2
            v += s
            np.sqrt(v, out=s)
            s /= bc2_sqrt
            s += eps
            np.divide(m, s, out=s)
            s *= step_size
            p -= s
    return step


# ------------------------------------------------------------------------------------ torch
def torch_optim(sizes, dtype, optimizer="Adam", mode="fused", device="cpu"):
    """torch.optim in one of its implementations: 'loop' (foreach=False), 'foreach', 'fused'."""
    import torch
    cls, kwargs = OPTIMIZERS[optimizer]

    def tensor(values):  # torch knows no ml_dtypes.bfloat16: through float32 (exact)
        if _codecs.codec_of(values.dtype) == "bfloat16":
            return torch.tensor(values.astype(np.float32), device=device).to(torch.bfloat16)
        return torch.tensor(values, device=device)
    tensors = [tensor(a).requires_grad_() for a in arrays(sizes, dtype)]
    for t, g in zip(tensors, arrays(sizes, dtype, seed=1)):
        t.grad = tensor(g)
    flags = {"loop": dict(foreach=False), "foreach": dict(foreach=True),
             "fused": dict(fused=True)}[mode]
    opt = getattr(torch.optim, cls)(tensors, **kwargs, **flags)
    if device == "cpu":
        return opt.step

    def step():
        opt.step()
        torch.cuda.synchronize()
    step.optimizer = opt
    return step


def torch_has_fused(optimizer):
    import torch
    cls = torch_class(optimizer)
    if cls is None:
        return False
    try:
        cls([torch.zeros(1, requires_grad=True)], fused=True)
        return True
    except (TypeError, RuntimeError, ValueError):
        return False


# -------------------------------------------------------------------------------------- GPU
def numba_opt_cuda(sizes, dtype, optimizer="Adam"):
    cls, kwargs = OPTIMIZERS[optimizer]
    flat = nopt.FlatParams([cuda.to_device(a) for a in arrays(sizes, dtype)])
    for view, grad in zip(flat.grads, arrays(sizes, dtype, seed=1)):
        view.copy_to_device(grad)
    opt = getattr(nopt, cls)(flat, **kwargs)

    def step():
        opt.step(flat.grads)
        cuda.synchronize()
    step.flat = flat  # what it updates, for checks
    return step


@functools.cache
def cuda_roof_kernel():
    """The GPU roof: Adam's memory traffic (4 reads, 3 writes) with one add per element."""
    @cuda.jit
    def roof_kernel(a, b, c, d):
        for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
            s = a[i] + b[i] + c[i] + d[i]
            a[i] = s
            c[i] = s
            d[i] = s
    return roof_kernel


def cuda_roof(sizes, dtype, optimizer="Adam"):
    roof_kernel = cuda_roof_kernel()
    a, b, c, d = (cuda.to_device(x) for x in arrays([sum(sizes)] * 4, dtype))
    blocks = min((a.size + 255) // 256, 65535)

    def step():
        roof_kernel[blocks, 256](a, b, c, d)
        cuda.synchronize()
    step.arrays = (a, b, c, d)  # what it updates, for checks
    return step


def gpu_available():
    """A real GPU (timing numba's CUDA simulator would mean nothing)."""
    return cuda is not None and not config.ENABLE_CUDASIM and cuda.is_available()


def torch_cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False
