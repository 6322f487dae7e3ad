"""CPU backend: prange loops that apply the ``_math`` rules element by element.

The loops do no arithmetic of their own: each kernel unpacks its scalars and loops over
``_math.<name>_at``.  Every kernel is compiled twice, a ``parallel=True`` version and a serial
twin, because opening a prange region costs a few microseconds, more than a small tensor's whole
update, and because beside a busy process the serial loop can be the faster one.  Arrays under
``SERIAL_BELOW`` elements always run serially; at larger call sites a ``_Timed`` chooser runs
whichever loop has been faster there lately (see ``numba_opt.threads``).

Two loop shapes per rule: over one span (a param, or a whole FlatParams bucket) and over a
*table* of arrays (the multi-tensor loop: a bucket of separate arrays in one call, as torch's
multi_tensor_apply does).  All arrays reaching a kernel are contiguous and of one dtype; the
callers validate that.  The helpers at the end (flat views, spans, state buffers) are the
backend interface ``optim.base`` uses; ``_cuda`` has the same names.
"""
import hashlib
import inspect
import os
import threading
import time
import warnings

import numpy as np
import numba
from numba import carray, njit, prange, types as nbtypes
from numba.extending import intrinsic

from . import _codecs, _math, _quant, threads
from ._codecs import NATIVE, bits  # noqa: F401 (bits: part of the backend interface)

SERIAL_BELOW = 1 << 14
# 'timed', 'parallel' or 'serial': which loop runs at call sites of SERIAL_BELOW elements or more
LOOPS = threads._loops_from_environment()
# The multi-tensor loops split a bucket's elements into chunks of this many (whatever the array
# boundaries) and share the chunks among the threads: equal work per thread, any tensor sizes.
TABLE_CHUNK = 1 << 13
# The grad-address helper takes grads in tuples of this many (padded): one compiled signature
# per dtype, whatever the number of params.
_ADDRESS_BATCH = 16

# error_model="numpy": the default 'python' model adds division checks that block vectorization.
_JIT_OPTIONS = dict(error_model="numpy", cache=True)
# The only fastmath in the project, for the grad-norm reduction: reassoc lets LLVM split the sum
# over several vector accumulators.  Without it every add waits for the previous one and the norm
# ran at a fifth of memory speed (4.8 ms against 0.98 ms on 1e7 float32); the order of a float64
# sum does not matter for a clipping norm.  The update rules stay exact (no fastmath).
_REDUCTION_FASTMATH = {"reassoc"}

# Numba's on-disk cache notices edits to this file only, not to the _math rules and _codecs it
# inlines, so their source hash goes into every kernel's name: an edited rule or codec never
# loads a stale kernel.
_RULES_VERSION = hashlib.sha256((inspect.getsource(_math) + inspect.getsource(_codecs)
                                + inspect.getsource(_quant))
                                .encode()).hexdigest()[:10]


# One loop template per number of buffers (the states, then the master copy if any); ``unpack``
# and ``apply_at`` are bound per kernel by _compile.  The buffers are separate arguments:
# numba's parallel regions lose writes made through a tuple of arrays (numba issues #7135,
# #10338).

def _loop0(param, grad, scalars):
    h = unpack(scalars)  # noqa: F821
    for i in prange(param.size):
        apply_at(i, param, grad, h)  # noqa: F821


def _loop1(param, grad, s0, scalars):
    h = unpack(scalars)  # noqa: F821
    for i in prange(param.size):
        apply_at(i, param, grad, s0, h)  # noqa: F821


def _loop2(param, grad, s0, s1, scalars):
    h = unpack(scalars)  # noqa: F821
    for i in prange(param.size):
        apply_at(i, param, grad, s0, s1, h)  # noqa: F821


def _loop3(param, grad, s0, s1, s2, scalars):
    h = unpack(scalars)  # noqa: F821
    for i in prange(param.size):
        apply_at(i, param, grad, s0, s1, s2, h)  # noqa: F821


