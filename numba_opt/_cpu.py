"""CPU backend: prange loops that apply the ``_math`` rules element by element.

The loops do no arithmetic of their own: each kernel unpacks its scalars and loops over
``_math.<name>_at``.  Every kernel is compiled twice, a ``parallel=True`` version and a serial
twin, because opening a prange region costs a few microseconds, more than a small tensor's whole
update.  ``SERIAL_BELOW`` is where the two cross on a 2-core machine (measured: equal near 1e4
elements, parallel 1.7x faster at 1e5).

All arrays reaching a kernel are 1-D contiguous views of the same length and dtype; the callers
validate that.  The helpers at the end (flat views, spans, state buffers) are the backend
interface ``optim.base`` uses; ``_cuda`` has the same names.
"""
import hashlib
import inspect
import os
import threading
import types
import warnings

import numpy as np
import numba
from numba import njit, prange

from . import _math

SERIAL_BELOW = 1 << 14

# error_model="numpy": the default 'python' model adds division checks that block vectorization.
_JIT_OPTIONS = dict(error_model="numpy", cache=True)
# The only fastmath in the project, for the grad-norm reduction: reassoc lets LLVM split the sum
# over several vector accumulators.  Without it every add waits for the previous one and the norm
# ran at a fifth of memory speed (4.8 ms against 0.98 ms on 1e7 float32); the order of a float64
# sum does not matter for a clipping norm.  The update rules stay exact (no fastmath).
_REDUCTION_FASTMATH = {"reassoc"}

# Numba's on-disk cache notices edits to this file only, not to the _math rules it inlines, so
# the rules' source hash goes into every kernel's name: an edited rule never loads a stale kernel.
_RULES_VERSION = hashlib.sha256(inspect.getsource(_math).encode()).hexdigest()[:10]


# One loop template per number of state buffers; ``unpack`` and ``apply_at`` are bound per kernel
# by _compile.  The buffers are separate arguments: numba's parallel regions lose writes made
# through a tuple of arrays (numba issues #7135, #10338).

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


_LOOPS = (_loop0, _loop1, _loop2, _loop3)


def _renamed(function, name, scope):
    """A copy of ``function`` under its own (qualified) name and globals: numba keys its on-disk
    cache by qualified name, so two dispatchers of one function would overwrite each other's
    machine code."""
    clone = types.FunctionType(function.__code__, scope, name)
    clone.__qualname__ = name
    return clone


def _compile(name, parallel):
    """The loop for ``name`` with its applier and unpacker bound, under a name of its own."""
    n_states, family = _math.KERNELS[name]
    scope = {**globals(), "apply_at": getattr(_math, name + "_at"),
             "unpack": getattr(_math, "unpack_" + family)}
    kind = "parallel" if parallel else "serial"
    loop = _renamed(_LOOPS[n_states], f"{name}_{kind}_{_RULES_VERSION}", scope)
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


class Kernel:
    """A prange loop and its serial twin; calling it picks one by the length of the param.
    Called as ``kernel(param, grad, states, scalars)``: ``states`` a tuple of 1-D arrays,
    ``scalars`` a 1-D array of the param dtype in the field order of ``_math.SCALARS[family]``."""

    def __init__(self, name):
        self.__name__ = name
        self.parallel = _compile(name, parallel=True)
        self.serial = _compile(name, parallel=False)

    def __call__(self, param, grad, states, scalars):
        self.bind(param.size)(param, grad, *states, scalars)

    def bind(self, size):
        """The loop for arrays of this size, called as ``loop(param, grad, *states, scalars)``."""
        return self._parallel_one_at_a_time if size >= SERIAL_BELOW else self.serial

    def _parallel_one_at_a_time(self, *args):
        return _run_parallel(self.parallel, self.serial, args)

    def dispatchers(self):
        return (self.parallel, self.serial)


KERNELS = tuple(Kernel(name) for name in _math.KERNELS)
globals().update({kernel.__name__: kernel for kernel in KERNELS})


def _sum_squares(x):
    total = 0.0  # float64 whatever the array's dtype
    for i in prange(x.size):
        value = np.float64(x[i])
        total += value * value
    return total


_sum_squares_serial = njit(fastmath=_REDUCTION_FASTMATH, **_JIT_OPTIONS)(
    _renamed(_sum_squares, "_sum_squares_serial", globals()))
_sum_squares_parallel = njit(parallel=True, nogil=True, fastmath=_REDUCTION_FASTMATH,
                             **_JIT_OPTIONS)(_sum_squares)


def sum_squares(flat_array):
    """The sum of squares of a 1-D array, accumulated in float64: one read pass."""
    if flat_array.size >= SERIAL_BELOW:
        return _run_parallel(_sum_squares_parallel, _sum_squares_serial, (flat_array,))
    return _sum_squares_serial(flat_array)


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
    """A new 1-D state buffer."""
    return np.full(size, value, dtype=dtype)


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
    buffer.fill(value)
