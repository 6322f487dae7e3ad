"""Muon's step on CUDA arrays: ``_newton_schulz``'s CPU step, with kernels for the matrix work.

numba-cuda has no BLAS, so the Newton-Schulz products come from one tiled shared-memory kernel
with an epilogue, out <- round(alpha * A B + beta * C) (B optionally transposed: A A^T), the
Frobenius norm from per-block partial sums combined on the device, and the elementwise halves
from grid-stride kernels over the same ``_math`` rules as the CPU loops.  With
``ns_dtype='bfloat16'`` the values are bfloat16 held in float32, each product summed in float32
and rounded once after its epilogue, as on the CPU (and in torch); the update of a float64
param reaches bfloat16 in one rounding (through float32 rounded to odd).  Nothing goes to the
host: the norm stays on the device.

Imported only for CUDA arrays; under ``NUMBA_ENABLE_CUDASIM=1`` the kernels run in Python.
"""
import math
import threading

import numpy as np
from numba import cuda, float32, float64, njit

from . import _codecs, _cuda, _cuda_launch, _math
from ._cuda_norm import _block_total
from ._newton_schulz import compute_dtype

TILE = 16               # the matrix-product tile (tests lower it: tiny matrices, several tiles)
THREADS_PER_BLOCK = 256  # elementwise and norm kernels (a power of two: the norm's tree)
NORM_BLOCKS = 64         # the norm's partial sums, one per block

_SIMULATED = _cuda._SIMULATED
_NUMBA_TYPES = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}



@njit(inline="always")
def _to_float32_odd(value):
    """``value`` as a float32, rounded to odd: an inexact result gets its last bit set.  Rounded
    on to bfloat16 (16 fewer bits) that gives the bfloat16 nearest ``value`` itself, as NumPy's
    and torch's casts do, where rounding to nearest twice could land on a false tie."""
    narrow = float32(value)
    bits = _codecs.float32_bits(narrow)
    if value != narrow and _codecs._and(bits, _ONE) == _ZERO:
        # one float32 ulp towards value: the bits of a magnitude grow with it
        towards = _codecs._add(bits, _ONE) if abs(value) > abs(narrow) else _codecs._sub(
            bits, _ONE)
        narrow = _codecs.float32_from_bits(towards)
    return narrow


_ONE, _ZERO = np.uint32(1), np.uint32(0)

if _SIMULATED:  # the kernels run as Python: the codecs that take NumPy scalars (see _codecs)
    _bf16_load, _bf16_store = _codecs.PYTHON_CODECS["bfloat16"]

    def _to_bfloat16(value):
        return _bf16_load(_bf16_store(_to_float32_odd(value)))

    def _same(value):
        return value
else:  # CPU dispatchers, which numba-cuda compiles as device functions (as the _math rules)
    @njit(inline="always")
    def _to_bfloat16(value):
        return _codecs.bfloat16_load(_codecs.bfloat16_store(_to_float32_odd(value)))

    @njit(inline="always")
    def _same(value):
        return value

_KERNELS = {}


def _made(key, build):
    """Kernels made once per key (dtype, rounding and sizes are compile-time constants)."""
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = build()
    return kernel


