"""CUDA kernels of Adafactor: the same passes and ``_math`` rules as ``_factored`` (read its
docstring for the layout), on flat device arrays.

Row and column means: one thread per row (per column: adjacent threads read adjacent columns,
so each row of the matrix is read coalesced), summing in the array's dtype, as torch's float32
reductions do; a float32 kernel holds no float64 (the dims reach it as ints for indexing and as
dtype scalars for the divisions).  The sum of U^2 is reduced per block in shared memory into a
preallocated buffer of per-block partial sums, which the host adds in float64 (a sync, as
torch's ``.item()``); the param's sum of squares is ``_cuda.sum_squares`` (float64).
Launches follow ``_cuda.THREADS_PER_BLOCK`` (a power of two up to ``_MAX_THREADS``) and
``_cuda.MAX_BLOCKS``, which tests lower so tiny arrays span several blocks and strides.
"""
import numpy as np
from numba import cuda, float32, float64

from . import _cuda, _cuda_launch, _math
from ._cuda_norm import _block_total
from ._cuda import sum_squares  # noqa: F401 (part of this module's interface)

_MAX_THREADS = 1024  # the shared array of the block reductions holds one value per thread
_prepared = _math.prepared_grad


@cuda.jit
def _row_moments(grad, row_var, batches, rows, cols, cols_f, h):
    for r in range(cuda.grid(1), batches * rows, cuda.gridsize(1)):
        total = h.one - h.one
        start = r * cols
        for j in range(cols):
            g = _prepared(grad[start + j], h)
            total += g * g
        row_var[r] = _math.torch_lerp(row_var[r], total / cols_f, h.beta2_weight, h.one)


@cuda.jit
def _col_moments(grad, col_var, batches, rows, cols, rows_f, h):
    for c in range(cuda.grid(1), batches * cols, cuda.gridsize(1)):
        b = c // cols
        start = b * rows * cols + (c - b * cols)
        total = h.one - h.one
        for i in range(rows):
            g = _prepared(grad[start + i * cols], h)
            total += g * g
        col_var[c] = _math.torch_lerp(col_var[c], total / rows_f, h.beta2_weight, h.one)


@cuda.jit
def _row_means(row_var, row_mean, batches, rows, rows_f, h):
    for b in range(cuda.grid(1), batches, cuda.gridsize(1)):
        total = h.one - h.one
        for i in range(rows):
            total += row_var[b * rows + i]
        mean = total / rows_f
        row_mean[b] = h.eps1 if mean < h.eps1 else mean


@cuda.jit
def _factored_apply(param, grad, row_var, col_var, row_mean, rows, cols, h):
    for k in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        r = k // cols
        b = r // rows
        u = _math.adafactor_factored_update(_prepared(grad[k], h), row_var[r],
                                            col_var[b * cols + k - r * cols], row_mean[b], h)
        param[k] = _math.adafactor_param(param[k], u, h)


@cuda.jit
def _vector_apply(param, grad, variance, h):
    for k in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        u = _math.adafactor_vector_update(_prepared(grad[k], h), variance[k], h)
        param[k] = _math.adafactor_param(param[k], u, h)


def _reductions(dtype):
    """The two kernels that reduce U^2 per block, with a shared array of ``dtype``."""
    @cuda.jit
    def factored_update_sq(grad, row_var, col_var, row_mean, rows, cols, partials, h):
        shared = cuda.shared.array(_MAX_THREADS, dtype)
        total = h.one - h.one
        for k in range(cuda.grid(1), grad.size, cuda.gridsize(1)):
            r = k // cols
            b = r // rows
            u = _math.adafactor_factored_update(_prepared(grad[k], h), row_var[r],
                                                col_var[b * cols + k - r * cols], row_mean[b], h)
            total += u * u
        _block_total(shared, total, partials, 0)  # the block's sum, in a fixed order

    @cuda.jit
    def vector_update_sq(grad, variance, partials, h):
        shared = cuda.shared.array(_MAX_THREADS, dtype)
        total = h.one - h.one
        for k in range(cuda.grid(1), grad.size, cuda.gridsize(1)):
            g = _prepared(grad[k], h)
            v = _math.adafactor_variance(g, variance[k], h)
            variance[k] = v
            u = _math.adafactor_vector_update(g, v, h)
            total += u * u
        _block_total(shared, total, partials, 0)  # the block's sum, in a fixed order

    return factored_update_sq, vector_update_sq


_REDUCTIONS = {np.dtype(np.float32): _reductions(float32),
               np.dtype(np.float64): _reductions(float64)}


def _buffer(dtype, size):
    """A new device buffer per call (row means, partial sums): a shared one would mix the
    steps of two optimizers stepping from two threads."""
    return cuda.device_array(max(size, 1), dtype=dtype)


def _launch(size):
    threads = _cuda.THREADS_PER_BLOCK
    if threads & (threads - 1) or threads > _MAX_THREADS:
        raise ValueError(f"_cuda.THREADS_PER_BLOCK must be a power of two up to {_MAX_THREADS} "
                         f"for Adafactor's reductions, got {threads}")
    return max(1, min((size + threads - 1) // threads, _cuda.MAX_BLOCKS)), threads


def _on_stream(kernel, size):
    """``kernel`` over ``size`` threads, configured on the step's stream (_cuda_launch)."""
    return _cuda_launch.configure(kernel, *_launch(size))


def _combined(partials, blocks):
    """The host's float64 sum of the per-block partial sums (a sync on the step's stream)."""
    return float(np.sum(_cuda_launch.read_back(partials[:blocks]), dtype=np.float64))


# ------------------------------------------------------------- the interface (as _factored)
# (functional.adafactor_update_param never calls it with an empty param)
def scalars(values, dtype):
    return _cuda.scalars_argument(values, dtype)


def factored_moments(grad, row_var, col_var, dims, h):
    batches, rows, cols = dims
    cast = np.dtype(row_var.dtype).type
    _on_stream(_row_moments, batches * rows)(grad, row_var, batches, rows, cols, cast(cols), h)
    _on_stream(_col_moments, batches * cols)(grad, col_var, batches, rows, cols, cast(rows), h)
    row_mean = _buffer(row_var.dtype, batches)
    _on_stream(_row_means, batches)(row_var, row_mean, batches, rows, cast(rows), h)
    return row_mean


def factored_update_sq(grad, row_var, col_var, row_mean, dims, h):
    _, rows, cols = dims
    blocks, threads = _launch(grad.size)
    partials = _buffer(grad.dtype, blocks)
    _cuda_launch.configure(_REDUCTIONS[np.dtype(grad.dtype)][0], blocks, threads)(grad, row_var, col_var, row_mean, rows,
                                                          cols, partials, h)
    return _combined(partials, blocks)


def factored_apply(param, grad, row_var, col_var, row_mean, dims, h):
    _, rows, cols = dims
    _on_stream(_factored_apply, param.size)(param, grad, row_var, col_var, row_mean, rows, cols, h)


def vector_update_sq(grad, variance, h):
    blocks, threads = _launch(grad.size)
    partials = _buffer(grad.dtype, blocks)
    _cuda_launch.configure(_REDUCTIONS[np.dtype(grad.dtype)][1], blocks, threads)(grad, variance, partials, h)
    return _combined(partials, blocks)


def vector_apply(param, grad, variance, h):
    _on_stream(_vector_apply, param.size)(param, grad, variance, h)
