"""CUDA backend: grid-stride ``@cuda.jit`` kernels that apply the same ``_math`` rules.

Imported only when CUDA arrays (or ``device="cuda"``) are used.  Each kernel is one loop over
``_math.<name>_at``, the applier the CPU loops call too, so the arithmetic is the CPU's.  State
buffers are numba device arrays allocated next to the params; every scalar is computed on the
host and passed in the array dtype, so float32 kernels contain no float64 instructions (a test
compiles the PTX to check).

Params and grads may be numba device arrays or any ``__cuda_array_interface__`` object (CuPy
arrays, torch CUDA tensors): they are viewed in place, never copied.  Kernels run on the default
stream.  Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run in Python.
"""
import numpy as np
from numba import config, cuda

from . import _math

THREADS_PER_BLOCK = 256
# Grid-stride loops cover any size with at most this many blocks (tests lower both numbers so
# tiny arrays still span several blocks and several strides).
MAX_BLOCKS = 4096

_SIMULATED = bool(config.ENABLE_CUDASIM)


def check_available():
    """Raise a clear error where no GPU can run the kernels (the simulator always can)."""
    if not _SIMULATED and not cuda.is_available():
        raise RuntimeError("device='cuda': numba-cuda is installed but no usable NVIDIA GPU and "
                           "driver were found (numba.cuda.is_available() is False)")


def _device_function(applier):
    # The simulator runs kernels as Python and cannot pass its fake device arrays into a compiled
    # CPU function, so it gets the applier's Python source; real kernels compile the dispatcher.
    return applier.py_func if _SIMULATED else applier


# One grid-stride kernel template per number of state buffers.
def _kernel0(apply_at):
    @cuda.jit
    def kernel(param, grad, h):
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, h)
    return kernel


def _kernel1(apply_at):
    @cuda.jit
    def kernel(param, grad, s0, h):
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, h)
    return kernel


def _kernel2(apply_at):
    @cuda.jit
    def kernel(param, grad, s0, s1, h):
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, s1, h)
    return kernel


def _kernel3(apply_at):
    @cuda.jit
    def kernel(param, grad, s0, s1, s2, h):
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, s1, s2, h)
    return kernel


_TEMPLATES = (_kernel0, _kernel1, _kernel2, _kernel3)


def _launch_config(size):
    threads = THREADS_PER_BLOCK
    return min((size + threads - 1) // threads, MAX_BLOCKS), threads


class Launcher:
    """Called like a CPU kernel: ``launcher(param, grad, states, h)`` on flat device arrays."""

    def __init__(self, name):
        self.__name__ = name
        self.kernel = _TEMPLATES[_math.KERNELS[name]](_device_function(getattr(_math, name + "_at")))

    def __call__(self, param, grad, states, h):
        if param.size:
            blocks, threads = _launch_config(param.size)
            self.kernel[blocks, threads](param, grad, *states, h)


LAUNCHERS = tuple(Launcher(name) for name in _math.KERNELS)
globals().update({launcher.__name__: launcher for launcher in LAUNCHERS})


@cuda.jit
def _fill(out, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


def _as_numba(array):
    """A numba device-array view of ``array``: numba's own (or simulated) arrays as they are,
    anything else with ``__cuda_array_interface__`` wrapped without a copy."""
    if getattr(array, "__cuda_memory__", False) or hasattr(array, "__cuda_ndarray__"):
        return array
    return cuda.as_cuda_array(array)


def _order(array):
    return "F" if array.is_f_contiguous() and not array.is_c_contiguous() else "C"


def flat(array):
    """The 1-D view the kernels index, in the array's memory order (never a copy)."""
    array = _as_numba(array)
    return array.reshape(array.size, order=_order(array))


def full_like(array, value):
    """A new device state buffer shaped and ordered like ``array``, filled with ``value``."""
    like = _as_numba(array)
    buffer = cuda.device_array(like.shape, dtype=like.dtype, order=_order(like))
    if buffer.size:
        flat_buffer = buffer.reshape(buffer.size, order=_order(buffer))
        _fill[_launch_config(buffer.size)](flat_buffer, np.dtype(like.dtype).type(value))
    return buffer


def to_host(array):
    return _as_numba(array).copy_to_host()


def from_host(host_array, like):
    """A device copy of a NumPy array, laid out like ``like`` (state_dict loading)."""
    like = _as_numba(like)
    return cuda.to_device(np.require(host_array, dtype=like.dtype, requirements=_order(like)))
