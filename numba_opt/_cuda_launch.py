"""How the CUDA backend launches: on which stream, with which clip scale, and at what cost.

A step's launches, copies and reductions all go on one stream, the step's ``LaunchContext``'s
(see ``Optimizer(stream=...)``).  Which stream, when none is given: the producer's, as the
array library says it -- torch's ``torch.cuda.current_stream()`` for torch tensors (their
interface, version 2, carries no stream), the interface's ``stream`` entry for version-3
arrays (CuPy's current stream), else the default stream.  Arrays are wrapped without a host
sync (``sync=False``): ordering on the stream is the rule, not waiting on the host.

Every kernel configuration is made by ``configure``: it silences numba's
``NumbaPerformanceWarning`` (grids under 128 blocks, known and harmless for small buckets: the
update is one grid-stride launch whatever the size) there and only there, one thread at a
time (the warnings filters are process-wide).  Host syncs of a step
go through ``read_back``.  Tests spy on both.
"""
import contextlib
import threading
import warnings

import numpy as np
from numba import config, cuda

_SIMULATED = bool(config.ENABLE_CUDASIM)
_active = threading.local()  # .context: the LaunchContext of the step running in this thread


def _performance_warnings():
    """numba-cuda's NumbaPerformanceWarning (the one its launches raise) and numba's own, which
    older numba-cuda versions raised."""
    from numba.core.errors import NumbaPerformanceWarning as numba_warning
    try:
        from numba.cuda.core.errors import NumbaPerformanceWarning as cuda_warning
    except ImportError:
        return numba_warning, (numba_warning,)
    return cuda_warning, (cuda_warning, numba_warning)


NumbaPerformanceWarning, _PERFORMANCE_WARNINGS = _performance_warnings()


# ``warnings.catch_warnings`` swaps the process-wide filter list in and out: two threads inside
# it at once can restore each other's list and leave the "ignore" behind for good.  Our own
# configurations take turns; they are rare (once per kernel, grid and stream), so the lock costs
# nothing per step.
_CONFIGURE_LOCK = threading.Lock()


def configure(kernel, blocks, threads):
    """``kernel[blocks, threads, stream]`` on the active stream, without numba's low-occupancy
    warning (a small bucket is a small grid on purpose)."""
    stream = current_stream()
    with _CONFIGURE_LOCK, warnings.catch_warnings():
        for category in _PERFORMANCE_WARNINGS:
            warnings.simplefilter("ignore", category)
        return kernel[blocks, threads, stream]


class Bound:
    """A kernel launched over a fixed grid, configured again only when the stream changes.
    With ``fixed_types`` (each argument has the same dtype and dimension at every call: a
    bucket's call site; numba's arrays of any layout or writeability share one data model) a
    GPU launches the compiled kernel directly from the second call on, skipping numba's typing
    of every argument (the scalars namedtuple has up to ~30 fields)."""

    def __init__(self, kernel, blocks, threads, fixed_types=False):
        self.kernel, self.blocks, self.threads = kernel, blocks, threads
        self.fixed_types = fixed_types and not _SIMULATED
        # (stream, its launch configuration, the compiled kernel or None), replaced as a whole:
        # threads sharing a launcher never pair one stream with another's configuration
        self._state = (None, None, None)

    def __call__(self, *args):
        stream = current_stream()
        configured, launch, compiled = self._state
        # (the simulator's kernels keep one configuration each: set it every time)
        if launch is None or stream is not configured or _SIMULATED:
            launch, compiled = configure(self.kernel, self.blocks, self.threads), None
            self._state = (stream, launch, None)
        if compiled is _SECOND_CALL:  # a call site used again: find its compiled kernel once
            compiled = self.kernel.compile(tuple(self.kernel.typeof_pyval(a) for a in args))
            self._state = (stream, launch, compiled)
        if compiled is not None:
            compiled.launch(args, launch.griddim, launch.blockdim, launch.stream,
                            launch.sharedmem)
            return
        launch(*args)
        if self.fixed_types:
            self._state = (stream, launch, _SECOND_CALL)


_SECOND_CALL = object()


_LAUNCHERS = {}


def launcher(kernel, blocks, threads):
    """The Bound launch of ``kernel`` over this grid, made once (our own small kernels: fills,
    copies, the norm's passes)."""
    key = (kernel, blocks, threads)
    bound = _LAUNCHERS.get(key)
    if bound is None:
        bound = _LAUNCHERS.setdefault(key, Bound(kernel, blocks, threads))
    return bound


def read_back(device_array, stream=None):
    """The host copy of a (small) device array, after the work queued on ``stream`` (the
    active one when None): a host sync, the only kind a step makes."""
    stream = current_stream() if stream is None else stream
    host = device_array.copy_to_host(stream=stream)
    if not isinstance(stream, (int, _SimulatedStream)):
        stream.synchronize()  # (a copy into pageable memory has finished already: no wait)
    return host