def _loop4(param, grad, s0, s1, s2, s3, scalars):
    h = unpack(scalars)  # noqa: F821
    for i in prange(param.size):
        apply_at(i, param, grad, s0, s1, s2, s3, h)  # noqa: F821


_LOOPS = (_loop0, _loop1, _loop2, _loop3, _loop4)


@intrinsic
def _pointer(typingctx, address, like, index):
    """A pointer to element ``index`` of an array of the dtype of the array ``like`` that
    starts at the int ``address``."""
    pointer_type = nbtypes.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        start = builder.inttoptr(args[0], context.get_value_type(pointer_type))
        return builder.gep(start, [args[2]])
    return pointer_type(address, like, index), codegen


# The multi-tensor loop: a bucket's params and grads are separate arrays, given by their data
# addresses (``addresses[members[t]]`` for the bucket's t-th array); its state buffers are flat,
# array t at ``starts[t]:starts[t + 1]``.  Chunk c covers the bucket's elements
# [c * TABLE_CHUNK, (c + 1) * TABLE_CHUNK), which lie in arrays first[c] .. first[c + 1]; each
# piece is looped over from index 0 through pointers to its first element (a loop from another
# start keeps numba's negative-index checks and does not vectorize; pointers also spare the
# reference counting of slices).  The callers keep every addressed array alive.
#
# One loop serves every rule: it always takes four buffers and calls ``apply_with4``, which
# passes the applier as many as it has (``_with0`` .. ``_with4``, bound per kernel: the states,
# then the master copy if any); the rest are empty stand-ins, whose pointers are made but never
# read.  Params and grads are arrays of ``param_like(scalars)``'s dtype: the scalars' for
# float32 / float64, uint16 bits for bfloat16 / float16 (bound per kernel).

@njit(inline="always")
def _piece(c, t, starts):
    """The part of array t in chunk c: its first element in the bucket, its length (<= 0: none)
    and its first element in array t."""
    lo = c * TABLE_CHUNK
    begin = max(lo, starts[t])
    n = min(lo + TABLE_CHUNK, starts[t + 1]) - begin
    return begin, n, begin - starts[t]


def _table_loop(param_addresses, grad_addresses, members, starts, first, s0, s1, s2, s3,
                scalars):
    h = unpack(scalars)  # noqa: F821
    like = param_like(scalars)  # noqa: F821
    for c in prange(first.size - 1):
        for t in range(first[c], first[c + 1] + 1):
            begin, n, skip = _piece(c, t, starts)
            if n <= 0:
                continue
            param = carray(_pointer(param_addresses[members[t]], like, skip), n)
            grad = carray(_pointer(grad_addresses[members[t]], like, skip), n)
            a = carray(_pointer(s0.ctypes.data, s0, begin), n)
            b = carray(_pointer(s1.ctypes.data, s1, begin), n)
            d = carray(_pointer(s2.ctypes.data, s2, begin), n)
            e = carray(_pointer(s3.ctypes.data, s3, begin), n)
            for i in range(n):
                apply_with4(i, param, grad, a, b, d, e, h)  # noqa: F821


_WITH = _math.WITH_FOUR  # an applier of 0-4 buffers, called with four


def _same_like(scalars):
    return scalars


_BITS_LIKE = np.empty(0, _codecs.BITS)


def _bits_like(scalars):
    return _BITS_LIKE  # a global array: numba freezes it as a constant, only its type matters


_PARAM_LIKE = {codec: njit(inline="always")(_same_like if codec == "native" else _bits_like)
               for codec in _codecs.CODECS}


def _renamed(function, name, **names):
    """A copy of ``function`` under its own (qualified) name, ``names`` bound in its globals:
    numba keys its on-disk cache by qualified name, so two dispatchers of one function would
    overwrite each other's machine code."""
    return _math.bound(function, name, **names)


