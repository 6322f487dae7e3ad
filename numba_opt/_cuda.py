"""CUDA backend: grid-stride ``@cuda.jit`` kernels that apply the same ``_math`` rules.

Imported only when CUDA arrays (or ``device="cuda"``) are used.  Each kernel is one loop over
``_math.<name>_at``, the applier the CPU loops call too, so the arithmetic is the CPU's.  State
buffers are numba device arrays allocated next to the params; every scalar is computed on the
host and passed in the array dtype (as the ``_math`` namedtuple, flags as 0.0 / 1.0), so float32
kernels contain no float64 instructions (a test compiles the PTX to check).

Params and grads may be numba device arrays or any ``__cuda_array_interface__`` object (CuPy
arrays, torch CUDA tensors): they are viewed in place, never copied, wrapped without a host
sync.  Kernels run on the step's stream and read the clip scale from device memory
(``_cuda_launch``); a bucket of separate arrays is one launch over a device table
(``_cuda_table``); the grad norm stays on the device (``_cuda_norm``).  Under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run in Python.
"""
import numpy as np
from numba import config, cuda

from . import _codecs, _cuda_launch, _cuda_norm, _cuda_table, _interface, _math, _quant
from ._codecs import NATIVE, bits  # noqa: F401 (bits: part of the backend interface)
from ._cuda_launch import LaunchContext  # noqa: F401 (part of the backend interface)

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
# Every update kernel reads the clip scale from device memory (``scale``: one element of the
# compute dtype, 1 unless the step clips by the global norm, see _cuda_norm) and multiplies the
# scalars' grad_scale by it, so a clipped step needs no host round trip.
def _kernel0(apply_at, rescaled):
    @cuda.jit
    def kernel(param, grad, scale, h):
        h = rescaled(h, scale[0])
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, h)
    return kernel


def _kernel1(apply_at, rescaled):
    @cuda.jit
    def kernel(param, grad, s0, scale, h):
        h = rescaled(h, scale[0])
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, h)
    return kernel


def _kernel2(apply_at, rescaled):
    @cuda.jit
    def kernel(param, grad, s0, s1, scale, h):
        h = rescaled(h, scale[0])
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, s1, h)
    return kernel


def _kernel3(apply_at, rescaled):
    @cuda.jit
    def kernel(param, grad, s0, s1, s2, scale, h):
        h = rescaled(h, scale[0])
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, s1, s2, h)
    return kernel


def _kernel4(apply_at, rescaled):
    @cuda.jit
    def kernel(param, grad, s0, s1, s2, s3, scale, h):
        h = rescaled(h, scale[0])
        for i in range(cuda.grid(1), param.size, cuda.gridsize(1)):
            apply_at(i, param, grad, s0, s1, s2, s3, h)
    return kernel


def _rescaler(family):
    """``rescaled(h, s)``: the scalars of ``family`` with grad_scale multiplied by ``s`` (in
    the scalars' dtype: exact for the 1 of an unclipped step)."""
    scalars = _math.SCALARS[family]
    assert scalars._fields[0] == "grad_scale"
    rest = "".join(f", h.{name}" for name in scalars._fields[1:])
    scope = {"Scalars": scalars}
    exec(f"def rescaled_{family}(h, s):\n    return Scalars(h.grad_scale * s{rest})\n", scope)
    function = scope[f"rescaled_{family}"]
    return function if _SIMULATED else _math._rule(function)


_RESCALERS = {family: _rescaler(family) for family in _math.SCALARS}


_TEMPLATES = (_kernel0, _kernel1, _kernel2, _kernel3, _kernel4)


