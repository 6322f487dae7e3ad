"""The global grad norm on the GPU: deterministic, kept on the device, read back on demand.

One pass over the grads writes one float64 partial sum of squares per thread block into a
buffer the optimizer keeps (each block sums its grid-stride elements in a fixed order, then a
tree over shared memory); a second one-block kernel adds the partials in a fixed order, takes
the square root and writes the norm and the clip scale, torch's
``min(1, max_norm / (norm + 1e-6))``, into device memory, where the update kernels read the
scale.  No atomics, so the same grads in the same layout give the same norm bit for bit (a
resumed run clips exactly as the original), and a clipped step makes no host round trip:
``Optimizer.step`` returns a ``DeviceNorm``, which copies the norm back (one host sync) only
when read (``float(norm)``, a comparison, formatting).

Accumulation is float64 for every grad dtype, as on the CPU, so the two backends clip alike:
only these reduction kernels contain float64 instructions, the update kernels of float32 (and
bfloat16 / float16) params stay free of them.  A sum of squares moves 2 flops per 4 bytes read,
far under even a consumer GPU's float64 rate, so the reduction stays memory-bound.
"""
import math
import operator
import weakref

import numpy as np
from numba import cuda

from . import _codecs, _cuda_launch, _cuda_table

# The tree over shared memory needs blocks of a power of two threads, at most this many.
NORM_THREADS = 256
# norms kept on the device at once: a DeviceNorm still unread when its slot comes round again
# is read back first (only if it is still referenced)
SLOTS = 16


