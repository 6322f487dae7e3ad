"""What numba_opt reads of a user's array, in one place: dtype, shape, strides, address and
read-only flag.

NumPy arrays and numba's device arrays (real, or the simulator's) are asked directly.  Any other
CUDA array (a torch CUDA tensor, a CuPy array, ...) is read through its
``__cuda_array_interface__`` only: its own attributes do not follow NumPy (torch's ``dtype`` is
``torch.float32``, which ``np.dtype`` refuses, and its ``size`` is a method).  The interface
(versions 2 and 3) gives ``typestr``, ``shape``, ``strides`` (None: C-contiguous) and ``data``
(address, read-only); a bfloat16 array's typestr is only ``'<V2'`` (two bytes), so there the
array's own dtype name says which two-byte type it is.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _codecs


class Described(NamedTuple):
    dtype: np.dtype
    shape: tuple
    strides: tuple | None  # in bytes; None: C-contiguous (the interface's way of saying it)
    pointer: int           # the first element's address (0 for some empty arrays)
    readonly: bool

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize


def is_numba_array(array):
    """numba's own device arrays (``__cuda_ndarray__``; the simulator's have no interface)."""
    return bool(getattr(array, "__cuda_ndarray__", False))


def describe(array, name=None) -> Described:
    """dtype, shape, strides, address and read-only flag of a NumPy array, a numba device
    array, or any ``__cuda_array_interface__`` object; TypeError (naming the array as ``name``)
    if none of those."""
    name = name or type(array).__name__
    if isinstance(array, np.ndarray):
        return Described(array.dtype, array.shape, array.strides,
                         array.__array_interface__["data"][0], not array.flags.writeable)
    if is_numba_array(array):
        interface = getattr(array, "__cuda_array_interface__", None)
        if interface is None:  # a simulated device array wraps a NumPy array
            interface = array._ary.__array_interface__
        return Described(np.dtype(array.dtype), tuple(array.shape), tuple(array.strides),
                         interface["data"][0], False)
    try:
        interface = array.__cuda_array_interface__
    except AttributeError:
        raise TypeError(f"{name} is neither a NumPy array nor a CUDA array") \
            from None
    strides = interface.get("strides")
    return Described(_dtype(interface["typestr"], array, name), tuple(interface["shape"]),
                     None if strides is None else tuple(strides),
                     interface["data"][0], bool(interface["data"][1]))


def _dtype(typestr, array, name):
    try:
        dtype = np.dtype(typestr)
    except TypeError:
        raise TypeError(f"{name}'s __cuda_array_interface__ has typestr "
                        f"{typestr!r}, which is no NumPy type") from None
    # '<V2' is torch's (and numba's) bfloat16: the array's dtype says so by name
    # ('torch.bfloat16', ml_dtypes' 'bfloat16')
    if (dtype.kind == "V" and dtype.itemsize == 2 and _codecs.BFLOAT16 is not None
            and str(getattr(array, "dtype", "")).rpartition(".")[2] == "bfloat16"):
        return _codecs.BFLOAT16
    return dtype


def dtype_of(array) -> np.dtype:
    return describe(array).dtype


def shape_of(array) -> tuple:
    return describe(array).shape


def size_of(array) -> int:
    return describe(array).size


def layout(array):
    """(c_contiguous, f_contiguous, readonly) of any array ``describe`` reads."""
    if isinstance(array, np.ndarray):
        return array.flags.c_contiguous, array.flags.f_contiguous, not array.flags.writeable
    described = describe(array)
    shape, strides = described.shape, described.strides
    if strides is None:
        return True, sum(extent > 1 for extent in shape) <= 1, described.readonly

    def contiguous(dims):
        expected = described.dtype.itemsize
        for extent, stride in dims:
            if extent > 1 and stride != expected:
                return False
            expected *= extent
        return True

    dims = list(zip(shape, strides))
    return contiguous(reversed(dims)), contiguous(dims), described.readonly


def fortran_order(array):
    """Whether a contiguous array's memory order is Fortran's (and not also C's)."""
    c_contiguous, f_contiguous, _ = layout(array)
    return f_contiguous and not c_contiguous
