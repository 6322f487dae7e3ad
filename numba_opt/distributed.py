"""Data-parallel training over MPI, with the optimizer state sharded over the ranks (ZeRO-1).

    from mpi4py import MPI
    import numba_opt as nopt
    from numba_opt import distributed as dist

    flat = nopt.FlatParams(params)
    dist.broadcast_params(flat, MPI.COMM_WORLD, root=0)   # every rank starts from rank 0's values
    opt = dist.ZeroRedundancyOptimizer(flat, optimizer_class=nopt.Adam, lr=1e-3)
    ...                               # each rank: the grads of its own batch into flat.grads
    opt.step(flat.grads)              # mean over ranks, this rank's shard stepped, params gathered

or, keeping a plain optimizer: ``dist.average_gradients(flat, comm)`` then ``opt.step(...)``.

This module is the only place numba_opt imports MPI; it sits on top of the optimizers, which
know nothing of it.  Launch with ``mpiexec -n N python train.py``.

How the state is sharded.  The params of one dtype, in param order (group after group), form a
virtual vector of S elements; rank r of N owns elements [r*S//N, (r+1)*S//N) of it, whatever the
param boundaries (a param may straddle ranks), so each rank holds S/N elements of state, give or
take one.  torch's ZeroRedundancyOptimizer gives whole params to ranks instead (uneven when a few
params are big); DeepSpeed's ZeRO stage 1/2 cuts flattened groups into element ranges like this,
padded to equal sizes for NCCL.  MPI's Reduce_scatter and Allgatherv take a count per rank, so
nothing is padded here.  Each rank steps a plain ``optimizer_class`` (``local_optimizer``) over
1-D views of its slices of the params, in groups mirroring yours.

One step: one small Allreduce agrees that every rank's grads passed their checks and that all
ranks step with the same options and hyper-parameters (otherwise every rank raises, instead of
some hanging in the next collective); per dtype, one Reduce_scatter sums the grads into this
rank's shard (straight from the grads when they lie back to back, as a FlatParams's do; packed
into a scratch buffer otherwise); the shard is scaled by 1/N (times the clipping factor: the
global norm is one float64 Allreduce of the ranks' partial sums of squares); the local optimizer
steps it in place; per dtype, one Allgatherv brings every rank's updated slices (in place in a
FlatParams's buffer).

CUDA arrays are handed to mpi4py as they are (through ``__cuda_array_interface__``), never staged
through the host: that needs an MPI library built CUDA-aware (the ``mpich`` wheel is not).  The
device is synchronized before each MPI call that reads device memory.
"""
import bisect
import math
import operator
import threading
import zlib
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

try:
    from mpi4py import MPI
except (ImportError, RuntimeError) as exc:  # RuntimeError: mpi4py found no MPI library
    raise ImportError(
        "numba_opt.distributed needs mpi4py and an MPI library: pip install 'numba-opt[mpi]' "
        "(mpi4py and the mpich wheel), or mpi4py built against your cluster's MPI "
        f"({type(exc).__name__}: {exc})") from exc

from . import _codecs, _fork, _quant, _validation as check, dispatch
from ._interface import dtype_of, fortran_order, shape_of, size_of
from .flat import FlatParams
from .optim._groups import _normalise_params, _reject_shared_memory
from .optim._state import checked_entry
from .optim.base import (ABSMAX, SEED, STATE_DICT_FORMAT, Optimizer, _check_clipping, _clip_scale,
                         checked_header, grad_list)

__all__ = ["broadcast_params", "average_gradients", "ZeroRedundancyOptimizer"]

_ERROR_TYPES = {"TypeError": TypeError, "ValueError": ValueError}


# ------------------------------------------------------------------------------------- helpers
def _communicator(comm):
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError("comm must be an mpi4py intracommunicator (MPI.COMM_WORLD or one split "
                        f"from it), got {type(comm).__name__}")
    return comm


def _buffer(array):
    """What mpi4py is handed: the array itself (NumPy, or a CUDA array through its
    ``__cuda_array_interface__``); numba's CUDA simulator's fake device arrays wrap a NumPy
    array, which is what MPI reads then."""
    if hasattr(array, "__cuda_ndarray__") and not hasattr(array, "__cuda_array_interface__"):
        return array._ary
    return array


def _synchronize(device):
    """Kernels and copies on the GPU are asynchronous: finish them before MPI reads device
    memory (every stream of the context: grads may come from CuPy or torch streams)."""
    if device == "cuda":
        from numba import cuda
        cuda.synchronize()


def _scratch(device, backend, size, dtype):
    """A 1-D buffer whose contents are about to be overwritten."""
    return np.empty(size, dtype) if device == "cpu" else backend.full(size, dtype, 0.0)


_fortran = fortran_order


def _describe(array):
    return (f"shape {shape_of(array)}, {dtype_of(array)}, "
            f"{'F' if _fortran(array) else 'C'} order, on {dispatch.location(array)}")


def _labels(names, count, prefix="params"):
    return ([f"{prefix}[{n!r}]" for n in names] if names is not None
            else [f"{prefix}[{i}]" for i in range(count)])


def _checked_params(params):
    """(groups, arrays, labels, names) of ``params`` as the optimizers take them, each array
    checked as a param, none sharing memory (this rank's checks, before any collective)."""
    groups, names = _normalise_params(params)
    arrays = [p for group in groups for p in group["params"]]
    labels = _labels(names, len(arrays))
    for array, label in zip(arrays, labels):
        check.check_param(array, label)
    _reject_shared_memory(arrays, labels)
    return groups, arrays, labels, names


