"""CPU loops of Adafactor, whose update is not elementwise (row, column and whole-param sums).

A factored param (2 dims or more) is seen as ``batches`` matrices of ``rows`` x ``cols`` (the
last two dims; C order), flat: element (b, i, j) at ``(b*rows + i)*cols + j``, its row factor
at ``b*rows + i`` and its column factor at ``b*cols + j``.  One step of a param is a few passes
(``functional.adafactor_update_param`` drives them and does the host arithmetic):
the param's sum of squares (``_cpu.sum_squares``), the row and column means of g^2 lerped into
the factors, each matrix's mean row factor, the sum of U^2 (the update's RMS sets the clipping),
then the write.  An unfactored param has two: the variance update with the sum of U^2, then the
write.  The arithmetic per element is ``_math``'s (adafactor_* rules); the sums here are
float64, whatever the dtype, and rounded once to it.

Each loop is compiled parallel and serial; arrays under ``_cpu.SERIAL_BELOW`` elements run the
serial twin, larger ones the parallel loop through ``_cpu._run_parallel`` (its lock and
fork rule).
"""
import numpy as np
from numba import njit, prange

from . import _cpu, _math
from ._cpu import sum_squares  # noqa: F401 (part of this module's interface)

# Columns summed per task of the column pass: each task walks its matrix row by row over a
# contiguous run of this many columns (cache lines, not a stride of ``cols`` per element).
COLUMN_CHUNK = 64

_unpack = _math.unpack_adafactor
_prepared = _math.prepared_grad


def _row_moments(grad, row_var, row_mean_sq, batches, rows, cols, scalars):
    """R <- lerp(R, mean over each row of g^2, t^beta2_decay)."""
    h = _unpack(scalars)
    for r in prange(batches * rows):
        total = 0.0
        start = r * cols
        for j in range(cols):
            g = np.float64(_prepared(grad[start + j], h))
            total += g * g
        row_mean_sq[r] = total / cols  # rounded once to the dtype, as torch's mean
        row_var[r] = _math.torch_lerp(row_var[r], row_mean_sq[r], h.beta2_weight, h.one)


def _col_moments(grad, col_var, col_mean_sq, sums, batches, rows, cols, scalars):
    """C <- lerp(C, mean over each column of g^2, t^beta2_decay); ``sums`` is float64 scratch
    of batches*cols, each task owning its columns' part."""
    h = _unpack(scalars)
    chunks = (cols + COLUMN_CHUNK - 1) // COLUMN_CHUNK
    for task in prange(batches * chunks):
        b = task // chunks
        first = b * cols + (task % chunks) * COLUMN_CHUNK
        width = min(COLUMN_CHUNK, b * cols + cols - first)
        for j in range(width):
            sums[first + j] = 0.0
        for i in range(rows):
            start = (b * rows + i) * cols + first - b * cols
            for j in range(width):
                g = np.float64(_prepared(grad[start + j], h))
                sums[first + j] += g * g
        for j in range(width):
            c = first + j
            col_mean_sq[c] = sums[c] / rows
            col_var[c] = _math.torch_lerp(col_var[c], col_mean_sq[c], h.beta2_weight, h.one)


def _row_means(row_var, row_mean, batches, rows, scalars):
    """Each matrix's mean row factor, clamped below at eps1 (the estimate's denominator)."""
    h = _unpack(scalars)
    for b in prange(batches):
        total = 0.0
        for i in range(rows):
            total += np.float64(row_var[b * rows + i])
        row_mean[b] = total / rows
        mean = row_mean[b]
        row_mean[b] = h.eps1 if mean < h.eps1 else mean