# ----------------------------------------------------------------------------------- streams
class _SimulatedStream:
    """An external stream under the simulator, which runs everything at once and refuses
    external streams: it keeps the handle, so tests see which stream was chosen."""

    def __init__(self, handle):
        self.handle = handle

    def __repr__(self):
        return f"<simulated external stream {self.handle:#x}>"


_EXTERNAL = {}  # handle -> numba stream object, made once (a step compares streams by identity)


def _external(handle):
    stream = _EXTERNAL.get(handle)
    if stream is None:
        if _SIMULATED:
            stream = 0 if handle in (0, 1) else _SimulatedStream(handle)
        elif handle in (0, 1):  # 0: the default stream; 1: CAI's legacy default stream
            stream = cuda.default_stream()
        elif handle == 2:
            stream = cuda.per_thread_default_stream()
        else:
            stream = cuda.external_stream(handle)
        stream = _EXTERNAL.setdefault(handle, stream)
    return stream


def as_stream(stream):
    """A numba stream from what ``stream=`` accepts: a numba stream, a torch.cuda.Stream, a
    CuPy stream, or a raw ``cudaStream_t`` handle (an int; 0 is the default stream)."""
    if isinstance(stream, bool):
        raise TypeError(f"stream must be a CUDA stream or a stream handle, got {stream!r}")
    if isinstance(stream, (int, np.integer)):
        return _external(int(stream))
    for attribute in ("cuda_stream", "ptr"):  # torch, CuPy
        handle = getattr(stream, attribute, None)
        if isinstance(handle, (int, np.integer)) and not isinstance(handle, bool):
            return _external(int(handle))
    # numba's streams (the simulator's have no handle)
    if hasattr(stream, "handle") or type(stream).__module__.split(".")[0] == "numba":
        return stream
    raise TypeError("stream must be a numba, torch or CuPy CUDA stream or a stream handle "
                    f"(int), got {type(stream).__name__}")


def producer_stream(array):
    """The stream the library of ``array`` says work on it is ordered on now."""
    if type(array).__module__.split(".")[0] == "torch":  # import torch only for its tensors
        import torch
        return _external(torch.cuda.current_stream(array.device).cuda_stream)
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is not None and interface.get("version", 0) >= 3 \
            and interface.get("stream") is not None:
        return _external(int(interface["stream"]))
    return _external(0)


def current_stream():
    context = getattr(_active, "context", None)
    return 0 if context is None else context.stream


class LaunchContext:
    """One optimizer's launch state: the stream its steps run on (fixed by ``stream=``, or the
    producer's, looked up each step) and the device clip scale its update kernels read."""

    def __init__(self, stream=None):
        self.explicit = None if stream is None else as_stream(stream)
        self.stream = self.explicit if self.explicit is not None else 0
        self._scales = {}  # compute dtype -> 1-element device array the kernels multiply by
        self.scaled = False  # whether the scales hold a clip factor (not 1) now
        self.norm = None     # the _cuda_norm.GradNorm, made on the first norm

    def scale(self, kind):
        """The device clip scale of compute dtype ``kind`` (a dtype or scalar type)."""
        scale = self._scales.get(kind)
        if scale is None:
            dtype = np.dtype(kind)
            if dtype not in self._scales:
                self._scales[dtype] = cuda.to_device(np.ones(1, dtype))
            scale = self._scales[kind] = self._scales[dtype]
        return scale

    def unscale(self):
        """Set the clip scales back to 1 after a clipped step (two tiny launches, no sync)."""
        from . import _cuda
        if self.scaled:
            for dtype in (np.float32, np.float64):
                _cuda.fill(self.scale(dtype), 1.0)
            self.scaled = False

    def grad_norm(self, buckets, seen, max_norm):
        """The DeviceNorm of the grads ``seen`` of ``buckets``, the clip scale for
        ``max_norm`` (None: 1) written on the device (see _cuda_norm)."""
        from . import _cuda_norm
        if self.norm is None or self.norm.buckets is not buckets:
            self.norm = _cuda_norm.GradNorm(buckets, self)
        return self.norm.compute(seen, max_norm)

    @contextlib.contextmanager
    def active(self, stream, first_array):
        """Make this context (on ``stream``, or the one of the step, see the module doc) the one
        launches in this thread use."""
        chosen = as_stream(stream) if stream is not None else (
            self.explicit if self.explicit is not None else producer_stream(first_array))
        if chosen is not self.stream:
            self._follow(chosen)
        previous = getattr(_active, "context", None)
        _active.context = self
        try:
            yield self
        finally:
            _active.context = previous

    def _follow(self, stream):
        """Switch to ``stream``, ordered after all work of the last one: the tables and
        buffers the last step's kernels may still read are rewritten on the new stream."""
        if not _SIMULATED:
            done = cuda.event(timing=False)
            done.record(stream=self.stream)
            done.wait(stream=stream)
        self.stream = stream


def active_context():
    """The LaunchContext of the step running in this thread, or a default one."""
    context = getattr(_active, "context", None)
    if context is None:
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = LaunchContext()
        context = _DEFAULT
    return context


_DEFAULT = None