def _compile(name, storage, parallel, table=False):
    """The loop for ``name`` on ``storage`` (a ``_codecs.Storage``) with its applier and
    unpacker bound, under a name of its own."""
    n_states, family = _math.KERNELS[name]
    n_buffers = n_states + storage.master
    scope = {"apply_at": _math.applier(name, storage),
             "unpack": getattr(_math, "unpack_" + family),
             "param_like": _PARAM_LIKE[storage.param]}
    kind = ("table_" if table else "") + ("parallel" if parallel else "serial")
    tag = "" if storage == NATIVE else "_" + _codecs.tag(storage)
    if table:
        scope["apply_with4"] = njit(inline="always", error_model="numpy")(
            _renamed(_WITH[n_buffers], f"{name}{tag}_with4_{_RULES_VERSION}", **scope))
    loop = _renamed(_table_loop if table else _LOOPS[n_buffers],
                    f"{name}{tag}_{kind}_{_RULES_VERSION}", **scope)
    return njit(parallel=parallel, nogil=parallel, **_JIT_OPTIONS)(loop)


# Parallel loops release the GIL (a step over a big model takes milliseconds: other Python threads,
# a data loader say, run meanwhile) and run one at a time per process: numba's 'workqueue'
# threading layer, the one used where neither TBB nor OpenMP loads, aborts the process when two
# threads start parallel regions at once, and each region uses every core anyway.  Serial loops
# (small arrays, microseconds) keep the GIL, which is cheaper than releasing it.
_PARALLEL_LOCK = threading.Lock()

# GNU OpenMP cannot run in a process forked after it started: numba terminates such a child at
# its first parallel region ("fork() called from a process already using GNU OpenMP").  A child
# forked after a parallel step therefore runs the serial loops (its siblings share the cores).
_serial_only = False
_warned = False  # about it, once per process


def _after_fork_in_child():
    global _serial_only
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never ran a parallel region: the child may start its own
        return
    if layer == "omp":
        from numba.np.ufunc import omppool
        if omppool.openmp_vendor == "GNU":
            _serial_only = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _run_parallel(parallel, serial, args):
    """``parallel(*args)`` under the lock; ``serial(*args)`` in a forked GNU OpenMP child."""
    global _warned
    if _serial_only:
        if not _warned:
            _warned = True
            warnings.warn("numba_opt: this process was forked after GNU OpenMP ran parallel "
                          "kernels, which cannot run in a forked child, so it uses the serial "
                          "loops. Start child processes with the 'spawn' or 'forkserver' "
                          "method to run parallel kernels in them.", RuntimeWarning)
        return serial(*args)
    with _PARALLEL_LOCK:
        return parallel(*args)


# How often a _Timed call site tries the loop it is not using: after 8 calls, then after twice as
# many each time that loop loses again (at most 256), back to 8 when it wins.  Trying the slower
# loop costs at most 1/8 of the difference at first and under 0.5% of it once settled.
_RETRY_FIRST, _RETRY_MOST = 8, 256