def _momentum_kernel(rounding):
    store = _to_bfloat16 if rounding else _same

    @cuda.jit
    def kernel(grad, momentum_buffer, x, h, rows, cols, tall, fortran):
        # writes the update straight into x, the wide matrix the iteration works on
        for i in range(cuda.grid(1), grad.size, cuda.gridsize(1)):
            momentum_buffer[i], update = _math.muon_momentum(grad[i], momentum_buffer[i], h)
            r, c = (i % rows, i // rows) if fortran else (i // cols, i % cols)
            if tall:
                x[c, r] = store(update)
            else:
                x[r, c] = store(update)
    return kernel


def _apply_kernel():
    @cuda.jit
    def kernel(param, x, param_scale, adjusted_lr, rows, cols, tall, fortran):
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            r, c = (i % rows, i // rows) if fortran else (i // cols, i % cols)
            orthogonal = x[c, r] if tall else x[r, c]
            param[i] = _math.muon_apply(param[i], orthogonal, param_scale, adjusted_lr)
    return kernel


def _norm_kernels(dtype, rounding, threads):
    """(partials, finish): each block's sum of squares of x into partials[block]; then one block
    sums them and leaves max(sqrt(total), eps), rounded, in norm[0]."""
    store = _to_bfloat16 if rounding else _same
    nb_type = _NUMBA_TYPES[dtype]

    @cuda.jit
    def partials_kernel(x, partials):
        shared = cuda.shared.array(threads, nb_type)
        total = nb_type(0)
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            total += x[i] * x[i]
        _block_total(shared, total, partials, 0)  # the block's sum, in a fixed order

    @cuda.jit
    def finish_kernel(partials, eps, norm):
        if cuda.grid(1) == 0:
            total = nb_type(0)
            for k in range(partials.size):
                total += partials[k]
            root = store(math.sqrt(total))
            norm[0] = root if root > eps else eps  # torch's clamp(min=eps)

    return partials_kernel, finish_kernel


def _divide_kernel(rounding):
    store = _to_bfloat16 if rounding else _same

    @cuda.jit
    def kernel(x, norm):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            x[i] = store(x[i] / norm[0])
    return kernel


def _matmul_kernel(dtype, rounding, transpose_b, with_c, tile):
    """out <- round(alpha * A B + beta * C), B^T for B when ``transpose_b``, no C term without
    ``with_c``; a (tile x tile) block of threads per (tile x tile) block of out."""
    store = _to_bfloat16 if rounding else _same
    nb_type = _NUMBA_TYPES[dtype]

    @cuda.jit
    def kernel(a, b, c, out, alpha, beta):
        tile_a = cuda.shared.array((tile, tile), nb_type)
        tile_b = cuda.shared.array((tile, tile), nb_type)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row = cuda.blockIdx.y * tile + ty
        col = cuda.blockIdx.x * tile + tx
        inner = a.shape[1]
        total = nb_type(0)
        for start in range(0, inner, tile):
            k = start + tx
            tile_a[ty, tx] = a[row, k] if row < out.shape[0] and k < inner else nb_type(0)
            k = start + ty
            if transpose_b:
                tile_b[ty, tx] = b[col, k] if col < out.shape[1] and k < inner else nb_type(0)
            else:
                tile_b[ty, tx] = b[k, col] if col < out.shape[1] and k < inner else nb_type(0)
            cuda.syncthreads()
            for kk in range(tile):
                total += tile_a[ty, kk] * tile_b[kk, tx]
            cuda.syncthreads()
        if row < out.shape[0] and col < out.shape[1]:
            value = alpha * total
            if with_c:
                value += beta * c[row, col]
            out[row, col] = store(value)
    return kernel


def _matmul(a, b, c, out, alpha, beta, transpose_b, rounding):
    dtype = np.dtype(out.dtype)
    tile = TILE
    kernel = _made(("matmul", dtype, rounding, transpose_b, c is not None, tile),
                   lambda: _matmul_kernel(dtype, rounding, transpose_b, c is not None, tile))
    grid = ((out.shape[1] + tile - 1) // tile, (out.shape[0] + tile - 1) // tile)
    _cuda_launch.configure(kernel, grid, (tile, tile))(a, b, out if c is None else c, out, alpha, beta)


def _blocks(size):
    return max(1, min(NORM_BLOCKS, (size + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK))


# (wide shape, dtype, thread, stream) -> the device buffers of the iteration, kept for reuse.
# Kernels on one stream from one thread run in order, so they may share buffers; two threads
# or two streams (two optimizers, or a stream switched between steps) must not.
_WORKSPACES = {}


def _workspace(rows, cols, dtype):
    key = (rows, cols, dtype, threading.get_ident(), id(_cuda_launch.current_stream()))
    if key not in _WORKSPACES:
        _WORKSPACES[key] = (cuda.device_array((rows, cols), dtype),
                            cuda.device_array((rows, cols), dtype),
                            cuda.device_array((rows, rows), dtype),
                            cuda.device_array((rows, rows), dtype),
                            cuda.device_array(NORM_BLOCKS, dtype),
                            cuda.device_array(1, dtype))
    return _WORKSPACES[key]


def muon_update(param, grad, momentum_buffer, h, coefficients, steps, eps, ns_dtype,
                param_scale, adjusted_lr):
    """``_newton_schulz.muon_update`` on device arrays (any ``__cuda_array_interface__``)."""
    param, grad = _cuda._as_numba(param), _cuda._as_numba(grad)
    momentum_buffer = _cuda._as_numba(momentum_buffer)
    dtype = compute_dtype(param.dtype, ns_dtype)
    cast = dtype.type
    rounding = ns_dtype == "bfloat16"
    rows, cols = param.shape
    tall = rows > cols
    fortran = bool(param.is_f_contiguous() and not param.is_c_contiguous())
    wide_rows, wide_cols = (cols, rows) if tall else (rows, cols)
    x, spare, gram, polynomial, partials, norm = _workspace(wide_rows, wide_cols, dtype)
    threads, size = THREADS_PER_BLOCK, rows * cols
    blocks = max(1, min(_cuda.MAX_BLOCKS, (size + threads - 1) // threads))

    _cuda_launch.configure(_made(("momentum", rounding), lambda: _momentum_kernel(rounding)),
                           blocks, threads)(
        _cuda.flat(grad), _cuda.flat(momentum_buffer), x, h, rows, cols, tall, fortran)
    flat_x = x.reshape(size)
    partials_kernel, finish_kernel = _made(("norm", dtype, rounding, threads),
                                           lambda: _norm_kernels(dtype, rounding, threads))
    _cuda_launch.configure(partials_kernel, NORM_BLOCKS, threads)(flat_x, partials)
    if rounding:  # torch clamps a bfloat16 norm: at eps as a bfloat16
        eps = np.float32(eps).astype(_codecs.BFLOAT16)
    _cuda_launch.configure(finish_kernel, 1, 1)(partials, cast(eps), norm)
    _cuda_launch.configure(_made(("divide", rounding), lambda: _divide_kernel(rounding)),
                           blocks, threads)(flat_x, norm)
    a, b, c = (cast(v) for v in coefficients)
    one, zero = cast(1.0), cast(0.0)
    for _ in range(steps):
        _matmul(x, x, None, gram, one, zero, True, rounding)                 # A = X X^T
        _matmul(gram, gram, gram, polynomial, c, b, False, rounding)         # b A + c A A
        _matmul(polynomial, x, x, spare, one, a, False, rounding)            # a X + (...) X
        x, spare = spare, x
    param_type = np.dtype(param.dtype).type
    _cuda_launch.configure(_made(("apply",), _apply_kernel), blocks, threads)(
        _cuda.flat(param), x, param_type(param_scale), param_type(adjusted_lr), rows, cols,
        tall, fortran)
