"""Stand-ins for the CUDA arrays users bring, backed by host memory.

``TorchLike`` behaves like a torch CUDA tensor as numba_opt meets one: ``dtype`` is no NumPy
dtype (an object printing as ``torch.float32``), ``shape`` a tuple subclass (as ``torch.Size``),
``size`` a method, and ``__cuda_array_interface__`` version 2 without a stream (strides None when
C-contiguous, address 0 when empty, bfloat16 as typestr '<V2'), as torch/_tensor.py builds it.
``CuPyLike`` behaves like a CuPy array: NumPy dtype and shape, interface version 3 with a
``stream`` entry.  Neither has ``__cuda_ndarray__`` or ``__cuda_memory__``, so the library
takes them as foreign arrays; under the CUDA simulator it wraps them as the host memory their
interface describes (``_cuda._simulated_view``), so an update lands in ``host`` in place.
"""
import numpy as np

from numba_opt import _codecs

_TORCH_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
                np.dtype(np.float16): "float16", np.dtype(np.int32): "int32"}
if _codecs.BFLOAT16 is not None:
    _TORCH_NAMES[_codecs.BFLOAT16] = "bfloat16"


class TorchDtype:
    """What ``tensor.dtype`` is: np.dtype(TorchDtype(...)) raises TypeError, as for torch's."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"

    __str__ = __repr__


class Size(tuple):
    """torch.Size: a tuple subclass."""


class TorchLike:
    def __init__(self, host, device_id=0):
        self.host = host  # the memory the "tensor" lives in
        self.device_id = device_id  # what tests' array_device reports for it

    @property
    def dtype(self):
        return TorchDtype(_TORCH_NAMES[self.host.dtype])

    @property
    def shape(self):
        return Size(self.host.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self):
        return self.host.size

    @property
    def __cuda_array_interface__(self):
        host = self.host
        itemsize = host.dtype.itemsize
        strides = None if host.flags.c_contiguous else tuple(host.strides)
        typestr = "<V2" if _TORCH_NAMES[host.dtype] == "bfloat16" else host.dtype.str
        assert all(s % itemsize == 0 for s in host.strides)
        return dict(typestr=typestr, shape=tuple(host.shape), strides=strides,
                    data=(host.__array_interface__["data"][0] if host.size else 0, False),
                    version=2)


class CuPyLike:
    def __init__(self, host, readonly=False):
        self.host, self.readonly = host, readonly

    @property
    def dtype(self):
        return self.host.dtype

    @property
    def shape(self):
        return self.host.shape

    @property
    def size(self):
        return self.host.size

    @property
    def __cuda_array_interface__(self):
        host = self.host
        return dict(typestr=host.dtype.str, shape=host.shape,
                    strides=None if host.flags.c_contiguous else host.strides,
                    data=(host.__array_interface__["data"][0], self.readonly), version=3,
                    stream=1)  # CuPy's legacy default stream


KINDS = {"torch": TorchLike, "cupy": CuPyLike}


def wrap(kind, arrays):
    """Each host array as a stand-in of ``kind`` ('torch' or 'cupy')."""
    return [KINDS[kind](a) for a in arrays]
