"""CUDA backend: grid-stride ``@cuda.jit`` kernels that apply the same ``_math`` rules.

Imported only when CUDA arrays (or ``device="cuda"``) are used.  Each kernel is one loop over
``_math.<name>_at``, the applier the CPU loops call too, so the arithmetic is the CPU's.  State
buffers are numba device arrays allocated next to the params; every scalar is computed on the
host and passed in the array dtype (as the ``_math`` namedtuple, flags as 0.0 / 1.0), so float32
kernels contain no float64 instructions (a test compiles the PTX to check).

Params and grads may be numba device arrays or any ``__cuda_array_interface__`` object (CuPy
arrays, torch CUDA tensors): they are viewed in place, never copied.  Kernels run on the default
stream.  Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run in Python.
"""
import numpy as np
from numba import config, cuda

from . import _codecs, _math
from ._codecs import NATIVE, bits  # noqa: F401 (bits: part of the backend interface)

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


def _applier(name, storage):
    # The simulator runs kernels as Python and cannot pass its fake device arrays into a compiled
    # CPU function, so it gets the appliers as Python functions (the rules and codecs they call
    # take scalars, and stay compiled); real kernels compile the dispatchers.
    if _SIMULATED:
        return _math.applier(name, storage, wrap=lambda f: f, codecs=_codecs.PYTHON_CODECS,
                             stochastic=_codecs.PYTHON_STOCHASTIC_STORES)
    return _math.applier(name, storage)


# One grid-stride kernel template per number of buffers (the states, then the master copy).
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


def _kernel4(apply_at):
    @cuda.jit
    def kernel(param, grad, s0, s1, s2, s3, h):
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, s1, s2, s3, h)
    return kernel


_TEMPLATES = (_kernel0, _kernel1, _kernel2, _kernel3, _kernel4)