def _agree(comm, local):
    """``local()`` on every rank; if it raised anywhere, every rank raises (the failing ranks
    their own error, the others one of its type naming the rank), so no rank goes on to a
    collective the others never reach.  One allgather."""
    error = None
    try:
        result = local()
    except Exception as exc:  # any error: the other ranks must not be left waiting
        error, result = exc, None
    reports = comm.allgather(None if error is None else (type(error).__name__, str(error)))
    _raise_reported(error, reports)
    return result


def _raise_reported(error, reports):
    if error is not None:
        raise error
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, (kind, message) = failed[0]
        others = f" (ranks {[r for r, _ in failed]} failed)" if len(failed) > 1 else ""
        raise _ERROR_TYPES.get(kind, RuntimeError)(f"on rank {rank}: {kind}: {message}"
                                                   f"{others}")


def _same_on_every_rank(comm, items, what):
    """``items``: (description, value) pairs, counts first.  Every rank raises a ValueError
    naming the first item that differs from rank 0's, and the ranks where it does."""
    everyone = comm.allgather(items)
    for k, (name, value) in enumerate(everyone[0]):
        differ = [rank for rank, theirs in enumerate(everyone) if theirs[k][1] != value]
        if differ:
            raise ValueError(f"{what} must be the same on every rank: {name} is {value} on rank "
                             f"0 but {everyone[differ[0]][k][1]} on rank"
                             f"{'s' if len(differ) > 1 else ''} "
                             f"{', '.join(map(str, differ))}")


def _arrays_items(arrays, labels, names):
    items = [("the number of arrays", len(arrays)), ("the names", names)]
    items += [(label, _describe(array)) for array, label in zip(arrays, labels)]
    return items


# One param's part of a rank's shard: elements [start, stop) of the flat param, at ``offset`` in
# the shard of its dtype's vector.
_Piece = namedtuple("_Piece", "index start stop offset vector")