def _factored_update_sq(grad, row_var, col_var, row_mean, batches, rows, cols, scalars):
    """The sum of U^2 over a factored param (float64)."""
    h = _unpack(scalars)
    total = 0.0
    for r in prange(batches * rows):
        b = r // rows
        start, col_start = r * cols, b * cols
        part = 0.0
        for j in range(cols):
            u = np.float64(_math.adafactor_factored_update(
                _prepared(grad[start + j], h), row_var[r], col_var[col_start + j],
                row_mean[b], h))
            part += u * u
        total += part
    return total


def _factored_apply(param, grad, row_var, col_var, row_mean, batches, rows, cols, scalars):
    h = _unpack(scalars)
    for r in prange(batches * rows):
        b = r // rows
        start, col_start = r * cols, b * cols
        for j in range(cols):
            u = _math.adafactor_factored_update(_prepared(grad[start + j], h), row_var[r],
                                                col_var[col_start + j], row_mean[b], h)
            param[start + j] = _math.adafactor_param(param[start + j], u, h)


def _vector_update_sq(grad, variance, scalars):
    """V <- lerp(V, g^2, t^beta2_decay), and the sum of U^2 (float64)."""
    h = _unpack(scalars)
    total = 0.0
    for k in prange(grad.size):
        g = _prepared(grad[k], h)
        v = _math.adafactor_variance(g, variance[k], h)
        variance[k] = v
        u = np.float64(_math.adafactor_vector_update(g, v, h))
        total += u * u
    return total


def _vector_apply(param, grad, variance, scalars):
    h = _unpack(scalars)
    for k in prange(param.size):
        u = _math.adafactor_vector_update(_prepared(grad[k], h), variance[k], h)
        param[k] = _math.adafactor_param(param[k], u, h)


def _twins(function):
    """(parallel, serial) dispatchers of ``function``, each under its own cached name."""
    made = []
    for parallel in (True, False):
        name = f"{function.__name__}_{'parallel' if parallel else 'serial'}_{_cpu._RULES_VERSION}"
        options = dict(parallel=True, nogil=True) if parallel else {}
        made.append(njit(**options, **_cpu._JIT_OPTIONS)(_math.bound(function, name)))
    return tuple(made)


_LOOPS = {f.__name__: _twins(f) for f in (_row_moments, _col_moments, _row_means,
                                          _factored_update_sq, _factored_apply,
                                          _vector_update_sq, _vector_apply)}


def _run(name, size, *args):
    parallel, serial = _LOOPS[name]
    if size >= _cpu.SERIAL_BELOW:
        return _cpu._run_parallel(parallel, serial, args)
    return serial(*args)


# ------------------------------------------------------------- the interface (as _factored_cuda)
def scalars(values, dtype):
    """The scalars argument of the loops: the namedtuple as an array of the dtype."""
    return np.array(values, dtype=dtype)


def factored_moments(grad, row_var, col_var, dims, h):
    """Update the row and column factors from ``grad``; return each matrix's clamped mean row
    factor (what ``factored_update_sq`` and ``factored_apply`` take)."""
    batches, rows, cols = dims
    dtype = row_var.dtype
    _run("_row_moments", grad.size, grad, row_var, np.empty(batches * rows, dtype), *dims, h)
    _run("_col_moments", grad.size, grad, col_var, np.empty(batches * cols, dtype),
         np.empty(batches * cols), *dims, h)
    row_mean = np.empty(batches, dtype)
    _run("_row_means", row_var.size, row_var, row_mean, batches, rows, h)
    return row_mean


def factored_update_sq(grad, row_var, col_var, row_mean, dims, h):
    return _run("_factored_update_sq", grad.size, grad, row_var, col_var, row_mean, *dims, h)


def factored_apply(param, grad, row_var, col_var, row_mean, dims, h):
    _run("_factored_apply", param.size, param, grad, row_var, col_var, row_mean, *dims, h)


def vector_update_sq(grad, variance, h):
    return _run("_vector_update_sq", grad.size, grad, variance, h)


def vector_apply(param, grad, variance, h):
    _run("_vector_apply", param.size, param, grad, variance, h)