@cuda.jit(device=True, inline="always")
def _block_total(sums, total, partials, offset):
    """Add the threads' ``total`` over the block in a fixed order; thread 0 writes it to
    ``partials[offset + blockIdx.x]``."""
    t = cuda.threadIdx.x
    sums[t] = total
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            sums[t] += sums[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        partials[offset + cuda.blockIdx.x] = sums[0]


def _span_sums_kernel(load):
    @cuda.jit
    def kernel(x, partials, offset):
        sums = cuda.shared.array(NORM_THREADS, np.float64)
        total = 0.0  # float64 whatever the grads' dtype: these are the float64 kernels
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            value = np.float64(load(x[i]))
            total += value * value
        _block_total(sums, total, partials, offset)
    return kernel


def _table_sums_kernel(load):
    tensor, lookup = _cuda_table.tensor, _cuda_table.lookup

    @cuda.jit
    def kernel(grad_table, starts, like, partials, offset):
        sums = cuda.shared.array(NORM_THREADS, np.float64)
        total = 0.0
        n = starts[starts.size - 1]
        t = 0
        lo = hi = starts[0]
        # the same elements per thread, in the same order, as the span kernel: a bucket's
        # norm does not depend on whether its grads lie in one span
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            if i >= hi:
                t = lookup(starts, i)
                lo, hi = starts[t], starts[t + 1]
            value = np.float64(load(tensor(grad_table, t, like, hi - lo)[i - lo]))
            total += value * value
        _block_total(sums, total, partials, offset)
    return kernel


@cuda.jit
def _combine(partials, count, max_norm, results, slot, scale32, scale64):
    """The norm of a step into ``results[slot]`` and its clip scale into the scales (1 when
    ``max_norm`` < 0: no clipping); one block."""
    sums = cuda.shared.array(NORM_THREADS, np.float64)
    total = 0.0
    for k in range(cuda.threadIdx.x, count, cuda.blockDim.x):
        total += partials[k]
    _block_total(sums, total, partials, count)  # one block: the total at partials[count]
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        norm = math.sqrt(partials[count])
        results[slot] = norm
        scale = 1.0
        if max_norm >= 0:
            scale = max_norm / (norm + 1e-6)
            if not scale != scale:  # NaN stays NaN, as torch's clip_grad_norm_ gives it
                scale = min(scale, 1.0)
        scale32[0] = np.float32(scale)
        scale64[0] = scale


_SPAN_SUMS = {codec: _span_sums_kernel(load) for codec, (load, _) in _codecs.CODECS.items()}
_TABLE_SUMS = {codec: _table_sums_kernel(load) for codec, (load, _) in _codecs.CODECS.items()}


def norm_config(size):
    """(blocks, threads) of a sum-of-squares pass over ``size`` elements (threads: a power of
    two, for the tree)."""
    from . import _cuda
    threads = min(_cuda.THREADS_PER_BLOCK, NORM_THREADS)
    assert threads & (threads - 1) == 0, "the norm's tree needs a power of two threads"
    return max(1, min((size + threads - 1) // threads, _cuda.MAX_BLOCKS)), threads


def sum_squares(flat_array, codec="native"):
    """The sum of squares of one 1-D device array (as ``bits`` gives it), float64, read back:
    a host sync (the error path and the functional API)."""
    partials = cuda.device_array(norm_config(flat_array.size)[0] + 1, np.float64)
    count = _span_sums(flat_array, codec, partials, 0) if flat_array.size else 0
    results = cuda.device_array(1, np.float64)
    scales = cuda.device_array(1, np.float32), cuda.device_array(1, np.float64)
    _cuda_launch.launcher(_combine, 1, norm_config(max(count, 1))[1])(
        partials, count, -1.0, results, 0, *scales)
    return float(_cuda_launch.read_back(partials[count:count + 1])[0])  # the sum, not its root


def _span_sums(x, codec, partials, offset):
    blocks, threads = norm_config(x.size)
    _cuda_launch.launcher(_SPAN_SUMS[codec], blocks, threads)(x, partials, offset)
    return blocks


class GradNorm:
    """One optimizer's device buffers for the global grad norm of its buckets."""

    def __init__(self, buckets, context):
        self.buckets, self.context = buckets, context
        capacity = 0
        for bucket in buckets:  # room for the bucket as one pass or as one pass per grad
            capacity += max(norm_config(bucket.size)[0],
                            sum(norm_config(p.size)[0] for p in bucket.flat_params))
        self.partials = cuda.device_array(capacity + 1, np.float64)  # + the total
        self.results = cuda.device_array(SLOTS, np.float64)
        self.readers = [None] * SLOTS  # weak references to each slot's DeviceNorm
        self.turn = 0

    def compute(self, seen, max_norm):
        """Queue the norm of the grads ``seen`` (``Intake.adopt``'s) and the clip scale for
        ``max_norm`` (None: scale 1); returns the DeviceNorm.  Launches only."""
        count = 0
        for bucket, (grads, presence, grad_span) in zip(self.buckets, seen[1]):
            codec = bucket.storage.param
            if grad_span is not None:
                count += _span_sums(grad_span, codec, self.partials, count) \
                    if grad_span.size else 0
            elif (table := _table_of(bucket, grads, presence)) is not None:
                members, table = table
                if table.size:
                    blocks, threads = norm_config(table.size)
                    _cuda_launch.launcher(_TABLE_SUMS[codec], blocks, threads)(
                        table.grads_table(seen[2], members), table.starts, table.like,
                        self.partials, count)
                    count += blocks
            else:
                for grad in grads:
                    if grad is not None and grad.size:
                        count += _span_sums(grad, codec, self.partials, count)
        slot = self.turn
        self.turn = (slot + 1) % SLOTS
        earlier = self.readers[slot] and self.readers[slot]()
        if earlier is not None:
            float(earlier)  # still unread and referenced: read it before its slot is reused
        context = self.context
        _cuda_launch.launcher(_combine, 1, norm_config(max(count, 1))[1])(
            self.partials, count, -1.0 if max_norm is None else float(max_norm), self.results,
            slot, context.scale(np.float32), context.scale(np.float64))
        context.scaled = max_norm is not None
        norm = DeviceNorm(self.results, slot, context.stream)
        self.readers[slot] = weakref.ref(norm)
        return norm


def _table_of(bucket, grads, presence):
    """(members, table) over the bucket's grads that are not None, or None where there is no
    such table (see Bucket.table_of)."""
    if presence == "all":
        return bucket.table
    return bucket.table_of([j for j, grad in enumerate(grads) if grad is not None])


class DeviceNorm:
    """A step's global grad norm, still on the GPU: behaves as a float (``float(norm)``,
    comparisons, arithmetic, formatting), copying the value back -- one host sync -- the first
    time it is needed."""

    __slots__ = ("_results", "_slot", "_stream", "_value", "__weakref__")

    def __init__(self, results, slot, stream):
        self._results, self._slot, self._stream, self._value = results, slot, stream, None

    def __float__(self):
        if self._value is None:  # (the whole small buffer: a slice costs more than it saves)
            self._value = float(_cuda_launch.read_back(self._results, self._stream)[self._slot])
            self._results = None
        return self._value

    def __repr__(self):
        return repr(float(self))

    def __format__(self, spec):
        return format(float(self), spec)

    def __hash__(self):
        return hash(float(self))

    def __bool__(self):
        return bool(float(self))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(float(self), dtype=dtype)

    def __round__(self, ndigits=None):
        return round(float(self), ndigits)


def _forward(name, reflected=False):
    operation = getattr(operator, name)
    if reflected:
        def method(self, other):
            return operation(other, float(self))
    else:
        def method(self, other):
            return operation(float(self), other)
    return method


for _name in ("eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "truediv", "floordiv",
              "mod", "pow"):
    setattr(DeviceNorm, f"__{_name}__", _forward(_name))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
    setattr(DeviceNorm, f"__r{_name}__", _forward(_name, reflected=True))
for _name in ("neg", "pos", "abs"):
    setattr(DeviceNorm, f"__{_name}__",
            (lambda op: lambda self: op(float(self)))(getattr(operator, _name)))
