"""FlatParams: a model's params and grads as views into two contiguous buffers.

    flat = nopt.FlatParams({"W1": W1, "b1": b1, "W2": W2, "b2": b2})   # copies the values in
    opt = nopt.Adam(flat.params)          # or nopt.Adam(flat)
    ...                                   # the model computes with flat.params["W1"] etc. and
    np.matmul(x.T, delta, out=flat.grads["W1"])   # writes its grads into flat.grads
    opt.step(flat.grads)                  # ONE kernel call for the whole model

An optimizer recognises params (and grads) that lie back to back in one buffer and updates them
as a single span; FlatParams is the easy way to get that layout.  Arrays laid out any other way
work too, one kernel call per array.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import _validation as check, dispatch
from ._interface import describe

if TYPE_CHECKING:
    from ._typing import Array


class FlatParams:
    """Copies ``params`` (a list or a dict of arrays of one dtype, NumPy or CUDA) into one
    contiguous buffer ``data`` and exposes views of it shaped like the originals as ``params``
    (same structure).  ``grads`` are zero-filled views of a second buffer ``grad``.  Use the
    views from now on: the original arrays are not updated."""

    def __init__(self, params: Sequence[Array] | Mapping[str, Array]) -> None:
        names = list(params) if isinstance(params, Mapping) else None
        arrays = list(params.values()) if names is not None else list(params)
        labels = [f"params[{n!r}]" for n in names] if names is not None else [
            f"params[{i}]" for i in range(len(arrays))]
        if not arrays:
            raise ValueError("params is empty")
        for array, label in zip(arrays, labels):
            check.check_param(array, label)
        described = [describe(a) for a in arrays]
        dtype = described[0].dtype
        for array, label in zip(described, labels):
            if array.dtype != dtype:
                raise TypeError(f"{label} has dtype {array.dtype}, {labels[0]} has {dtype}; a "
                                "FlatParams buffer holds one dtype (make one per dtype)")
        self.device = dispatch.resolve_device("auto", zip(labels, arrays))
        backend = dispatch.backend(self.device)
        sizes = [a.size for a in described]
        total = sum(sizes)
        self.data = backend.full(total, dtype, 0.0)
        self.grad = backend.full(total, dtype, 0.0)
        data_views, grad_views, start = [], [], 0
        for array, size, shape in zip(arrays, sizes, (a.shape for a in described)):
            data_views.append(self.data[start:start + size].reshape(shape))
            grad_views.append(self.grad[start:start + size].reshape(shape))
            backend.copy_into(data_views[-1], array)
            start += size
        if names is None:
            self.params, self.grads = data_views, grad_views
        else:
            self.params = dict(zip(names, data_views))
            self.grads = dict(zip(names, grad_views))
        self._backend = backend

    def zero_grad(self):
        """Set every grad to zero (for models that accumulate into the grads)."""
        self._backend.fill(self.grad, 0.0)

    def __len__(self):
        return len(self.params)

    def __repr__(self):
        return (f"FlatParams({len(self)} arrays, {self.data.size} elements of "
                f"{self.data.dtype}, device={self.device!r})")