def _launch_config(size):
    threads = THREADS_PER_BLOCK
    return min((size + threads - 1) // threads, MAX_BLOCKS), threads


class Launcher:
    """Called like a CPU kernel: ``launcher(param, grad, states, scalars)`` on flat device
    arrays, ``scalars`` from ``scalars_argument``; one kernel variant on one
    ``_codecs.Storage``.  The bound launches take the arrays as ``bits`` views."""

    def __init__(self, name, storage=NATIVE):
        self.__name__, self.storage = name, storage
        n_states, _ = _math.KERNELS[name]
        self.kernel = _TEMPLATES[n_states + storage.master](_applier(name, storage))

    def __call__(self, param, grad, states, scalars):
        self.bind(param.size)(bits(param), bits(grad), *map(bits, states), scalars)

    def bind(self, size):
        """The launch for arrays of this size: ``launch(param, grad, *states, scalars)``."""
        if not size:
            return _nothing
        return self.kernel[_launch_config(size)]


def _nothing(*args):
    pass


LAUNCHERS = tuple(Launcher(name) for name in _math.KERNELS)  # on float32 and float64 arrays
globals().update({launcher.__name__: launcher for launcher in LAUNCHERS})
_LAUNCHERS = {(launcher.__name__, NATIVE): launcher for launcher in LAUNCHERS}


def kernel(name, storage):
    """The Launcher of variant ``name`` on ``storage``, made on first use."""
    key = (name, storage)
    if key not in _LAUNCHERS:
        _LAUNCHERS.setdefault(key, Launcher(name, storage))
    return _LAUNCHERS[key]


def scalars_argument(values, dtype):
    """What the kernels take as scalars: the namedtuple with every field cast to the dtype."""
    cast = np.dtype(dtype).type
    return type(values)._make(cast(v) for v in values)


def update_scalars(scalars, indices, values):
    """A copy of the scalars with some fields (those that change every step) replaced."""
    cast = type(scalars[0])
    fields = list(scalars)
    for index, value in zip(indices, values):
        fields[index] = cast(value)
    return type(scalars)._make(fields)


def _sum_squares_kernel(load):
    @cuda.jit
    def kernel(x, out):
        total = 0.0  # float64 whatever the array's dtype; the one f64 kernel, on purpose
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            value = np.float64(load(x[i]))
            total += value * value
        cuda.atomic.add(out, 0, total)
    return kernel


def _widen_kernel(load):
    @cuda.jit
    def kernel(out, source):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[i] = load(source[i])
    return kernel


# per codec of the grads (the codecs take scalars: the simulator calls them compiled)
_SUM_SQUARES = {codec: _sum_squares_kernel(load) for codec, (load, _) in _codecs.CODECS.items()}
_WIDEN = {codec: _widen_kernel(load) for codec, (load, _) in _codecs.CODECS.items()
          if codec != "native"}


def sum_squares(flat_array, codec="native"):
    """The sum of squares of a 1-D device array (as ``bits`` gives it, stored by ``codec``), in
    float64: one read pass (and a sync)."""
    out = cuda.to_device(np.zeros(1))
    if flat_array.size:
        _SUM_SQUARES[codec][_launch_config(flat_array.size)](flat_array, out)
    return float(out.copy_to_host()[0])


def widen(out, source, codec):
    """Copy the values of the 1-D device array ``source`` (bits of bfloat16 or float16 values,
    as ``codec`` says) into the float32 device array ``out``: exact, a master copy's first
    value."""
    if out.size:
        _WIDEN[codec][_launch_config(out.size)](out, source)


@cuda.jit
def _fill(out, value):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = value


@cuda.jit
def _scale(out, factor):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = out[i] * factor


def scale(buffer, factor):
    """Multiply a 1-D device buffer by ``factor`` in place (cast to its dtype)."""
    if buffer.size:
        _scale[_launch_config(buffer.size)](buffer, np.dtype(buffer.dtype).type(factor))


def _as_numba(array):
    """A numba device-array view of ``array``: numba's own (or simulated) arrays as they are,
    anything else with ``__cuda_array_interface__`` wrapped without a copy."""
    if getattr(array, "__cuda_memory__", False) or hasattr(array, "__cuda_ndarray__"):
        return array
    return cuda.as_cuda_array(array)


def _fortran(array):
    return array.is_f_contiguous() and not array.is_c_contiguous()


def flat(array):
    """The 1-D view the kernels index, in the array's memory order (never a copy)."""
    array = _as_numba(array)
    return array.reshape(array.size, order="F" if _fortran(array) else "C")


class _Span:
    """A __cuda_array_interface__ over adjacent device arrays; holds them so they outlive it."""

    def __init__(self, pointer, size, typestr, arrays):
        self.arrays = arrays
        self.__cuda_array_interface__ = {"shape": (size,), "typestr": typestr, "strides": None,
                                         "data": (pointer, False), "version": 3}


def span(arrays):
    """One 1-D device view over contiguous arrays that lie back to back, in order (the views of
    a FlatParams on the GPU); None otherwise."""
    arrays = [_as_numba(a) for a in arrays]
    if len(arrays) == 1:
        return flat(arrays[0])
    if _SIMULATED:  # fake device arrays wrap NumPy arrays: the CPU's test applies to those
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        from . import _cpu
        host = _cpu.span([a._ary for a in arrays])
        return None if host is None else FakeCUDAArray(host)
    interfaces = [a.__cuda_array_interface__ for a in arrays]
    typestr = interfaces[0]["typestr"]
    start = end = interfaces[0]["data"][0]
    for array, interface in zip(arrays, interfaces):
        if interface["typestr"] != typestr or interface["data"][0] != end:
            return None
        end += array.size * array.dtype.itemsize
    size = (end - start) // arrays[0].dtype.itemsize
    joined = cuda.as_cuda_array(_Span(start, size, typestr, arrays))
    # the interface of bfloat16 memory says only "<V2": give the view its dtype back
    return joined if joined.dtype == arrays[0].dtype else joined.view(arrays[0].dtype)


def full(size, dtype, value):
    """A new 1-D device state buffer."""
    buffer = cuda.device_array(size, dtype=dtype)
    fill(buffer, value)
    return buffer


def shaped(flat_view, like):
    """A flat device view reshaped like the param ``like`` (its shape and memory order)."""
    return flat_view.reshape(tuple(like.shape), order="F" if _fortran(_as_numba(like)) else "C")


def to_host(array):
    return _as_numba(array).copy_to_host()


def upload(flat_view, host_array, like):
    """Copy a NumPy array shaped like the param ``like`` into a flat device view."""
    order = "F" if _fortran(_as_numba(like)) else "C"
    bits(flat_view).copy_to_device(bits(np.ascontiguousarray(np.ravel(host_array, order=order))))


def copy_into(view, source):
    """Device-to-device (or host-to-device) copy into a C-ordered view."""
    if isinstance(source, np.ndarray):
        contiguous = source.flags.c_contiguous
    else:
        source = _as_numba(source)
        contiguous = source.is_c_contiguous()
    if not contiguous:
        raise ValueError("FlatParams on the GPU copies C-contiguous arrays only")
    # as bits: a bfloat16 device array's interface says only '<V2', which copies refuse
    bits(view).copy_to_device(bits(source))


def fill(buffer, value):
    if buffer.size:
        codec = _codecs.codec_of(buffer.dtype)
        value = _codecs.encode(codec, value) if codec != "native" else \
            np.dtype(buffer.dtype).type(value)
        _fill[_launch_config(buffer.size)](bits(buffer), value)
