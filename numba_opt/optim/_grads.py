"""Each step's grads: checked against their params, then turned into what the kernels take.

Training loops make new grad arrays every step (``x.T @ err``), so this runs every step and its
cost per array matters as much as the kernels'.  On the CPU it is a few attribute comparisons per
grad (shape, dtype and strides equal to the param's mean "contiguous in the same memory order"),
and one compiled call per 16 grads that reads their addresses into the bucket tables and checks
that no grad shares memory with another param.  Anything that fails the quick comparisons goes
through the full checks, which name what is wrong.  Nothing is modified before all grads pass.
"""
import bisect

import numpy as np

from .. import _validation as check, dispatch
from .._codecs import bits, is_low_precision

_ndarray = np.ndarray


class Intake:
    """Validates grads for one optimizer's params and prepares them per bucket."""

    def __init__(self, params, labels, buckets, backend, device):
        self.params, self.labels, self.buckets = params, labels, buckets
        self.backend, self.device = backend, device
        # the host path below reads NumPy grads' addresses; the CUDA tables take the flat grads
        self.multi_tensor = getattr(backend, "MULTI_TENSOR", False) and device == "cpu"
        self.device_tables = getattr(backend, "MULTI_TENSOR", False) and device != "cpu"
        self.param_addresses = None
        if self.multi_tensor:
            # stand-ins for absent or unusual grads in the address pass (made now, while the
            # params are writeable: one compiled signature)
            self.param_flats = [bits(p.ravel("K")) for p in params]
            # what a grad must match, and whether the kernels take it as bits (bfloat16, float16)
            self.layouts = [(p.shape, p.dtype, p.strides, is_low_precision(p.dtype))
                            for p in params]
            dtypes = [p.dtype for p in params]
            self.dtype_groups = [np.array([i for i, d in enumerate(dtypes) if d == dtype],
                                          dtype=np.int64) for dtype in dict.fromkeys(dtypes)]
            self.nbytes = np.array([p.nbytes for p in params], dtype=np.int64)
            self.spans = backend.param_spans(params)
            self.param_addresses = backend.addresses(params)
        # NumPy params, whose writeable flag may be cleared after the optimizer was made
        self.host_params = [(p, label) for p, label in zip(params, labels)
                            if isinstance(p, _ndarray)]
        self.every = list(range(len(params)))  # a bucket that holds every param
        self._param_spans = self._param_starts = None  # the general path's aliasing check

    def adopt(self, grads):
        """(grads as a tuple, per bucket (flat grads, presence, grad span), grad addresses, or
        on the GPU every flat grad, or None): everything ``Optimizer.step`` needs, after every
        check passed."""
        if self.multi_tensor:
            flats, addresses, absent = self._host_flats(grads)
        else:
            self.check_params_writeable()
            self._check_each(grads)
            self._reject_grads_in_params(grads)
            flat = self.backend.flat
            flats = [None if g is None else bits(flat(g)) for g in grads]
            addresses = flats if self.device_tables else None
            absent = [k for k, g in enumerate(grads) if g is None]
        per_bucket = []
        for bucket in self.buckets:
            mine = flats if bucket.indices == self.every else [flats[i] for i in bucket.indices]
            count = len(mine) - sum(g is None for g in mine) if absent else len(mine)
            presence = "all" if count == len(mine) else "some" if count else "none"
            joined = presence == "all" and bucket.param_span is not None
            grad_span = self.backend.span([grads[i] for i in bucket.indices]) if joined else None
            per_bucket.append((mine, presence, None if grad_span is None else bits(grad_span)))
        return tuple(grads), per_bucket, addresses

    def check_params_writeable(self):
        """Refuse a param made read-only since the optimizer was built (the host path reads
        the flag in its loop over the grads instead: about 50 ns a param)."""
        for param, label in self.host_params:
            if not param.flags.writeable:
                raise ValueError(f"{label} is read-only (it was made so after the optimizer "
                                 "was built); the update is in place and needs a writeable "
                                 "array")

    # ------------------------------------------------------------------------ the host path
    def _host_flats(self, grads):
        """Flat views of NumPy grads, their addresses, and which grads are None; one full check
        per unusual grad."""
        flats, unusual, absent = [], [], []
        append = flats.append
        for k, (grad, param, stand_in, (shape, dtype, strides, coded)) in enumerate(
                zip(grads, self.params, self.param_flats, self.layouts)):
            if not param.flags.writeable:  # made read-only since the optimizer was built
                self.check_params_writeable()
            if (grad.__class__ is _ndarray and grad.dtype is dtype and grad.shape == shape
                    and grad.strides == strides and grad.flags.writeable):
                # contiguous like the param: a view, no copy
                append(bits(grad.ravel("K")) if coded else grad.ravel("K"))
            elif grad is None:
                append(stand_in)  # its own param passes the aliasing check
                absent.append(k)
            else:
                self._check_one(grad, self.params[k], self.labels[k])
                append(stand_in)
                unusual.append(k)
        addresses = np.empty(len(flats), dtype=np.int64)
        clash = self.backend.grad_addresses(flats, addresses, self.nbytes, self.spans,
                                            self.dtype_groups)
        if clash is not None:
            self._shares_memory(*clash)
        for k in unusual:  # read-only grads and ndarray subclasses (np.memmap)
            view = bits(_ndarray.view(grads[k], _ndarray).ravel("K"))
            flats[k] = view
            start, end = check.data_span(view)
            addresses[k] = start
            self._reject_one(k, start, end)
        for k in absent:
            flats[k] = None
        return flats, addresses, absent

    # ----------------------------------------------------------------------- the full checks
    def _check_one(self, grad, param, label):
        name = "grad for " + label
        check.check_like(grad, param, name, label)
        where = dispatch.location(grad)
        if where != self.device:
            raise TypeError(f"{name} lives on {where} but {label} lives on {self.device}; "
                            "numba_opt never copies between host and device")

    def _check_each(self, grads):
        for grad, param, label in zip(grads, self.params, self.labels):
            if grad is not None:
                self._check_one(grad, param, label)

    def _shares_memory(self, k, i):
        raise ValueError(f"grad for {self.labels[k]} shares memory with {self.labels[i]}; pass "
                         "grads in their own arrays")

    def _reject_grads_in_params(self, grads):
        """A grad must not share memory with a param (other than being exactly its own): the
        kernels would read values they have already updated, in an order that varies."""
        for k, grad in enumerate(grads):
            if grad is not None:
                self._reject_one(k, *check.data_span(grad))

    def _reject_one(self, k, start, end):
        if start == end:  # an empty grad owns no bytes, wherever its data pointer lies
            return
        if self._param_spans is None:
            # (start, end, index) of every non-empty param by start; params never overlap, so
            # their ends increase too
            spans = ((*check.data_span(p), i) for i, p in enumerate(self.params))
            self._param_spans = sorted(span for span in spans if span[1] > span[0])
            self._param_starts = [span[0] for span in self._param_spans]
        # the params that start before this grad ends, back while they end after it starts
        j = bisect.bisect_left(self._param_starts, end) - 1
        while j >= 0 and self._param_spans[j][1] > start:
            p_start, p_end, i = self._param_spans[j]
            if not (i == k and (p_start, p_end) == (start, end)):
                self._shares_memory(k, i)
            j -= 1