class _Timed:
    """One call site of a kernel (a bucket's span or table, or one param): runs the parallel loop
    or its serial twin, whichever has taken less time per call lately here (an average that
    weighs the last calls most), and now and then the other one, to notice when that changes:
    a busy process appearing or leaving, the user's BLAS threads, cache effects.  The first
    call of each loop is not counted (it may compile or load the kernel)."""

    __slots__ = ("parallel", "serial", "seconds", "calls", "countdown", "interval")

    def __init__(self, parallel, serial):
        self.parallel, self.serial = parallel, serial
        self.seconds = [0.0, 0.0]  # recent seconds per call: [serial, parallel]
        self.calls = [0, 0]
        self.countdown = self.interval = _RETRY_FIRST

    def __call__(self, *args):
        if LOOPS != "timed" or _serial_only:
            return _run_parallel(self.parallel, self.serial, args) if LOOPS != "serial" \
                else self.serial(*args)
        calls, seconds = self.calls, self.seconds
        retrying = False
        if calls[0] < 2:  # warm up: parallel, serial, parallel, serial (both compile first)
            use = 1 if calls[1] == calls[0] else 0
        else:
            use = 1 if seconds[1] <= seconds[0] else 0
            self.countdown -= 1
            if self.countdown <= 0:
                use, retrying = 1 - use, True
        if use:
            with _PARALLEL_LOCK:
                start = time.perf_counter()
                self.parallel(*args)
                elapsed = time.perf_counter() - start
        else:
            start = time.perf_counter()
            self.serial(*args)
            elapsed = time.perf_counter() - start
        calls[use] += 1
        if calls[use] == 2:
            seconds[use] = elapsed
        elif calls[use] > 2:
            seconds[use] += (elapsed - seconds[use]) * (0.5 if retrying else 0.25)
        if retrying:
            won = seconds[use] < seconds[1 - use]
            self.interval = _RETRY_FIRST if won else min(2 * self.interval, _RETRY_MOST)
            self.countdown = self.interval

    def choice(self):
        """'parallel' or 'serial': the loop this call site would run next (for tests, bench)."""
        return "parallel" if self.seconds[1] <= self.seconds[0] else "serial"


class Kernel:
    """A prange loop and its serial twin, over one span and over a table of arrays, for one
    kernel variant on one ``_codecs.Storage``.  Called as ``kernel(param, grad, states,
    scalars)``: ``states`` a tuple of 1-D arrays (the master copy last, with master weights),
    ``scalars`` a 1-D array of the compute dtype in the field order of
    ``_math.SCALARS[family]``.  The bound calls take the arrays as ``bits`` views."""

    def __init__(self, name, storage=NATIVE):
        self.__name__, self.storage = name, storage
        self.parallel = _compile(name, storage, parallel=True)
        self.serial = _compile(name, storage, parallel=False)
        self.table_parallel = _compile(name, storage, parallel=True, table=True)
        self.table_serial = _compile(name, storage, parallel=False, table=True)

    def __call__(self, param, grad, states, scalars):
        self.bind(param.size)(bits(param), bits(grad), *map(bits, states), scalars)

    def bind(self, size):
        """A call site for spans of this many elements: ``call(param, grad, *states, scalars)``."""
        return _Timed(self.parallel, self.serial) if size >= SERIAL_BELOW else self.serial

    def bind_table(self, size):
        """A call site for a table of arrays of this many elements in all: ``call(
        param_addresses, grad_addresses, members, starts, first, *states, scalars)``."""
        return (_Timed(self.table_parallel, self.table_serial) if size >= SERIAL_BELOW
                else self.table_serial)

    def dispatchers(self):
        return (self.parallel, self.serial, self.table_parallel, self.table_serial)


KERNELS = tuple(Kernel(name) for name in _math.KERNELS)  # on float32 and float64 arrays
globals().update({kernel.__name__: kernel for kernel in KERNELS})
_KERNELS = {(kernel.__name__, NATIVE): kernel for kernel in KERNELS}
_KERNELS_LOCK = threading.Lock()


def kernel(name, storage):
    """The Kernel of variant ``name`` on ``storage``; those on low-precision storage are made
    on first use (dispatchers compile lazily, but making 4 of them costs a few ms)."""
    try:
        return _KERNELS[name, storage]
    except KeyError:
        with _KERNELS_LOCK:
            if (name, storage) not in _KERNELS:
                blockwise = storage.state == _codecs.INT8
                _KERNELS[name, storage] = (BlockwiseKernel if blockwise else Kernel)(
                    name, storage)
        return _KERNELS[name, storage]