def _launch_config(size):
    threads = THREADS_PER_BLOCK
    return min((size + threads - 1) // threads, MAX_BLOCKS), threads


class Launcher:
    """Called like a CPU kernel: ``launcher(param, grad, states, scalars)`` on flat device
    arrays, ``scalars`` from ``scalars_argument``; one kernel variant on one
    ``_codecs.Storage``.  The bound launches take the arrays as ``bits`` views: ``bind`` one
    span, ``bind_table`` a bucket of separate arrays (``_cuda_table``), one launch either way."""

    def __init__(self, name, storage=NATIVE):
        self.__name__, self.storage = name, storage
        n_states, family = _math.KERNELS[name]
        self._apply_at, self._rescaled = _applier(name, storage), _RESCALERS[family]
        self.kernel = _TEMPLATES[n_states + storage.master](self._apply_at, self._rescaled)
        self._table_kernel = None  # made on the first bind_table

    def __call__(self, param, grad, states, scalars):
        self.bind(param.size)(bits(param), bits(grad), *map(bits, states), scalars)

    def bind(self, size):
        """The launch for arrays of this size: ``launch(param, grad, *states, scalars)``.  A
        bucket's call site passes arrays of one dtype and dimension each time (validated), so
        from its second launch on it skips numba's argument typing (``_cuda_launch.Bound``)."""
        if not size:
            return _nothing
        launch = _cuda_launch.Bound(self.kernel, *_launch_config(size), fixed_types=True)

        def call(*args):
            scalars = args[-1]
            launch(*args[:-1], _scale_of(scalars), scalars)
        return call

    def bind_table(self, size):
        """The launch over a bucket's separate arrays, ``size`` elements in all:
        ``launch(None, grads, members, table, s0, s1, s2, s3, scalars)`` with ``grads`` every
        grad of the optimizer (flat), ``members`` the bucket's indices into them, ``table`` its
        ``DeviceTable`` and four state buffers (``table_states``)."""
        if not size:
            return _nothing
        if self._table_kernel is None:
            n_buffers = _math.KERNELS[self.__name__][0] + self.storage.master
            with4 = _math.bound(_cuda_table.WITH[n_buffers], f"{self.__name__}_with4",
                                apply_at=self._apply_at)
            self._table_kernel = _cuda_table.update_kernel(
                with4 if _SIMULATED else _math._rule(with4), self._rescaled)
        # every argument is the bucket's own: the types never change, launch the compiled kernel
        launch = _cuda_launch.Bound(self._table_kernel, *_launch_config(size), fixed_types=True)

        def call(_, grads, members, table, s0, s1, s2, s3, scalars):
            launch(table.params, table.grads_table(grads, members), table.starts, table.offsets,
                   table.like, s0, s1, s2, s3, _scale_of(scalars), scalars)
        return call


def _nothing(*args):
    pass


def _scale_of(scalars):
    """The device clip scale the kernels taking ``scalars`` read (the running step's)."""
    return _cuda_launch.active_context().scale(type(scalars[0]))


# ------------------------------------------------------------------ multi-tensor tables
# optim.base steps a bucket of separate device arrays in one launch over a _cuda_table table,
# int8 state included (BlockwiseLauncher.bind_table).
MULTI_TENSOR = True
QUANTIZED_TABLE = True


def table_layout(sizes, arrays):
    """What ``bind_table``'s launches take after the bucket's member indices: its table."""
    return (_cuda_table.DeviceTable(arrays),)


SUBSET_TABLES = True  # ... and the params with grads together when some grads are None


def subset_table(table, positions, arrays):
    """The table of a bucket's ``arrays`` at ``positions`` of its ``table``."""
    return _cuda_table.DeviceTable(arrays, subset_of=table, positions=list(positions))


def table_states(states, dtype):
    """A kernel's buffers as the table kernel takes them: four, the missing ones empty."""
    return tuple(states) + tuple(_empty(dtype) for _ in range(4 - len(states)))


LAUNCHERS = tuple(Launcher(name) for name in _math.KERNELS)  # on float32 and float64 arrays
globals().update({launcher.__name__: launcher for launcher in LAUNCHERS})
_LAUNCHERS = {(launcher.__name__, NATIVE): launcher for launcher in LAUNCHERS}


def kernel(name, storage):
    """The Launcher of variant ``name`` on ``storage``, made on first use."""
    key = (name, storage)
    if key not in _LAUNCHERS:
        blockwise = storage.state == _codecs.INT8
        _LAUNCHERS.setdefault(key, (BlockwiseLauncher if blockwise else Launcher)(name, storage))
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


def _widen_kernel(load):
    @cuda.jit
    def kernel(out, source):
        for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            out[i] = load(source[i])
    return kernel


# per codec of the grads (the codecs take scalars: the simulator calls them compiled)
_WIDEN = {codec: _widen_kernel(load) for codec, (load, _) in _codecs.CODECS.items()
          if codec != "native"}


def sum_squares(flat_array, codec="native"):
    """The sum of squares of a 1-D device array (as ``bits`` gives it, stored by ``codec``), in
    float64: one read pass and a host sync (a step's norm is ``_cuda_norm.GradNorm``'s)."""
    return _cuda_norm.sum_squares(flat_array, codec)


def widen(out, source, codec):
    """Copy the values of the 1-D device array ``source`` (bits of bfloat16 or float16 values,
    as ``codec`` says) into the float32 device array ``out``: exact, a master copy's first
    value."""
    if out.size:
        _cuda_launch.launcher(_WIDEN[codec], *_launch_config(out.size))(out, source)


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
        _cuda_launch.launcher(_scale, *_launch_config(buffer.size))(
            buffer, np.dtype(buffer.dtype).type(factor))


def _as_numba(array):
    """A numba device-array view of ``array``: numba's own (or simulated) arrays as they are,
    anything else with ``__cuda_array_interface__`` wrapped without a copy, with the dtype
    ``_interface`` reads (torch's bfloat16 interface says only '<V2')."""
    if getattr(array, "__cuda_memory__", False) or hasattr(array, "__cuda_ndarray__"):
        return array
    dtype = _interface.dtype_of(array)
    # sync=False: numba would wait on the host for a version-3 interface's stream; the step is
    # ordered on its stream instead (_cuda_launch)
    view = _simulated_view(array) if _SIMULATED else cuda.as_cuda_array(array, sync=False)
    return view if view.dtype == dtype else view.view(dtype)


def _simulated_view(array):
    """Simulator only (it has no ``as_cuda_array``): the simulator's device memory is host
    memory, so an interface object there (the tests' torch and CuPy stand-ins) is wrapped by
    reading its address, shape, strides and typestr as NumPy's ``__array_interface__`` --
    the same fields the real wrapping reads, so the tests check them too."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    interface = dict(array.__cuda_array_interface__)
    interface.pop("stream", None)  # no streams in the simulator; not an __array_interface__ key
    if not interface["data"][0]:  # torch gives empty tensors address 0, which NumPy refuses
        return FakeCUDAArray(np.empty(interface["shape"], dtype=interface["typestr"]))
    return FakeCUDAArray(np.asarray(_HostInterface({**interface, "version": 3}, array)))


class _HostInterface:
    """An ``__array_interface__`` holding the object whose memory it describes."""

    def __init__(self, interface, owner):
        self.__array_interface__, self.owner = interface, owner


def _fortran(array):
    return array.is_f_contiguous() and not array.is_c_contiguous()


def flat(array):
    """The 1-D view the kernels index, in the array's memory order (never a copy)."""
    array = _as_numba(array)
    return array.reshape(array.size, order="F" if _fortran(array) else "C")


class _Span:
    """A __cuda_array_interface__ over adjacent device arrays; holds them so they outlive it.
    ``dtype`` names the type where the typestr cannot (bfloat16 is '<V2')."""

    def __init__(self, pointer, size, dtype, arrays):
        self.arrays, self.dtype = arrays, dtype
        self.__cuda_array_interface__ = {"shape": (size,), "typestr": dtype.str,
                                         "strides": None, "data": (pointer, False),
                                         "version": 3}


def span(arrays):
    """One 1-D device view over contiguous arrays that lie back to back, in order (the views of
    a FlatParams on the GPU); None otherwise.  Empty arrays hold no bytes and are left out of
    the chain: numba (and torch) give them address 0."""
    arrays = [_as_numba(a) for a in arrays]
    if len(arrays) == 1:
        return flat(arrays[0])
    described = [_interface.describe(a) for a in arrays]
    dtype = described[0].dtype
    if any(d.dtype != dtype for d in described):
        return None
    extents = [(d.pointer, d.nbytes) for d in described if d.nbytes]
    if not extents:
        return flat(arrays[0])  # nothing to update
    start = end = extents[0][0]
    for pointer, nbytes in extents:
        if pointer != end:
            return None
        end += nbytes
    # (the simulator wraps it as host memory, as it wraps the tests' stand-ins)
    return _as_numba(_Span(start, (end - start) // dtype.itemsize, dtype, arrays))


def full(size, dtype, value):
    """A new 1-D device state buffer."""
    buffer = cuda.device_array(size, dtype=dtype)
    fill(buffer, value)
    return buffer


def shaped(flat_view, like):
    """A flat device view reshaped like the param ``like`` (its shape and memory order)."""
    return flat_view.reshape(tuple(like.shape), order="F" if _fortran(_as_numba(like)) else "C")


def to_host(array):
    """A NumPy copy of a device array, in pinned (page-locked) memory, which the copy fills at
    full bus speed without a staging buffer (the simulator's pinned arrays are plain ones)."""
    array = _as_numba(array)
    if not array.size:
        return np.empty(array.shape, dtype=array.dtype)
    host = cuda.pinned_array(array.shape, dtype=array.dtype,
                             order="F" if _fortran(array) else "C")
    bits(array).copy_to_host(bits(host))  # bits: copies refuse bfloat16's '<V2' interface
    return host


def current_device():
    """The ordinal of the GPU the kernels launch on (the simulator has one, 0)."""
    return 0 if _SIMULATED else cuda.get_current_device().id


def array_device(array):
    """The ordinal of the GPU whose memory holds ``array``; None for an empty array (address
    0).  Asks the driver about the address; tests monkeypatch it (the simulator has one GPU)."""
    pointer = _interface.describe(array).pointer
    if not pointer:
        return None
    if _SIMULATED:
        return 0
    from numba.cuda.cudadrv import driver
    ordinal = driver.binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    return int(driver.driver.cuPointerGetAttribute(ordinal, driver.binding.CUdeviceptr(pointer)))


def check_devices(named_arrays):
    """Every array (pairs of name, array) must live on the current GPU: a kernel given another
    GPU's address fails with an illegal address, or worse, reads it through peer access."""
    current = current_device()
    for name, array in named_arrays:
        device = array_device(array)
        if device is not None and device != current:
            raise ValueError(f"{name} lives on GPU {device} but the current device is GPU "
                             f"{current}, where numba_opt launches; make GPU {device} current "
                             f"(numba.cuda.select_device({device}), torch.cuda.set_device, "
                             f"cupy.cuda.Device({device}).use()) or move the array")


def upload(flat_view, host_array, like):
    """Copy a NumPy array shaped like the param ``like`` into a flat device view."""
    order = "F" if _fortran(_as_numba(like)) else "C"
    bits(flat_view).copy_to_device(bits(np.ascontiguousarray(np.ravel(host_array, order=order))))


def copy_into(view, source):
    """Device-to-device (or host-to-device) copy into a C-ordered view."""
    if not view.size:  # nothing to copy (and an empty source may have address 0)
        return
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
        _cuda_launch.launcher(_fill, *_launch_config(buffer.size))(bits(buffer), value)


# ----------------------------------------------------------- blockwise 8-bit state (_quant)
# One thread block per absmax block of _quant.BLOCK elements at a time (grid-stride over the
# blocks), its threads striding over the elements: decode each state into shared float32
# scratch, run the applier on the scratch (``_math.arranged``), take the new absmax with a shared
# atomic max on the magnitudes' bits, then encode.  The same rules as the CPU loop, so the same
# codes.  ``decode<k>`` / ``encode<k>`` are bound per kernel to state k's signed or unsigned
# rules, or to the ``_no_*`` stand-ins past the kernel's states.
#
# One kernel serves one param and a bucket of separate params (one launch per bucket, over a
# ``_cuda_table.DeviceTable``); only how a block finds its elements differs (``_locate_*``).  A
# param's blocks are its own, so absmax block b of the bucket is block b of the flat scales and
# the codes and master copy of its elements start where its param's state starts.  A table of
# some of a bucket's params (the others' grads None) says where their state lies in the
# bucket's (``DeviceTable`` offsets).
def _no_decode(codes, absmax, i, b):
    return 0.0


def _no_encode(codes, i, value, absmax):
    pass


def _decode(codes, absmax, i, b):
    return dequantize(codes[i], absmax[b])  # noqa: F821 (bound per kernel)


def _encode(codes, i, value, absmax):
    codes[i] = quantize(value, absmax)  # noqa: F821


def _blocks_of_one(param, block_starts):
    return (param.size + _quant.BLOCK - 1) // _quant.BLOCK


def _locate_in_one(b, param, grad, tables, like):
    """Block b of one param: its param and grad from the block's first element, the offset of
    that element in the state buffers, the block's length and the index of its scale."""
    lo = b * _quant.BLOCK
    return param[lo:], grad[lo:], lo, min(_quant.BLOCK, param.size - lo), b


def _blocks_of_table(param_table, block_starts):
    return block_starts[block_starts.size - 1]


def _locate_in_table(b, param_table, grad_table, tables, like):
    """Block b of a table: its array t's ``b - block_starts[t]``-th block.  ``tables``: the
    table's starts, state offsets, block starts and block offsets (see DeviceTable)."""
    starts, offsets, block_starts, block_offsets = tables
    t = _cuda_table.lookup(block_starts, b)
    own = b - block_starts[t]
    lo = own * _quant.BLOCK
    size = starts[t + 1] - starts[t]
    return (_cuda_table.tensor(param_table, t, like, size)[lo:],
            _cuda_table.tensor(grad_table, t, like, size)[lo:],
            offsets[t] + lo, min(_quant.BLOCK, size - lo), block_offsets[t] + own)


def _blockwise_kernel(apply_arranged, rescaled, count_blocks, locate, decode0, encode0, decode1,
                      encode1, decode2, encode2):
    block = _quant.BLOCK

    @cuda.jit
    def kernel(param, grad, starts, offsets, block_starts, block_offsets, like, c0, a0, c1, a1,
               c2, a2, master, scale, h):
        h = rescaled(h, scale[0])
        tables = (starts, offsets, block_starts, block_offsets)
        s0 = cuda.shared.array(block, np.float32)
        s1 = cuda.shared.array(block, np.float32)
        s2 = cuda.shared.array(block, np.float32)
        peaks = cuda.shared.array(3, np.uint32)
        t, threads = cuda.threadIdx.x, cuda.blockDim.x
        for b in range(cuda.blockIdx.x, count_blocks(param, block_starts), cuda.gridDim.x):
            p, g, lo, k, scale_at = locate(b, param, grad, tables, like)
            if t < 3:
                peaks[t] = 0
            mst = master[lo:]
            for j in range(t, k, threads):
                s0[j] = decode0(c0, a0, lo + j, scale_at)
                s1[j] = decode1(c1, a1, lo + j, scale_at)
                s2[j] = decode2(c2, a2, lo + j, scale_at)
            cuda.syncthreads()
            biggest0 = biggest1 = biggest2 = _quant.NO_MAGNITUDE
            for j in range(t, k, threads):
                apply_arranged(j, p, g, s0, s1, s2, mst, h)
                biggest0 = max(biggest0, _quant.magnitude_bits(s0[j]))
                biggest1 = max(biggest1, _quant.magnitude_bits(s1[j]))
                biggest2 = max(biggest2, _quant.magnitude_bits(s2[j]))
            cuda.atomic.max(peaks, 0, biggest0)
            cuda.atomic.max(peaks, 1, biggest1)
            cuda.atomic.max(peaks, 2, biggest2)
            cuda.syncthreads()
            # (np.float32: a no-op on the GPU; the simulator's Python floats would be float64)
            scale0 = np.float32(_quant.from_bits(peaks[0]))
            scale1 = np.float32(_quant.from_bits(peaks[1]))
            scale2 = np.float32(_quant.from_bits(peaks[2]))
            for j in range(t, k, threads):
                encode0(c0, lo + j, s0[j], scale0)
                encode1(c1, lo + j, s1[j], scale1)
                encode2(c2, lo + j, s2[j], scale2)
            if t == 0:
                if a0.size:
                    a0[scale_at] = scale0
                if a1.size:
                    a1[scale_at] = scale1
                if a2.size:
                    a2[scale_at] = scale2
            cuda.syncthreads()  # the scratch and peaks are reused by the next block
    return kernel


_NO_TABLE = None  # what a one-param launch passes for the table arguments (made on first use)


class BlockwiseLauncher:
    """The launch of one variant on int8 state, called like the CPU's ``BlockwiseKernel``
    calls: ``call(param, grad, codes0, absmax0, ..., [master], scalars)``, one param each;
    ``bind_table`` a bucket of separate params in one launch, as ``Launcher.bind_table``."""

    def __init__(self, name, storage):
        self.__name__, self.storage = name, storage
        self.n_states = _math.KERNELS[name][0]
        wrap = (lambda f: f) if _SIMULATED else None
        codecs = _codecs.PYTHON_CODECS if _SIMULATED else None
        functions = []
        for k in range(3):
            if k < self.n_states:
                quantize, dequantize = _quant.RULES[storage.signs[k]]
                functions += [_device(_decode, f"{name}_decode{k}", dequantize=dequantize),
                              _device(_encode, f"{name}_encode{k}", quantize=quantize)]
            else:
                functions += [_device(_no_decode, "no_decode"), _device(_no_encode, "no_encode")]
        arranged = _math.arranged(name, storage, wrap, codecs)
        rescaled = _RESCALERS[_math.KERNELS[name][1]]
        self.kernel = _blockwise_kernel(arranged, rescaled, _device(_blocks_of_one, "blocks_1"),
                                        _device(_locate_in_one, "locate_1"), *functions)
        self._table_kernel = None  # made on the first bind_table
        self._make_table_kernel = lambda: _blockwise_kernel(
            arranged, rescaled, _device(_blocks_of_table, "blocks_table"),
            _device(_locate_in_table, "locate_table"), *functions)

    def _buffers(self, buffers):
        """The kernel's twelve array arguments after the table ones from a call's ``codes0,
        absmax0, ..., [master], scalars``: the states past the variant's as empty pairs."""
        h = buffers[-1]
        if self.storage.master:
            states, master = buffers[:-2], buffers[-2]
        else:
            states, master = buffers[:-1], _empty(np.float32)
        pad = (_empty(_quant.CODE), _empty(_quant.SCALE)) * (3 - self.n_states)
        return (*states, *pad, master, _scale_of(h), h)

    def bind(self, size):
        if not size:
            return _nothing
        global _NO_TABLE
        if _NO_TABLE is None:
            _NO_TABLE = (*(_empty(np.int64) for _ in range(4)), _empty(np.float32))
        blocks = min(_quant.blocks(size), MAX_BLOCKS)
        launch = _cuda_launch.Bound(self.kernel, blocks, min(THREADS_PER_BLOCK, _quant.BLOCK))

        def call(param, grad, *buffers):
            launch(param, grad, *_NO_TABLE, *self._buffers(buffers))
        return call

    def bind_table(self, size):
        """``launch(None, grads, members, table, codes0, absmax0, ..., [master], scalars)``
        over the bucket's whole state buffers: one launch for its params."""
        if not size:
            return _nothing
        if self._table_kernel is None:
            self._table_kernel = self._make_table_kernel()
        launch = _cuda_launch.Bound(self._table_kernel, min(_quant.blocks(size), MAX_BLOCKS),
                                    min(THREADS_PER_BLOCK, _quant.BLOCK), fixed_types=True)

        def call(_, grads, members, table, *buffers):
            launch(table.params, table.grads_table(grads, members), table.starts, table.offsets,
                   table.block_starts(), table.block_offsets(), table.like,
                   *self._buffers(buffers))
        return call


def _device(function, name, **names):
    """``function`` with ``names`` bound, as a device function (a Python function under the
    simulator, which runs kernels as Python)."""
    bound = _math.bound(function, name, **names)
    return bound if _SIMULATED else _math._rule(bound)


def _empty(dtype):
    return cuda.device_array(0, dtype=dtype)