class _Vector:
    """The arrays of one dtype laid end to end, in order: a virtual vector (one real buffer only
    where the arrays lie back to back, as a FlatParams's do), cut into one element range per
    rank."""

    def __init__(self, dtype, indices, arrays, size, rank, align=1):
        self.dtype = dtype
        self.indices = indices
        self.sizes = [size_of(arrays[i]) for i in indices]
        self.starts = list(np.cumsum([0] + self.sizes[:-1]).tolist())
        self.total = sum(self.sizes)
        bounds = [self._aligned(r * self.total // size, align) for r in range(size + 1)]
        bounds = [max(bounds[:r + 1]) for r in range(size + 1)]  # (snapping keeps them sorted)
        self.counts = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        self.displs = bounds[:-1]
        self.lo, self.hi = bounds[rank], bounds[rank + 1]
        self.bounds = bounds

    def _aligned(self, bound, align):
        """``bound`` moved to the nearest multiple of ``align`` elements from the start of the
        array it falls in (or that array's end): int8 state's blocks never straddle ranks."""
        if align == 1:
            return bound
        k = bisect.bisect_right(self.starts, bound) - 1
        if k < 0 or bound >= self.starts[k] + self.sizes[k]:
            return bound  # between arrays, or the end
        start, n = self.starts[k], self.sizes[k]
        return start + min(round((bound - start) / align) * align, n)

    def owner(self, k):
        """The rank holding the first element of the vector's k-th array (the rank its position
        falls in, for an empty array)."""
        start = self.starts[k]
        return next((r for r, hi in enumerate(self.bounds[1:]) if start < hi),
                    len(self.bounds) - 2)

    def pieces_of(self, rank):
        """The _Piece of each array this rank holds a part of (an empty array goes to its
        ``owner``)."""
        lo, hi = self.bounds[rank], self.bounds[rank + 1]
        pieces = []
        for k, (i, start, n) in enumerate(zip(self.indices, self.starts, self.sizes)):
            first, last = max(lo, start), min(hi, start + n)
            if first < last or (n == 0 and self.owner(k) == rank):
                pieces.append(_Piece(i, first - start, max(first, last) - start, first - lo,
                                     self))
        return pieces


def _vectors(arrays, size, rank, align=1):
    dtypes = dict.fromkeys(dtype_of(a) for a in arrays)
    return [_Vector(dtype, [i for i, a in enumerate(arrays) if dtype_of(a) == dtype],
                    arrays, size, rank, align) for dtype in dtypes]


def _pack(backend, buffer, vector, flats):
    for i, start, n in zip(vector.indices, vector.starts, vector.sizes):
        backend.copy_into(buffer[start:start + n], flats[i])


def _unpack(backend, buffer, vector, flats):
    for i, start, n in zip(vector.indices, vector.starts, vector.sizes):
        backend.copy_into(flats[i], buffer[start:start + n])


# ----------------------------------------------------------------- broadcast and plain averaging
def broadcast_params(params, comm=None, root=0):
    """Overwrite every rank's params with rank ``root``'s, in place (collective): call it once
    before training so all ranks start from the same values.  ``params``: a FlatParams (one
    Bcast of its buffer), or what the optimizers take (a list, a dict, groups): one Bcast per
    dtype, straight from the arrays when they lie back to back, else packed in a buffer.  Every
    rank raises a ValueError (no hang) if the ranks' params differ in number, shape, dtype or
    memory order.  Returns ``params``."""
    comm = _communicator(comm)
    check.count("root", root)
    if root >= comm.Get_size():
        raise ValueError(f"root is {root}, but the communicator has {comm.Get_size()} ranks")

    def local():
        groups, arrays, labels, names = _checked_params(params)
        return arrays, labels, names, dispatch.resolve_device("auto", zip(labels, arrays))

    arrays, labels, names, device = _agree(comm, local)
    _same_on_every_rank(comm, [("root", root)] + _arrays_items(arrays, labels, names),
                        "broadcast_params's root and params")
    backend = dispatch.backend(device)
    flats = [backend.flat(a) for a in arrays]
    is_root = comm.Get_rank() == root
    for vector in _vectors(arrays, 1, 0):
        span = backend.span([arrays[i] for i in vector.indices])
        buffer = span
        if span is None:
            buffer = _scratch(device, backend, vector.total, vector.dtype)
            if is_root:
                _pack(backend, buffer, vector, flats)
        _synchronize(device)
        comm.Bcast(_buffer(buffer), root=root)
        if span is None and not is_root:
            _unpack(backend, buffer, vector, flats)
    return params


def average_gradients(grads, comm=None):
    """Replace ``grads`` by their mean over the ranks, in place (collective), for plain data
    parallel training with a normal optimizer.  ``grads``: a FlatParams (its ``grad`` buffer:
    one Allreduce), one array, or a list or dict of arrays (one Allreduce per dtype, straight on
    the arrays when they lie back to back, else through a buffer).  Arrays must be float32 or
    float64, contiguous, writeable and distinct; every rank must pass the same shapes and dtypes
    (not checked across ranks: that would cost a second collective per call).  Returns
    ``grads``."""
    comm = _communicator(comm)
    if isinstance(grads, FlatParams):
        arrays, labels, names = [grads.grad], ["FlatParams.grad"], None
    elif check.is_array(grads):
        arrays, labels, names = [grads], ["grads"], None
    elif isinstance(grads, Mapping):
        names = list(grads)
        arrays, labels = list(grads.values()), _labels(names, len(grads), "grads")
    elif isinstance(grads, (list, tuple)):
        arrays, names = list(grads), None
        labels = _labels(None, len(arrays), "grads")
    else:
        raise TypeError("grads must be a FlatParams, an array, or a list or dict of arrays, got "
                        f"{type(grads).__name__}")
    if not arrays:
        raise ValueError("grads is empty")
    for array, label in zip(arrays, labels):
        if array is None:
            raise ValueError(f"{label} is None; every rank must pass every grad (use zeros)")
        check.check_param(array, label)
    _reject_shared_memory(arrays, labels)
    device = dispatch.resolve_device("auto", zip(labels, arrays))
    size = comm.Get_size()
    if size == 1:
        return grads
    backend = dispatch.backend(device)
    flats = [backend.flat(a) for a in arrays]
    for vector in _vectors(arrays, 1, 0):
        span = backend.span([arrays[i] for i in vector.indices])
        buffer = span
        if span is None:
            buffer = _scratch(device, backend, vector.total, vector.dtype)
            _pack(backend, buffer, vector, flats)
        _synchronize(device)
        comm.Allreduce(MPI.IN_PLACE, _buffer(buffer), op=MPI.SUM)
        backend.scale(buffer, 1.0 / size)
        if span is None:
            _unpack(backend, buffer, vector, flats)
    return grads


# ---------------------------------------------------------------------------- the ZeRO optimizer
def _snapshot(group):
    """A group's hyper-parameters as comparable values (lists as tuples: an in-place edit
    counts as a change)."""
    return tuple((k, tuple(v) if isinstance(v, list) else v)
                 for k, v in group.items() if k != "params")


class ZeroRedundancyOptimizer:
    """Data-parallel ``optimizer_class`` whose state is sharded over the ranks of ``comm``
    (``None``: COMM_WORLD): each rank keeps the state of about 1/N of the elements (see the
    module docstring).  ``params`` and ``defaults`` are what ``optimizer_class`` takes (a list,
    a dict, groups with their own hyper-parameters, a FlatParams; any numba_opt optimizer).
    Construction is collective; every rank raises a ValueError if the ranks' params differ in
    number, shape, dtype or memory order, or their hyper-parameters differ.  Call
    ``broadcast_params`` first so all ranks start from the same values.

    ``step(grads, ...)`` takes each rank's own grads and steps every rank's params as
    ``optimizer_class`` would with the mean of the ranks' grads (the options of
    ``Optimizer.step``, with the norm and the non-finite test on the mean grads, agreed by every
    rank).  ``param_groups`` are editable between steps, as a plain optimizer's (schedulers
    edit them).  ``state_dict()`` (collective) returns the full state, exactly what the plain
    optimizer would hold, on every rank; ``load_state_dict`` (collective) takes such a full
    state_dict, from any number of ranks or a plain optimizer."""

    def __init__(self, params, optimizer_class, comm=None, **defaults):
        self.comm = _communicator(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        _agree(self.comm, lambda: self._setup(params, optimizer_class, defaults))
        _same_on_every_rank(self.comm, self._layout_items(),
                            "ZeroRedundancyOptimizer's params and hyper-parameters")
        self._shard()
        self.step_count = 0
        self._scheduler_initial_lrs = None  # as Optimizer's (set by the first lr scheduler)
        self._remember_groups()
        self._options = self._options_code = None  # the last step's options and their CRC
        self._seen = None  # the last step's grads and their spans, checked
        # the step's agreement: failed, the groups' and the options' CRC, each also negated
        self._flags = np.zeros(5, np.int64)
        self._norm = np.zeros(1)
        self._lock = threading.RLock()
        _fork.track(self)

    @property
    def world_size(self):
        return self.size

    @property
    def params(self):
        """The full params, in order (every rank holds all of them)."""
        return list(self._params)

    # --------------------------------------------------------------------------- construction
    def _setup(self, params, optimizer_class, defaults):
        """The local checks and the unsharded view, as a plain optimizer's constructor."""
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError("optimizer_class must be a numba_opt optimizer class (nopt.Adam, "
                            f"...), got {optimizer_class!r}")
        if not optimizer_class.elementwise:
            raise TypeError(f"ZeroRedundancyOptimizer shards the state by element ranges, but "
                            f"{optimizer_class.__name__}'s update of an element reads its whole "
                            "row, column or matrix; step it unsharded on every rank instead, "
                            "with average_gradients")
        groups, arrays, labels, names = _checked_params(params)
        self.device = dispatch.resolve_device(defaults.get("device", "auto"),
                                              zip(labels, arrays))
        self._backend = dispatch.backend(self.device)
        # An optimizer over an empty view of one param: it checks the defaults, fills and checks
        # each group as the plain optimizer would, and allocates nothing.
        self._template = optimizer_class([self._backend.flat(arrays[0])[0:0]], **defaults)
        # int8 state: each rank's range starts on a block of 256 of its param (_Vector), and a
        # slice of a param keeps int8 state when the whole param would (_local_class), so every
        # block is the plain optimizer's block and the shards' state is the whole's
        self._int8 = self._template.state_dtype == _codecs.INT8
        # stochastic rounding shards exactly: its random bits hash values and the param's step
        # count, never positions; the seed travels in the state_dict (see state_dict)
        self._rounding_seed = self._template.rounding_seed
        self.param_groups, self._group_indices, start = [], [], 0
        for gi, group in enumerate(groups):
            filled = {**self._template.defaults, **group, "params": list(group["params"])}
            self._template._check_labelled(gi, filled)
            self.param_groups.append(filled)
            self._group_indices.append(list(range(start, start + len(filled["params"]))))
            start += len(filled["params"])
        self._optimizer_class, self._defaults = optimizer_class, dict(defaults)
        self._templates = {dtype_of(arrays[0]): self._template}  # see _plain_like
        self.defaults = self._template.defaults
        self.state_names = optimizer_class.state_names + (
            tuple(n + ABSMAX for n in optimizer_class.state_names) if self._int8 else ())
        self._params, self._labels, self._names = arrays, labels, names

    def _layout_items(self):
        items = [("optimizer_class", self._optimizer_class.__name__),
                 ("the device", self.device),
                 ("the number of param groups", len(self.param_groups)),
                 ("the number of params per group", [len(ix) for ix in self._group_indices])]
        items += [(f"param_groups[{gi}]'s hyper-parameters",
                   _canonical({k: v for k, v in g.items() if k != "params"}))
                  for gi, g in enumerate(self.param_groups)]
        return items + _arrays_items(self._params, self._labels, self._names)[1:]

    def _shard(self):
        """This rank's slices of the params, their grad buffers and the local optimizer."""
        backend = self._backend
        self._flats = [backend.flat(p) for p in self._params]
        self._vectors = _vectors(self._params, self.size, self.rank,
                                 _quant.BLOCK if self._int8 else 1)
        pieces = []
        for vector in self._vectors:
            vector.grad = backend.full(vector.hi - vector.lo, vector.dtype, 0.0)
            vector.scratch = None  # full-size, for arrays that do not lie back to back
            vector.param_span = backend.span([self._params[i] for i in vector.indices])
            vector.pieces = vector.pieces_of(self.rank)
            pieces += vector.pieces
        # the local optimizer's params are in param order, so each of its (group, dtype)
        # buckets is a run of one vector's shard: one kernel call
        self._pieces = sorted(pieces, key=operator.attrgetter("index"))
        self._slices = [self._flats[p.index][p.start:p.stop] for p in self._pieces]
        self._local_grads = [p.vector.grad[p.offset:p.offset + p.stop - p.start]
                             for p in self._pieces]
        group_of = [gi for gi, indices in enumerate(self._group_indices) for _ in indices]
        # per group: the positions of its pieces among the local optimizer's params
        self._inner_indices = [[] for _ in self.param_groups]
        for k, piece in enumerate(self._pieces):
            self._inner_indices[group_of[piece.index]].append(k)
        inner_groups, self._inner_group = [], []
        for group, mine in zip(self.param_groups, self._inner_indices):
            self._inner_group.append(len(inner_groups) if mine else None)
            if mine:
                inner_groups.append({**dict(_snapshot(group)),
                                     "params": [self._slices[k] for k in mine]})
        # None where this rank's shard is empty (S < N): it still joins every collective
        self.local_optimizer = (self._local_class()(inner_groups, **self._defaults)
                                if inner_groups else None)

    def _local_class(self):
        """``optimizer_class``, or with int8 state a subclass (under the same name) whose slices
        keep int8 state exactly when their whole params would."""
        if not self._int8:
            return self._optimizer_class
        quantized = [self._quantized(p.index) for p in self._pieces]

        def _quantizes(optimizer, k, param):
            return quantized[k]
        cls = self._optimizer_class
        return type(cls.__name__, (cls,), {"_quantizes": _quantizes,
                                          "__qualname__": cls.__qualname__,
                                          "__module__": cls.__module__})

    @property
    def shard(self):
        """Per dtype (its name): (start, stop, total) of this rank's range of the vector of the
        params of that dtype."""
        return {str(v.dtype): (v.lo, v.hi, v.total) for v in self._vectors}

    @property
    def state_nbytes(self):
        """The bytes of this rank's optimizer state buffers (about 1/N of the plain
        optimizer's)."""
        if self.local_optimizer is None:
            return 0
        return sum(value.nbytes for entry in self.local_optimizer.state
                   for name, value in entry.items() if name in self.state_names)

    @property
    def workspace_nbytes(self):
        """The bytes of this rank's communication buffers: its shard of the grads, and a
        full-size scratch buffer per dtype whose params or grads do not lie back to back."""
        return sum(v.grad.nbytes + (0 if v.scratch is None else v.scratch.nbytes)
                   for v in self._vectors)

    # ------------------------------------------------------------------------------- stepping
    def step(self, grads, *, max_grad_norm=None, clip_value=None, skip_if_nonfinite=False,
             error_if_nonfinite=False):
        """Collective.  Step every rank's params as ``optimizer_class`` would with the mean of
        the ranks' ``grads`` (this rank's grads, same structure as the params; ``None`` grads
        are refused).  The options are ``Optimizer.step``'s: the global norm is that of the
        mean grads, and a skip or an error for non-finite values happens on every rank.  Each
        rank's grads are checked before anything is sent; if any rank's fail, or the ranks pass
        different options or hold different hyper-parameters, every rank raises and nothing
        changes.  Returns the global norm of the mean grads when computed, else None."""
        with self._lock:
            return self._step(grads, max_grad_norm, clip_value, skip_if_nonfinite,
                              error_if_nonfinite)

    def _step(self, grads, max_grad_norm, clip_value, skip_if_nonfinite, error_if_nonfinite):
        options = (max_grad_norm, clip_value, skip_if_nonfinite, error_if_nonfinite)
        error, changed, spans = None, [], None
        try:
            _check_clipping(*options)
            grads = self._grad_list(grads)
            spans = self._checked_grads(grads)
            changed = self._changed_groups()
        except Exception as exc:  # agreed below: every rank raises, none waits
            error = exc
        self._agree_step(error, options, changed)
        # --- every rank's grads and options are valid and the same: from here on all step
        self._commit_groups(changed)
        self._reduce_scatter(grads, spans)
        norm = None
        if max_grad_norm is not None or skip_if_nonfinite or error_if_nonfinite:
            norm = self._global_norm()
            if not math.isfinite(norm):
                if error_if_nonfinite:
                    self._raise_nonfinite(norm)
                if skip_if_nonfinite:
                    return norm
        factor = _clip_scale(max_grad_norm, norm) / self.size
        if factor != 1.0:
            for vector in self._vectors:
                self._backend.scale(vector.grad, factor)
        if self.local_optimizer is not None:
            self.local_optimizer.step(self._local_grads, clip_value=clip_value)
        self._all_gather()
        self.step_count += 1
        return norm

    def _grad_list(self, grads):
        return grad_list(grads, self._names, len(self._params))

    def _checked_grads(self, grads):
        """Each grad matches its param; per vector, the grads as one span (or None).  Grads that
        are the very objects of the last step are not checked again."""
        for param, label in zip(self._params, self._labels):
            if isinstance(param, np.ndarray) and not param.flags.writeable:
                raise ValueError(f"{label} is read-only (it was made so after the optimizer "
                                 "was built); the update is in place and needs a writeable "
                                 "array")
        seen = self._seen
        if seen is not None and all(map(operator.is_, grads, seen[0])):
            return seen[1]
        for grad, param, label in zip(grads, self._params, self._labels):
            if grad is None:
                raise ValueError(f"the grad for {label} is None: with sharded state every "
                                 "param steps on every rank (pass zeros)")
            check.check_like(grad, param, f"grad for {label}", label)
            where = dispatch.location(grad)
            if where != self.device:
                raise TypeError(f"grad for {label} lives on {where} but {label} lives on "
                                f"{self.device}; numba_opt never copies between host and "
                                "device")
        spans = [self._backend.span([grads[i] for i in v.indices]) for v in self._vectors]
        self._seen = (tuple(grads), spans)
        return spans

    def _remember_groups(self):
        """What the next steps compare the groups with: each group's values (compared by
        identity first, as Optimizer does), its lists' contents, snapshots and their CRC."""
        self._group_values = [tuple(g.values()) for g in self.param_groups]
        self._group_lists = [[(k, tuple(v)) for k, v in g.items()
                              if k != "params" and isinstance(v, list)]
                             for g in self.param_groups]
        self._snapshots = [_snapshot(g) for g in self.param_groups]
        self._groups_code = _code(self._snapshots)

    def _changed_groups(self):
        """(group index, snapshot) of each group edited since the last step, checked."""
        changed = []
        for gi, group in enumerate(self.param_groups):
            if tuple(group.values()) == self._group_values[gi] and all(
                    tuple(group[k]) == v for k, v in self._group_lists[gi]):
                continue  # untouched (the usual case: no snapshot made)
            now = _snapshot(group)
            if now != self._snapshots[gi]:
                self._template._check_labelled(gi, group)
                changed.append((gi, now))
        return changed

    def _agree_step(self, error, options, changed):
        """One Allreduce: did any rank fail its checks, and do all ranks step with the same
        options and hyper-parameters (CRCs of them)?  If not, every rank raises."""
        groups_code = options_code = 0
        if error is None:  # the options and groups passed their checks: they are numbers
            groups_code = self._groups_code
            if changed:
                snapshots = list(self._snapshots)
                for gi, snapshot in changed:
                    snapshots[gi] = snapshot
                groups_code = _code(snapshots)
            if options != self._options:
                self._options, self._options_code = options, _code(options)
            options_code = self._options_code
        flags = self._flags
        flags[0], flags[1], flags[2] = error is not None, groups_code, -groups_code
        flags[3], flags[4] = options_code, -options_code
        self.comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        if flags[0] == 0 and flags[1] == -flags[2] and flags[3] == -flags[4]:
            return
        # the slow path, on every rank alike: find out what went wrong
        _raise_reported(error, self.comm.allgather(
            None if error is None else (type(error).__name__, str(error))))
        _same_on_every_rank(self.comm, [("step's options", _options_text(options))] + [
            (f"param_groups[{gi}]'s hyper-parameters", _canonical(dict(_snapshot(g))))
            for gi, g in enumerate(self.param_groups)], "what each step is given")
        raise RuntimeError("the ranks' step options or hyper-parameters differ (their "
                           "checksums do), but not in their text")

    def _commit_groups(self, changed):
        """Pass edited hyper-parameters on to the local optimizer's groups (it checks them
        again and recomputes its scalars)."""
        for gi, snapshot in changed:
            inner = self._inner_group[gi]
            if inner is not None:
                self.local_optimizer.param_groups[inner].update(dict(snapshot))
        if changed:
            self._remember_groups()

    def _reduce_scatter(self, grads, spans):
        """This rank's shard of the sum of the ranks' grads, per dtype."""
        flats = None
        for vector, span in zip(self._vectors, spans):
            if not vector.total:
                continue
            send = span
            if span is None:
                if flats is None:
                    flats = [self._backend.flat(g) for g in grads]
                send = self._scratch(vector)
                _pack(self._backend, send, vector, flats)
            _synchronize(self.device)
            self.comm.Reduce_scatter(_buffer(send), _buffer(vector.grad), vector.counts,
                                     op=MPI.SUM)

    def _scratch(self, vector):
        if vector.scratch is None:
            vector.scratch = _scratch(self.device, self._backend, vector.total, vector.dtype)
        return vector.scratch

    def _global_norm(self):
        """The L2 norm of the mean grads: the ranks' partial sums of squares of their shards
        of the summed grads, added by one Allreduce (float64)."""
        self._norm[0] = sum(self._backend.sum_squares(v.grad) for v in self._vectors)
        self.comm.Allreduce(MPI.IN_PLACE, self._norm, op=MPI.SUM)
        return math.sqrt(float(self._norm[0])) / self.size

    def _raise_nonfinite(self, norm):
        """Every rank names the same param: the first whose mean grad is not finite."""
        first = len(self._params)
        for piece in self._pieces:
            grad = piece.vector.grad[piece.offset:piece.offset + piece.stop - piece.start]
            if not math.isfinite(self._backend.sum_squares(grad)):
                first = piece.index
                break
        found = np.array([first], np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, found, op=MPI.MIN)
        what = (f"the mean over the {self.size} ranks of the grad for "
                f"{self._labels[int(found[0])]}" if found[0] < len(self._params)
                else "the mean grads")
        raise ValueError(f"{what} has non-finite values (global grad norm {norm}); nothing was "
                         "changed")

    def _all_gather(self):
        """Every rank's updated slices into every rank's params, per dtype."""
        _synchronize(self.device)
        for vector in self._vectors:
            if not vector.total:
                continue
            if vector.param_span is not None:  # the params are the buffer: in place
                self.comm.Allgatherv(MPI.IN_PLACE, (_buffer(vector.param_span),
                                                    (vector.counts, vector.displs)))
                continue
            buffer = self._scratch(vector)
            for piece in vector.pieces:
                start = vector.lo + piece.offset
                self._backend.copy_into(buffer[start:start + piece.stop - piece.start],
                                        self._flats[piece.index][piece.start:piece.stop])
            _synchronize(self.device)
            self.comm.Allgatherv(MPI.IN_PLACE, (_buffer(buffer), (vector.counts, vector.displs)))
            _unpack(self._backend, buffer, vector, self._flats)

    # ------------------------------------------------------------------------------ the state
    def _plain_like(self, i):
        """A plain optimizer_class over an empty view of param i: what the unsharded optimizer
        would keep for a param of that dtype (its state buffers and their dtypes), for
        nopt.load's checks of each member of a checkpoint."""
        dtype = dtype_of(self._params[i])
        if dtype not in self._templates:
            self._templates[dtype] = self._optimizer_class(
                [self._backend.flat(self._params[i])[0:0]], **self._defaults)
        return self._templates[dtype]

    def _quantized(self, i):
        """Whether the whole param i keeps int8 state (the plain optimizer's rule)."""
        return self._int8 and self._template._quantizes(i, self._params[i])

    def _state_names_of(self, i):
        if self._quantized(i):  # the empty view of _plain_like is too small to be quantized
            return self.state_names
        return tuple(n for n in self._plain_like(i)._state_names_of(0) if not n.endswith(ABSMAX))

    def _buffer_dtype(self, i, name):
        if self._quantized(i):
            return _quant.SCALE if name.endswith(ABSMAX) else _quant.CODE
        return None if name.endswith(ABSMAX) else self._plain_like(i)._buffer_dtype(0, name)

    def _buffer_shape(self, i, name):
        return Optimizer._buffer_shape(self, i, name)  # it reads only self._params

    def _checkpoint_collective(self, action, every_rank):
        """``nopt.save`` / ``nopt.load``'s hook: ``action()`` on every rank (reading the file:
        each rank takes its shard) or on rank 0 only (writing it); an error on any rank is
        raised on every rank."""
        return _agree(self.comm, action if every_rank or self.rank == 0 else lambda: None)

    def state_dict(self):
        """Collective: the full state_dict, as ``optimizer_class`` over the whole params would
        return it, on every rank (host copies).  It loads into a plain optimizer or into a
        ZeroRedundancyOptimizer over any number of ranks."""
        with self._lock:
            local = [] if self.local_optimizer is None else self.local_optimizer.state
            # step counts and host scalars (equal in every slice of a param) come from the rank
            # holding the param's first element; the buffers from every rank
            heads = {}
            for piece, entry in zip(self._pieces, local):
                if piece.start == 0 and entry:
                    heads[piece.index] = ({k: v for k, v in entry.items()
                                           if k not in self.state_names},
                                          [k for k in entry if k in self.state_names])
            for part in self.comm.allgather(heads):
                heads.update(part)
            state = {i: dict(heads[i][0]) for i in sorted(heads)}
            for vector in self._vectors:
                names = [n for n in self.state_names
                         if any(n in heads[i][1] for i in vector.indices if i in heads)]
                for name in names:
                    self._gather_state(vector, name, local, heads, state)
            return {
                "format": STATE_DICT_FORMAT,
                "optimizer": self._optimizer_class.__name__,
                "step_count": self.step_count,
                "param_groups": [{**{k: list(v) if isinstance(v, list) else v
                                     for k, v in g.items() if k != "params"},
                                  "params": list(indices)}
                                 for g, indices in zip(self.param_groups, self._group_indices)],
                "state": state,
                **self._seed_entry(),
            }

    @property
    def stochastic_rounding(self):
        """Whether bfloat16/float16 stores round stochastically (the optimizer option)."""
        return self._template.stochastic_rounding

    @property
    def rounding_seed(self):
        """The stochastic rounding seed (from the constructor, or the last loaded state_dict)."""
        return self._rounding_seed

    def _seed_entry(self):
        """The stochastic rounding seed's state_dict entry, as the plain optimizer writes it."""
        return {SEED: self._rounding_seed} if self._template.stochastic_rounding else {}

    def _gather_state(self, vector, name, local, heads, state):
        """One state buffer of one dtype, whole on every rank (host), cut back into params."""
        if name.endswith(ABSMAX):
            return self._gather_scales(vector, name, local, heads, state)
        # in the state's dtype (state_dtype may differ from the params', and with int8 state
        # small params keep float32 where large ones have codes: one gather per dtype), moved
        # as its bits: MPI knows no bfloat16, and a gather only copies
        dtypes = {i: self._buffer_dtype(i, name) for i in vector.indices}
        for dtype in dict.fromkeys(dtypes.values()):
            whole = np.zeros(vector.total, dtype)
            for piece, entry in zip(self._pieces, local):
                if piece.vector is vector and name in entry and dtypes[piece.index] == dtype:
                    start = vector.lo + piece.offset
                    whole[start:start + piece.stop - piece.start] = self._backend.to_host(
                        entry[name])
            self.comm.Allgatherv(MPI.IN_PLACE, (_codecs.bits(whole),
                                                (vector.counts, vector.displs)))
            for i, start, n in zip(vector.indices, vector.starts, vector.sizes):
                if i in heads and name in heads[i][1] and dtypes[i] == dtype:
                    param = self._params[i]
                    state[i][name] = whole[start:start + n].reshape(
                        shape_of(param), order="F" if _fortran(param) else "C")

    def _gather_scales(self, vector, name, local, heads, state):
        """int8 state's absmax scales (one per block; a rank's slices hold whole blocks): each
        rank's pieces, gathered as objects (a 256th of the codes' size), put end to end."""
        mine = [(piece.index, piece.start // _quant.BLOCK, self._backend.to_host(entry[name]))
                for piece, entry in zip(self._pieces, local)
                if piece.vector is vector and name in entry]
        pieces = {}
        for part in self.comm.allgather(mine):
            for i, first_block, scales in part:
                pieces.setdefault(i, []).append((first_block, scales))
        for i, parts in pieces.items():
            if i in heads and name in heads[i][1]:
                state[i][name] = np.concatenate([scales for _, scales in sorted(
                    parts, key=lambda part: part[0])])

    def load_state_dict(self, state_dict):
        """Collective: restore a full state_dict (from ``state_dict()`` on any number of ranks,
        or from a plain optimizer); each rank keeps its slices.  Every rank checks all of it
        first; if it fails on any rank, every rank raises and nothing changes."""
        with self._lock:
            step_count, hyper, state, seed = _agree(self.comm,
                                                    lambda: self._checked_load(state_dict))
            for group, values in zip(self.param_groups, hyper):
                group.update({k: list(v) if isinstance(v, list) else v
                              for k, v in values.items()})
            self._rounding_seed = seed
            if self.local_optimizer is not None:
                self.local_optimizer.load_state_dict(self._local_state_dict(
                    state_dict["format"], step_count, state))
            self._remember_groups()
            self.step_count = step_count

    def add_param_group(self, param_group):
        """Collective: add ``param_group`` as ``Optimizer.add_param_group`` does (a dict with
        'params' and any hyper-parameters; the others from the defaults), the same on every
        rank.  Element ranges shift when params join, so the sharding is rebuilt over every
        group: the full state is gathered (a ``state_dict()``), re-cut and loaded back, which
        costs one state_dict's traffic; fine for a rare event (unfreezing layers), not for
        every step.  Every rank checks it first; on any refusal every rank raises and nothing
        changes."""
        with self._lock:
            saved = self.state_dict()  # collective; changes nothing
            before = dict(self.__dict__)

            def local():
                if self._names is not None:
                    raise TypeError("param_group: a ZeroRedundancyOptimizer over named params "
                                    "has one group; give the params as a list to add groups")
                if not isinstance(param_group, Mapping):
                    raise TypeError(f"param_group must be a dict, got "
                                    f"{type(param_group).__name__}")
                if "params" not in param_group:
                    raise ValueError("param_group has no 'params' entry")
                added = param_group["params"]
                added = added.params if isinstance(added, FlatParams) else added
                groups = [dict(g) for g in self.param_groups] + [
                    {**param_group, "params": [added] if check.is_array(added) else added}]
                self._setup(groups, self._optimizer_class, self._defaults)

            try:
                _agree(self.comm, local)
                _same_on_every_rank(self.comm, self._layout_items(),
                                    "ZeroRedundancyOptimizer's params and hyper-parameters")
            except BaseException:
                self.__dict__.clear()
                self.__dict__.update(before)
                raise
            self._shard()
            self._seen = None
            saved["param_groups"] = [
                {**{k: v for k, v in g.items() if k != "params"}, "params": list(indices)}
                for g, indices in zip(self.param_groups, self._group_indices)]
            self.load_state_dict(saved)

    def _checked_load(self, state_dict):
        """(step_count, hyper-parameters per group, state per param index, rounding seed),
        checked as Optimizer.load_state_dict checks them, naming the full params."""
        step_count = checked_header(state_dict, self._optimizer_class.__name__)
        seed = self._template._checked_seed(state_dict)
        groups, entries = state_dict["param_groups"], state_dict["state"]
        if not (isinstance(groups, (list, tuple)) and all(isinstance(g, Mapping)
                                                          for g in groups)):
            raise TypeError("state_dict['param_groups'] must be a list of dicts")
        if not isinstance(entries, Mapping):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(entries).__name__}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer has "
                             f"{len(self.param_groups)}")
        hyper = []
        for gi, (saved, indices) in enumerate(zip(groups, self._group_indices)):
            if list(saved.get("params", ())) != list(indices):
                raise ValueError(f"state_dict param_groups[{gi}] holds params "
                                 f"{saved.get('params')}, the optimizer's holds {list(indices)}")
            values = {k: v for k, v in saved.items() if k != "params"}
            self._template._check_labelled(gi, {**self.defaults, **values})
            hyper.append(values)
        state = {}
        for i, saved in entries.items():
            if not (isinstance(i, (int, np.integer)) and 0 <= i < len(self._params)):
                raise ValueError(f"state_dict['state'] has an entry for param {i!r}, the "
                                 f"optimizer has {len(self._params)} params")
            state[int(i)] = self._checked_entry(int(i), saved)
        return step_count, hyper, state, seed

    def _checked_entry(self, i, saved):
        """As a plain optimizer checks a param's saved state (keys, host scalars, buffers)."""
        return checked_entry(self, self._optimizer_class, i, saved)

    @staticmethod
    def _slice_of(value, name, piece, order):
        """A piece's part of one of its param's state buffers: its elements, or for int8
        scales its blocks (a piece starts on a block)."""
        if name.endswith(ABSMAX):
            first = piece.start // _quant.BLOCK
            return value[first:first + _quant.blocks(piece.stop - piece.start)]
        return np.ravel(value, order=order)[piece.start:piece.stop]

    def _local_state_dict(self, state_format, step_count, state):
        """The local optimizer's share of a full state_dict: its groups, and each of its slices'
        part of the buffers (1-D, in the param's memory order)."""
        groups = []
        for gi, inner in enumerate(self._inner_group):
            if inner is not None:
                groups.append({**{k: v for k, v in self.param_groups[gi].items()
                                  if k != "params"}, "params": self._inner_indices[gi]})
        local = {}
        for k, piece in enumerate(self._pieces):
            if piece.index in state:
                order = "F" if _fortran(self._params[piece.index]) else "C"
                local[k] = {key: (self._slice_of(value, key, piece, order)
                                  if key in self.state_names else value)
                            for key, value in state[piece.index].items()}
        return {"format": state_format, "optimizer": self._optimizer_class.__name__,
                "step_count": step_count, "param_groups": groups, "state": local,
                **self._seed_entry()}

    def __repr__(self):
        shard = ", ".join(f"{d} [{lo}, {hi}) of {total}"
                          for d, (lo, hi, total) in self.shard.items())
        return (f"ZeroRedundancyOptimizer({self._optimizer_class.__name__}, rank {self.rank} of "
                f"{self.size}, device={self.device!r}, params={len(self._params)}, "
                f"step_count={self.step_count}; shard: {shard})")


def _options_text(options):
    names = ("max_grad_norm", "clip_value", "skip_if_nonfinite", "error_if_nonfinite")
    return ", ".join(f"{n}={_canonical(v)}" for n, v in zip(names, options))


def _canonical(value):
    """The text of a value as every rank writes it: NumPy scalars as Python numbers (lr=0.1
    on one rank and np.float64(0.1) on another are the same lr)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_canonical(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_canonical(v)}" for k, v in value.items()) + "}"
    return repr(float(value)) if isinstance(value, (int, float)) and not isinstance(
        value, bool) else repr(value)


def _code(value, start=0):
    """A CRC of a value's canonical text: what the ranks compare each step."""
    return zlib.crc32(_canonical(value).encode(), start)