# ----------------------------------------------------------- blockwise 8-bit state (_quant)
# A param with int8 state steps in chunks of QUANT_CHUNK elements (whole absmax blocks), shared
# among the threads.  Per chunk: decode each state into a float32 scratch array (in cache), run
# the applier over the chunk as the span loop does (``_math.arranged``: it sees the scratch),
# then encode each block with its new absmax.  ``decode<k>`` and ``encode<k>`` are bound per
# kernel to the signed or unsigned rules of state k, or to ``_no_state`` past the kernel's
# states.
QUANT_CHUNK = 32 * _quant.BLOCK


def _block_loop(param, grad, c0, a0, c1, a1, c2, a2, master, scalars):
    h = unpack(scalars)  # noqa: F821
    n = param.size
    for c in prange((n + QUANT_CHUNK - 1) // QUANT_CHUNK):
        lo = c * QUANT_CHUNK
        m = min(QUANT_CHUNK, n - lo)
        p = carray(_pointer(param.ctypes.data, param, lo), m)
        g = carray(_pointer(grad.ctypes.data, grad, lo), m)
        mst = carray(_pointer(master.ctypes.data, master, lo), m)
        # float32 scratch, one per state (those past the kernel's states stay unused)
        s0, s1, s2 = (np.empty(m, scalars.dtype), np.empty(m, scalars.dtype),
                      np.empty(m, scalars.dtype))
        decode0(c0, a0, lo, m, s0)  # noqa: F821
        decode1(c1, a1, lo, m, s1)  # noqa: F821
        decode2(c2, a2, lo, m, s2)  # noqa: F821
        for i in range(m):
            apply_arranged(i, p, g, s0, s1, s2, mst, h)  # noqa: F821
        encode0(s0, c0, a0, lo, m)  # noqa: F821
        encode1(s1, c1, a1, lo, m)  # noqa: F821
        encode2(s2, c2, a2, lo, m)  # noqa: F821


def _decode(codes, absmax, lo, m, out):
    for b in range((m + _quant.BLOCK - 1) // _quant.BLOCK):  # block by block: one scale each
        start = b * _quant.BLOCK
        k = min(_quant.BLOCK, m - start)
        block = carray(_pointer(codes.ctypes.data, codes, lo + start), k)
        values = carray(_pointer(out.ctypes.data, out, start), k)
        scale = absmax[(lo + start) // _quant.BLOCK]
        for i in range(k):
            values[i] = dequantize(block[i], scale)  # noqa: F821


def _encode(values, codes, absmax, lo, m):
    for b in range((m + _quant.BLOCK - 1) // _quant.BLOCK):
        start = b * _quant.BLOCK
        k = min(_quant.BLOCK, m - start)
        block = carray(_pointer(values.ctypes.data, values, start), k)
        out = carray(_pointer(codes.ctypes.data, codes, lo + start), k)
        biggest = _quant.NO_MAGNITUDE  # as bits: an integer max vectorizes, a float max not
        for i in range(k):
            biggest = max(biggest, _quant.magnitude_bits(block[i]))
        scale = _quant.from_bits(biggest)
        absmax[(lo + start) // _quant.BLOCK] = scale
        for i in range(k):
            out[i] = quantize(block[i], scale)  # noqa: F821


def _no_state(a, b, lo, m, out):
    pass


def _compile_blockwise(name, storage, parallel):
    """The blockwise loop of variant ``name`` on ``storage`` (state 'int8', ``signs`` saying
    which of its states use the signed map)."""
    n_states, family = _math.KERNELS[name]
    inline = njit(inline="always", error_model="numpy")
    tag = _codecs.tag(storage)
    scope = {"unpack": getattr(_math, "unpack_" + family),
             "apply_arranged": _math.arranged(name, storage)}
    for k in range(3):
        if k < n_states:
            quantize, dequantize = _quant.RULES[storage.signs[k]]
            scope[f"decode{k}"] = inline(_renamed(_decode, f"{name}_{tag}_decode{k}_"
                                                  f"{_RULES_VERSION}", dequantize=dequantize))
            scope[f"encode{k}"] = inline(_renamed(_encode, f"{name}_{tag}_encode{k}_"
                                                  f"{_RULES_VERSION}", quantize=quantize))
        else:
            scope[f"decode{k}"] = scope[f"encode{k}"] = inline(_no_state)
    kind = "parallel" if parallel else "serial"
    loop = _renamed(_block_loop, f"{name}_{tag}_blocks_{kind}_{_RULES_VERSION}", **scope)
    return njit(parallel=parallel, nogil=parallel, **_JIT_OPTIONS)(loop)


_NO_CODES, _NO_SCALES = np.empty(0, _quant.CODE), np.empty(0, _quant.SCALE)
_NO_MASTER = np.empty(0, np.float32)


class BlockwiseKernel:
    """The kernel of one variant on int8 state: called like ``Kernel.bind``'s calls, with each
    state as two buffers, its codes and its absmax scales (then the master copy if any):
    ``call(param, grad, codes0, absmax0, ..., [master], scalars)``.  One param per call."""

    def __init__(self, name, storage):
        self.__name__, self.storage = name, storage
        self.n_states = _math.KERNELS[name][0]
        self.parallel = _compile_blockwise(name, storage, parallel=True)
        self.serial = _compile_blockwise(name, storage, parallel=False)

    def bind(self, size):
        loop = _Timed(self.parallel, self.serial) if size >= SERIAL_BELOW else self.serial
        pad = (_NO_CODES, _NO_SCALES) * (3 - self.n_states)
        if self.storage.master:
            def call(param, grad, *buffers):
                loop(param, grad, *buffers[:-2], *pad, buffers[-2], buffers[-1])
        else:
            def call(param, grad, *buffers):
                loop(param, grad, *buffers[:-1], *pad, _NO_MASTER, buffers[-1])
        return call

    def dispatchers(self):
        return (self.parallel, self.serial)


# The grad-norm reductions, one set per codec of the grads (``load`` bound by _reductions).
def _sum_squares(x):
    total = 0.0  # float64 whatever the array's dtype
    for i in prange(x.size):
        value = np.float64(load(x[i]))  # noqa: F821
        total += value * value
    return total


def _table_sum_squares(grad_addresses, members, starts, first, like):
    total = 0.0  # float64 whatever the arrays' dtype
    for c in prange(first.size - 1):
        part = 0.0
        for t in range(first[c], first[c + 1] + 1):
            _, n, skip = _piece(c, t, starts)
            if n <= 0:
                continue
            grad = carray(_pointer(grad_addresses[members[t]], like, skip), n)
            for i in range(n):
                value = np.float64(load(grad[i]))  # noqa: F821
                part += value * value
        total += part
    return total


def _reductions(codec):
    """{(table, parallel): dispatcher} of the sums of squares of grads stored by ``codec``."""
    tag = "" if codec == "native" else "_" + codec
    made = {}
    for table, template in ((False, _sum_squares), (True, _table_sum_squares)):
        for parallel in (False, True):
            name = (f"{template.__name__}{tag}_{'parallel' if parallel else 'serial'}_"
                    f"{_RULES_VERSION}")
            options = dict(parallel=True, nogil=True) if parallel else {}
            made[table, parallel] = njit(fastmath=_REDUCTION_FASTMATH, **options, **_JIT_OPTIONS)(
                _renamed(template, name, load=_codecs.CODECS[codec][0]))
    return made


_REDUCTIONS = {codec: _reductions(codec) for codec in _codecs.CODECS}


def sum_squares(flat_array, codec="native"):
    """The sum of squares of a 1-D array (as ``bits`` gives it, stored by ``codec``),
    accumulated in float64: one read pass."""
    serial, parallel = _REDUCTIONS[codec][False, False], _REDUCTIONS[codec][False, True]
    if flat_array.size >= SERIAL_BELOW:
        return _run_parallel(parallel, serial, (flat_array,))
    return serial(flat_array)


def table_sum_squares(grad_addresses, table, like, codec="native"):
    """``sum_squares`` over a bucket's separate grads (``table``: its members, starts and
    first, as the multi-tensor loops take them; ``like``: an array of the grads' kernel dtype,
    as ``bits`` gives it).  The loop is chosen by size alone, so the same grads always give the
    same sum, bit for bit."""
    args = (grad_addresses, *table, like)
    serial, parallel = _REDUCTIONS[codec][True, False], _REDUCTIONS[codec][True, True]
    if table[1][-1] >= SERIAL_BELOW:
        return _run_parallel(parallel, serial, args)
    return serial(*args)


# --------------------------------------------------------------------- multi-tensor tables
# optim.base steps a bucket of separate arrays in one table call.  Not under NUMBA_DISABLE_JIT
# (the mutation runs, tests/MUTATION.md): the table loop reads memory through the ``_pointer``
# intrinsic, which has no Python form, so the buckets step array by array there.
MULTI_TENSOR = not numba.config.DISABLE_JIT


def table_states(states, dtype):
    """A kernel's buffers as the multi-tensor loop takes them: four, the missing ones empty
    stand-ins of ``dtype`` (see _table_loop)."""
    return tuple(states) + tuple(np.empty(0, dtype) for _ in range(4 - len(states)))


def table_layout(sizes, arrays=None):
    """(starts, first) of a multi-tensor loop over arrays of these sizes, in order: where each
    array starts in the bucket's elements (and where the last ends), and the array each chunk of
    TABLE_CHUNK elements starts in, then the last array.  (``arrays``: for the CUDA backend's
    twin, which builds device tables of them.)"""
    starts = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=starts[1:])
    chunk_starts = np.arange(0, starts[-1], TABLE_CHUNK, dtype=np.int64)
    first = np.empty(len(chunk_starts) + 1, np.int64)
    first[:-1] = np.searchsorted(starts, chunk_starts, side="right") - 1
    first[-1] = len(sizes) - 1
    return starts, first


def addresses(arrays):
    """The data addresses of arrays (NumPy), as an int64 array."""
    return np.array([a.__array_interface__["data"][0] for a in arrays], dtype=np.int64)


def param_spans(params):
    """The byte spans of the non-empty params, sorted by start (they never overlap, so the ends
    are sorted too): (starts, ends, param indices), for ``grad_addresses``' aliasing check."""
    spans = sorted((a, a + p.nbytes, i) for i, (a, p) in enumerate(zip(addresses(params), params))
                   if p.nbytes)
    return tuple(np.array([span[k] for span in spans], dtype=np.int64) for k in range(3))


@njit(**_JIT_OPTIONS)
def _grad_addresses(grads, count, indices, out, nbytes, span_starts, span_ends, span_indices):
    for j in range(count):
        k = indices[j]
        start = grads[j].ctypes.data
        out[k] = start
        if nbytes[k] == 0:  # an empty grad owns no bytes, wherever its data pointer lies
            continue
        # the params that start before this grad ends, back while they end after it starts
        p = np.searchsorted(span_starts, start + nbytes[k]) - 1
        while p >= 0 and span_ends[p] > start:
            if not (span_indices[p] == k and span_starts[p] == start):
                return k, span_indices[p]
            p -= 1
    return -1, -1


def grad_addresses(flat_grads, out, nbytes, spans, dtype_groups):
    """Write the data address of each grad (1-D, writeable) into ``out``, checking that no grad
    shares memory with a param other than being exactly its own.  Returns None, or (grad index,
    param index) of the first grad that does (``out`` may be partly written then).  The grads
    go to numba in padded tuples of one dtype and a fixed length (``dtype_groups``: the param
    indices of each dtype, as int64 arrays), so one compiled signature per dtype serves any
    number of params."""
    width = _ADDRESS_BATCH
    single = len(dtype_groups) == 1
    for indices in dtype_groups:
        pad = np.empty(0, flat_grads[indices[0]].dtype)
        for first in range(0, len(indices), width):
            batch = (flat_grads[first:first + width] if single
                     else [flat_grads[i] for i in indices[first:first + width]])
            count = len(batch)
            if count < width:
                batch = batch + [pad] * (width - count)
            k, i = _grad_addresses(tuple(batch), count, indices[first:first + width], out,
                                   nbytes, *spans)
            if k >= 0:
                return k, i
    return None


def scalars_argument(values, dtype):
    """What the kernels take as scalars: the values (a namedtuple) as an array of the dtype."""
    return np.array(values, dtype=dtype)


def update_scalars(scalars, indices, values):
    """Overwrite some fields of a scalars argument (the ones that change every step)."""
    for index, value in zip(indices, values):
        scalars[index] = value
    return scalars


def flat(array):
    """The 1-D view the loops index: a NumPy reshape of a contiguous array never copies."""
    return array.reshape(-1, order="A")


def _owner(array):
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array if array.base is None else array.base


def span(arrays):
    """One 1-D view over contiguous arrays that lie back to back, in order, in one buffer (the
    views of a FlatParams); None otherwise."""
    if len(arrays) == 1:
        return flat(arrays[0])
    first = arrays[0]
    owner, dtype = _owner(first), first.dtype
    end = first.__array_interface__["data"][0]
    for array in arrays:
        if (array.dtype != dtype or array.__array_interface__["data"][0] != end
                or _owner(array) is not owner):
            return None
        end += array.nbytes
    size = (end - first.__array_interface__["data"][0]) // dtype.itemsize
    return np.lib.stride_tricks.as_strided(flat(first), shape=(size,), strides=(dtype.itemsize,))


def full(size, dtype, value):
    """A new 1-D state buffer of ``dtype``, every element ``value`` (rounded as the kernels
    round)."""
    codec = _codecs.codec_of(dtype)
    if codec == "native":
        return np.full(size, value, dtype=dtype)
    return np.full(size, _codecs.encode(codec, value), dtype=_codecs.BITS).view(dtype)


def shaped(flat_view, like):
    """A flat view reshaped like the param ``like`` (its shape and memory order)."""
    return flat_view.reshape(like.shape, order="F" if _fortran(like) else "C")


def _fortran(array):
    return array.flags.f_contiguous and not array.flags.c_contiguous


def to_host(array):
    return array.copy()


def upload(flat_view, host_array, like):
    """Copy a NumPy array shaped like the param ``like`` into a flat view (state loading)."""
    flat_view[...] = np.ravel(host_array, order="F" if _fortran(like) else "C")


def copy_into(view, source):
    view[...] = source


def fill(buffer, value):
    bits(buffer).fill(_codecs.encode(_codecs.codec_of(buffer.dtype), value))


def _widen(out, source):
    for i in range(out.size):
        out[i] = load(source[i])  # noqa: F821


_WIDEN = {codec: njit(**_JIT_OPTIONS)(_renamed(_widen, f"_widen_{codec}_{_RULES_VERSION}",
                                                load=_codecs.CODECS[codec][0]))
          for codec in _codecs.CODECS if codec != "native"}


def widen(out, source, codec):
    """Copy the values of the 1-D array ``source`` (bits of bfloat16 or float16 values, as
    ``codec`` says) into the float32 array ``out``: exact, a master copy's first value."""
    _WIDEN[codec](out, source)


def scale(buffer, factor):
    """Multiply a 1-D buffer by ``factor`` in place (cast to its dtype: no float64 promotion);
    the distributed step's mean over ranks and its clipping factor."""
    np.multiply(buffer, buffer.dtype.type(factor), out=buffer)
