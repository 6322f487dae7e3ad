"""Where the arrays live decides which backend runs the kernels.

``device="auto"`` follows the arrays: NumPy arrays -> the CPU kernels in ``_cpu``; objects with
``__cuda_array_interface__`` (numba device arrays, CuPy, torch CUDA tensors) -> the CUDA kernels in
``_cuda``.  Nothing is ever copied between host and device: a mismatch is a TypeError naming the
array.  Backends are modules with the same kernel names, imported on first use, so importing
numba_opt never initialises CUDA.
"""
import importlib

import numpy as np

DEVICES = ("auto", "cpu", "cuda")
_BACKEND_MODULES = {"cpu": "numba_opt._cpu", "cuda": "numba_opt._cuda"}
# Adafactor's loops and reductions (not elementwise), per backend module
_FACTORED_MODULES = {"numba_opt._cpu": "numba_opt._factored",
                     "numba_opt._cuda": "numba_opt._factored_cuda"}


def location(array):
    """'cpu', 'cuda', or None for something that is neither kind of array."""
    if isinstance(array, np.ndarray):
        return "cpu"
    if is_cuda_array(array):
        return "cuda"
    return None


def is_cuda_array(obj):
    """Any __cuda_array_interface__ object, or a device array of numba's CUDA simulator (which
    has no interface; its marker is ``__cuda_ndarray__``).  Needs no import of numba.cuda."""
    return hasattr(obj, "__cuda_array_interface__") or hasattr(obj, "__cuda_ndarray__")


def resolve_device(device, named_arrays):
    """The device every array in ``named_arrays`` (pairs of name, array) lives on, checked."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    named_arrays = list(named_arrays)
    decided_by = f"device={device!r}"
    for name, array in named_arrays:
        where = location(array)
        if where is None:
            raise TypeError(f"{name} must be a NumPy array or a CUDA array, "
                            f"got {type(array).__name__}")
        if device == "auto":
            device, decided_by = where, f"set by {name}"
        elif where != device:
            raise TypeError(f"{name} lives on {where} but the optimizer runs on {device} "
                            f"({decided_by}); numba_opt never copies between host and device")
    if device == "cuda":  # and on the current GPU (the backend asks the driver)
        backend(device).check_devices(named_arrays)
    return "cpu" if device == "auto" else device


def backend(device):
    """The kernel module for a resolved device ('cpu' or 'cuda'), ready to run."""
    try:
        module = importlib.import_module(_BACKEND_MODULES[device])
    except ImportError as exc:
        raise RuntimeError(
            "device='cuda' needs the CUDA backend: pip install 'numba-opt[cuda]' (numba-cuda) "
            f"and an NVIDIA driver ({exc})") from exc
    if device == "cuda":
        module.check_available()
    return module


def factored(backend_module):
    """Adafactor's kernels for a backend module (``backend``'s answer): same interface on both."""
    return importlib.import_module(_FACTORED_MODULES[backend_module.__name__])
