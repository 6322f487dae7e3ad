"""Muon's step on the CPU: the elementwise halves as Numba loops over the ``_math`` rules, and
the Newton-Schulz orthogonalization between them as NumPy matrix products (BLAS).

The orthogonalization is torch.optim.Muon's ``_zeropower_via_newtonschulz``: on the wide
orientation (the transpose when rows > cols),

    X <- G / max(||G||_F, eps)
    k times:  A <- X X^T;  B <- b A + c A A;  X <- a X + B X

``rounding="bfloat16"`` is what torch computes: it casts G to bfloat16 first, so every
operand and result is a bfloat16 value, while each product accumulates in float32 and is rounded
once, after its epilogue (b A + c A A is one ``addmm``).  Here the values are kept in float32
arrays and rounded to bfloat16 after each operation; on small matrices that is torch's result
bit for bit, on larger ones float32 summation order flips a rounding now and then, and the
iteration carries it on (about 1% of an entry).  ``rounding=None`` computes in ``dtype`` (the
param's, or float32) with no rounding: more exact than torch.

The CUDA twin is ``_newton_schulz_cuda`` (a tiled matrix product kernel; numba-cuda has no BLAS).
"""
import importlib
import math

import numpy as np
from numba import njit, prange

from . import _codecs, _cpu, _math

_JIT = dict(error_model="numpy", cache=True)
ROUNDINGS = ("bfloat16", "float32", None)  # Muon's ns_dtype


def backend(device):
    """The module that steps Muon on ``device`` ('cpu' or 'cuda'): this one or its CUDA twin."""
    if device == "cpu":
        return importlib.import_module(__name__)
    return importlib.import_module(__name__ + "_cuda")


def compute_dtype(param_dtype, ns_dtype):
    """The dtype the orthogonalization runs in: float32 for bfloat16 values (and float32),
    else the param's."""
    return np.dtype(np.float32) if ns_dtype is not None else np.dtype(param_dtype)


def _momentum_loop(grad, momentum_buffer, update, h):
    for i in prange(grad.size):
        momentum_buffer[i], update[i] = _math.muon_momentum(grad[i], momentum_buffer[i], h)


def _apply_loop(param, orthogonal, param_scale, adjusted_lr):
    for i in prange(param.size):
        param[i] = _math.muon_apply(param[i], orthogonal[i], param_scale, adjusted_lr)


def _twin(loop, parallel):
    # a name of its own per variant and per version of the rules: numba's on-disk cache keys
    # by name and notices edits to this file only (see _cpu._renamed)
    kind = "parallel" if parallel else "serial"
    named = _cpu._renamed(loop, f"{loop.__name__}_{kind}_{_cpu._RULES_VERSION}")
    return njit(parallel=parallel, nogil=parallel, **_JIT)(named)


# (parallel, serial) twins: serial below _cpu.SERIAL_BELOW elements or with loops 'serial'
# (numba_opt.threads), else parallel under _cpu's lock (serial in a forked GNU OpenMP child).
# Not _cpu's timed choice: next to the matrix products these loops are a small part of a step.
_LOOPS = {loop.__name__: (_twin(loop, True), _twin(loop, False))
          for loop in (_momentum_loop, _apply_loop)}


def _run(name, *args):
    parallel, serial = _LOOPS[name]
    if args[0].size < _cpu.SERIAL_BELOW or _cpu.LOOPS == "serial":
        return serial(*args)
    return _cpu._run_parallel(parallel, serial, args)


def _to_bfloat16(x):
    """``x`` rounded to bfloat16 (to nearest, ties to even, straight from its own dtype as
    torch's ``.bfloat16()``), held in float32."""
    return x.astype(_codecs.BFLOAT16).astype(np.float32)


def orthogonalize(update, coefficients, steps, eps, ns_dtype):
    """The Newton-Schulz orthogonalization of the 2-D ``update`` (see the module docstring), as
    a C-contiguous array of ``update``'s shape in ``compute_dtype``."""
    a, b, c = coefficients
    dtype = compute_dtype(update.dtype, ns_dtype)
    rounded = _to_bfloat16 if ns_dtype == "bfloat16" else (lambda x: x)
    # from the update's own dtype: a float64 update rounds to bfloat16 once, as in torch
    x = rounded(update) if ns_dtype == "bfloat16" else update.astype(dtype, copy=False)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    # the norm summed in float64, then in the working dtype (torch sums bfloat16 in float32)
    norm = rounded(np.array(math.sqrt(float(np.sum(np.square(x, dtype=np.float64)))), dtype))
    x = rounded(x / np.maximum(norm, rounded(np.array(eps, dtype))))
    a, b, c = (dtype.type(v) for v in (a, b, c))
    for _ in range(steps):
        gram = rounded(x @ x.T)
        polynomial = rounded(b * gram + c * (gram @ gram))
        x = rounded(a * x + polynomial @ x)
    return np.ascontiguousarray(x.T if tall else x)


def muon_update(param, grad, momentum_buffer, h, coefficients, steps, eps, ns_dtype,
                param_scale, adjusted_lr):
    """One Muon step of one 2-D param in place: its ``momentum_buffer`` from ``grad`` (both
    shaped and ordered like the param), then the param from the orthogonalized update.  ``h``:
    the ``MuonScalars`` in the param's dtype; ``param_scale``, ``adjusted_lr``: numbers."""
    dtype = param.dtype.type
    update = np.empty_like(param)  # the param's memory order: the loops see all four alike
    _run("_momentum_loop", _flat(grad), _flat(momentum_buffer), _flat(update), h)
    orthogonal = orthogonalize(update, coefficients, steps, eps, ns_dtype)
    order = "F" if param.flags.f_contiguous and not param.flags.c_contiguous else "C"
    _run("_apply_loop", _flat(param), orthogonal.reshape(-1, order=order), dtype(param_scale),
         dtype(adjusted_lr))


def _flat(array):
    """The 1-D view in memory order (a contiguous array's reshape never copies)."""
    return array.reshape(-1, order="A")
