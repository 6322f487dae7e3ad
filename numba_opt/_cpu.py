"""CPU backend: prange loops that apply the ``_math`` rules element by element.

The loops do no arithmetic of their own.  Each loop is compiled twice: a ``parallel=True`` version
and a serial twin, because opening a prange region costs a few microseconds, more than a small
tensor's whole update.  ``SERIAL_BELOW`` is where the two cross on a 2-core machine (measured with
``bench/bench_roof.py``: equal at 1e4 elements, parallel 1.7x faster at 1e5).

All arrays reaching a kernel are 1-D contiguous views of the same length and dtype (the callers
validate that); absent optional state (no momentum, not centered, no amsgrad) is handled by a
separate loop, so no placeholder buffer is ever read or written.
"""
import types

import numpy as np
from numba import njit, prange

from . import _math

SERIAL_BELOW = 1 << 14

# error_model="numpy": the default 'python' model adds division checks that block vectorization.
_JIT_OPTIONS = dict(error_model="numpy", cache=True)


class Kernel:
    """A prange loop and its serial twin; calling it picks one by the length of the first array."""

    def __init__(self, loop):
        self.parallel = njit(parallel=True, **_JIT_OPTIONS)(loop)
        # A renamed clone gets its own on-disk cache entry: numba keys the cache by qualified
        # name, so two dispatchers of one function would overwrite each other's machine code.
        twin = types.FunctionType(loop.__code__, loop.__globals__, loop.__name__ + "_serial")
        twin.__qualname__ = loop.__qualname__ + "_serial"
        self.serial = njit(**_JIT_OPTIONS)(twin)
        self.__name__ = loop.__name__

    def __call__(self, *args):
        if args[0].size >= SERIAL_BELOW:
            self.parallel(*args)
        else:
            self.serial(*args)

    def dispatchers(self):
        return (self.parallel, self.serial)


# In the loops below, ``g[i]`` is passed where a rule takes a state it will not use: it is a value
# already loaded, so nothing extra is read, and the rule's flags guarantee it is ignored.

def _sgd(p, g, h):
    for i in prange(p.size):
        p[i], _ = _math.sgd(p[i], g[i], g[i], h)


def _sgd_momentum(p, g, momentum_buffer, h):
    for i in prange(p.size):
        p[i], momentum_buffer[i] = _math.sgd(p[i], g[i], momentum_buffer[i], h)


def _rmsprop(p, g, square_avg, h):
    for i in prange(p.size):
        p[i], square_avg[i], _, _ = _math.rmsprop(p[i], g[i], square_avg[i], g[i], g[i], h)


def _rmsprop_centered(p, g, square_avg, grad_avg, h):
    for i in prange(p.size):
        p[i], square_avg[i], grad_avg[i], _ = _math.rmsprop(
            p[i], g[i], square_avg[i], grad_avg[i], g[i], h)


def _rmsprop_momentum(p, g, square_avg, momentum_buffer, h):
    for i in prange(p.size):
        p[i], square_avg[i], _, momentum_buffer[i] = _math.rmsprop(
            p[i], g[i], square_avg[i], g[i], momentum_buffer[i], h)


def _rmsprop_centered_momentum(p, g, square_avg, grad_avg, momentum_buffer, h):
    for i in prange(p.size):
        p[i], square_avg[i], grad_avg[i], momentum_buffer[i] = _math.rmsprop(
            p[i], g[i], square_avg[i], grad_avg[i], momentum_buffer[i], h)


def _adam(p, g, exp_avg, exp_avg_sq, h):
    for i in prange(p.size):
        p[i], exp_avg[i], exp_avg_sq[i], _ = _math.adam(
            p[i], g[i], exp_avg[i], exp_avg_sq[i], g[i], h)


def _adam_amsgrad(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, h):
    for i in prange(p.size):
        p[i], exp_avg[i], exp_avg_sq[i], max_exp_avg_sq[i] = _math.adam(
            p[i], g[i], exp_avg[i], exp_avg_sq[i], max_exp_avg_sq[i], h)


def _adagrad(p, g, state_sum, h):
    for i in prange(p.size):
        p[i], state_sum[i] = _math.adagrad(p[i], g[i], state_sum[i], h)


sgd = Kernel(_sgd)
sgd_momentum = Kernel(_sgd_momentum)
rmsprop = Kernel(_rmsprop)
rmsprop_centered = Kernel(_rmsprop_centered)
rmsprop_momentum = Kernel(_rmsprop_momentum)
rmsprop_centered_momentum = Kernel(_rmsprop_centered_momentum)
adam = Kernel(_adam)
adam_amsgrad = Kernel(_adam_amsgrad)
adagrad = Kernel(_adagrad)

KERNELS = (sgd, sgd_momentum, rmsprop, rmsprop_centered, rmsprop_momentum,
           rmsprop_centered_momentum, adam, adam_amsgrad, adagrad)


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
