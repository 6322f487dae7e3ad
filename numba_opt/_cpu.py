"""CPU backend: prange loops that apply the ``_math`` rules element by element.

The loops do no arithmetic of their own: each kernel is one loop over ``_math.<name>_at``.
Every kernel is compiled twice, a ``parallel=True`` version and a serial twin, because opening
a prange region costs a few microseconds, more than a small tensor's whole update.
``SERIAL_BELOW`` is where the two cross on a 2-core machine (measured: equal near 1e4 elements,
parallel 1.7x faster at 1e5).

All arrays reaching a kernel are 1-D contiguous views of the same length and dtype; the callers
validate that.
"""
import hashlib
import inspect
import types

import numpy as np
from numba import njit, prange

from . import _math

SERIAL_BELOW = 1 << 14

# error_model="numpy": the default 'python' model adds division checks that block vectorization.
_JIT_OPTIONS = dict(error_model="numpy", cache=True)

# Numba's on-disk cache notices edits to this file only, not to the _math rules it inlines, so
# the rules' source hash goes into every kernel's name: an edited rule never loads a stale kernel.
_RULES_VERSION = hashlib.sha256(inspect.getsource(_math).encode()).hexdigest()[:10]


# One loop template per number of state buffers; ``apply_at`` is bound per kernel by _compile.

def _loop0(param, grad, h):
    for i in prange(param.size):
        apply_at(i, param, grad, h)  # noqa: F821


def _loop1(param, grad, s0, h):
    for i in prange(param.size):
        apply_at(i, param, grad, s0, h)  # noqa: F821


def _loop2(param, grad, s0, s1, h):
    for i in prange(param.size):
        apply_at(i, param, grad, s0, s1, h)  # noqa: F821


def _loop3(param, grad, s0, s1, s2, h):
    for i in prange(param.size):
        apply_at(i, param, grad, s0, s1, s2, h)  # noqa: F821


_LOOPS = (_loop0, _loop1, _loop2, _loop3)


def _compile(name, parallel):
    """The loop for ``name`` with ``apply_at`` bound to ``_math.<name>_at``, under a name of its
    own (numba keys its cache by qualified name; two kernels of one name would overwrite each
    other's machine code)."""
    template = _LOOPS[_math.KERNELS[name]]
    scope = {**globals(), "apply_at": getattr(_math, name + "_at")}
    kind = "parallel" if parallel else "serial"
    loop = types.FunctionType(template.__code__, scope, f"{name}_{kind}")
    loop.__qualname__ = f"{name}_{kind}_{_RULES_VERSION}"
    return njit(parallel=parallel, **_JIT_OPTIONS)(loop)


class Kernel:
    """A prange loop and its serial twin; calling it picks one by the length of the param.
    Called as ``kernel(param, grad, states, h)`` with ``states`` a tuple of 1-D arrays."""

    def __init__(self, name):
        self.__name__ = name
        self.parallel = _compile(name, parallel=True)
        self.serial = _compile(name, parallel=False)

    def __call__(self, param, grad, states, h):
        loop = self.parallel if param.size >= SERIAL_BELOW else self.serial
        loop(param, grad, *states, h)

    def dispatchers(self):
        return (self.parallel, self.serial)


KERNELS = tuple(Kernel(name) for name in _math.KERNELS)
globals().update({kernel.__name__: kernel for kernel in KERNELS})


def flat(array):
    """The 1-D view the loops index: a NumPy reshape of a contiguous array never copies."""
    return array.reshape(-1, order="A")


def full_like(array, value):
    """A new state buffer next to ``array`` (same shape, dtype and memory order)."""
    return np.full_like(array, value)


def to_host(array):
    return array.copy()


def from_host(host_array, like):
    """A copy of a NumPy array laid out like ``like`` (state_dict loading)."""
    buffer = np.empty_like(like)
    buffer[...] = host_array
    return buffer
