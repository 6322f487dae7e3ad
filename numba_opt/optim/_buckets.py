"""Buckets: the params of one group that share a dtype (and a kind of state), with their flat
state buffers and what the kernel calls over them need; and the per-param state list.

``optim.base`` steps them; ``optim._state`` saves and loads them.
"""
import itertools

import numpy as np

from .. import _codecs, _quant
from .._codecs import bits
from .._interface import dtype_of, size_of

MASTER = "master_param"  # the float32 copy of a bfloat16 / float16 param (master_weights=True)
# With state_dtype='int8' each state of a quantized param is two buffers: its uint8 codes under the
# state's own name, and its float32 scales (one per block of _quant.BLOCK) under name + ABSMAX.
ABSMAX = "_absmax"
MAX_SUBSET_TABLES = 8  # tables of some of a bucket's params kept per bucket (Bucket.table_of)


class _States(list):
    """The per-param states: a list, also indexable by param name when params had names."""

    def __init__(self, names=None):
        super().__init__()
        self._positions = None if names is None else {n: i for i, n in enumerate(names)}

    def __getitem__(self, key):
        if isinstance(key, str) and self._positions is not None:
            try:
                key = self._positions[key]
            except KeyError:
                raise KeyError(f"no param named {key!r}; the names are "
                               f"{list(self._positions)}") from None
        return super().__getitem__(key)


class _Bucket:
    """The params of one group that share a dtype, and their flat state.  The kernels see the
    params, grads and buffers as ``bits`` views (uint16 for bfloat16 and float16 arrays)."""

    def __init__(self, group_index, indices, params, backend, host_state, storage, state_dtype):
        self.group_index = group_index
        self.host_state = host_state
        self.backend = backend
        self.indices = indices
        self.params = params
        self.flat_params = [bits(backend.flat(p)) for p in params]
        ends = list(itertools.accumulate(size_of(p) for p in params))
        self.bounds = list(zip([0] + ends[:-1], ends))  # each param's [start, stop) in the state
        self.size = ends[-1]
        self.dtype = dtype_of(params[0])
        # the kernels' codecs, the dtype of the state buffers (the master copy is float32) and
        # the dtype the rules compute in, which the scalars take
        self.storage, self.state_dtype = storage, state_dtype
        self.compute_dtype = _codecs.compute_dtype(self.dtype)
        # int8 state: each param's blocks (and scales) its own; one call per param, or one over
        # a table where the backend has a blockwise table kernel (CUDA)
        self.quantized = storage.state == _codecs.INT8
        block_ends = list(itertools.accumulate(_quant.blocks(stop - start)
                                               for start, stop in self.bounds))
        self.block_bounds = list(zip([0] + block_ends[:-1], block_ends))
        self.blocks = block_ends[-1]
        span = None if self.quantized else backend.span(params)  # None unless back to back
        self.param_span = None if span is None else bits(span)
        # a multi-tensor table over the bucket's arrays, where the backend has such loops
        tabled = getattr(backend, "MULTI_TENSOR", False) and (
            not self.quantized or getattr(backend, "QUANTIZED_TABLE", False))
        # tables of some of the params (the others' grads None), where the backend has them
        self._subsets = {} if tabled and getattr(backend, "SUBSET_TABLES", False) else None
        self.table = None if not tabled else (
            np.array(indices, dtype=np.int64),
            *backend.table_layout([stop - start for start, stop in self.bounds],
                                  self.flat_params))
        self.reset()

    def reset(self):
        """No state: before the first step, and before loading a state_dict."""
        self.buffers = {}  # state name -> flat buffer over the whole bucket
        self.views = {}    # state name -> the per-param flat views into it
        self.shaped_views = {}  # state name -> (its views, {j: view shaped like param j})
        # While every param has stepped together: one step count, one set of started states and
        # one set of host scalars.
        self.step, self.started, self.host = 0, set(), dict(self.host_state)
        self.per_param = None  # after params diverged: [[step, started set, host], ...] per param
        # the last scalars argument, and the fresh-state names and clipping it was made for
        self.scalars = self.scalars_fresh = self.grad_fields = None
        self.layout = None  # the group's (kernel name, state names) the calls below are for
        self.names = None   # the buffers those calls update: the state names, then MASTER
        # the whole bucket as one kernel call: over its span, or over its table
        self.span_call = self.span_states = self.table_call = self.table_states = None
        self.param_calls = None  # [(kernel call, its state tuple)] per param

    def table_of(self, positions):
        """(the params' indices in the optimizer, their table) for the bucket's params at
        ``positions`` (a list; their state where the bucket's table has it), made once per set
        of positions, for a backend that steps such tables (``SUBSET_TABLES``).  None for a
        single param (its own call needs no table), on other backends, or past a few sets (a
        None-grad pattern that keeps changing is cheaper stepped param by param)."""
        if self._subsets is None or len(positions) < 2:
            return None
        key = tuple(positions)
        if len(key) == len(self.params):
            return self.table
        subset = self._subsets.get(key)
        if subset is None and len(self._subsets) < MAX_SUBSET_TABLES:
            subset = self._subsets[key] = (
                [self.indices[j] for j in key],
                self.backend.subset_table(self.table[1], key, [self.flat_params[j] for j in key]))
        return subset

    def diverge(self):
        """From now on each param keeps its own (step count, started states, host scalars),
        starting from the bucket's: some grads were None."""
        if self.per_param is None:
            self.per_param = [[self.step, set(self.started), self.host] for _ in self.params]

    def history(self, j):
        """(step count, started state names, host scalars) of the bucket's j-th param."""
        if self.per_param is None:
            return self.step, self.started, self.host
        return self.per_param[j]

    def use_layout(self, layout, kernel, names):
        """Bind the kernel calls and their buffer tuples (the buffers must exist) for the group
        ``layout``: ``kernel`` updates the buffers ``names``."""
        self.span_call = kernel.bind(self.size)
        self.span_states = tuple(bits(self.buffers[n]) for n in names)
        if self.table is not None:
            self.table_call = kernel.bind_table(self.size)
            blockwise = any(name.endswith(ABSMAX) for name in names)  # codes and their scales
            self.table_states = self.span_states if blockwise else self.backend.table_states(
                self.span_states, self.compute_dtype)
        self.param_calls = [(kernel.bind(p.size), tuple(bits(self.views[n][j]) for n in names))
                            for j, p in enumerate(self.flat_params)]
        self.layout, self.names = layout, names

    def start_master(self, j=None):
        """Set the master copy of param j (of every param when None) to the param's value, at
        its first step (exact: float32 holds every bfloat16 and float16 value)."""
        codec = self.storage.param
        if j is not None:
            self.backend.widen(self.views[MASTER][j], self.flat_params[j], codec)
        elif self.param_span is not None:
            self.backend.widen(self.buffers[MASTER], self.param_span, codec)
        else:
            for view, param in zip(self.views[MASTER], self.flat_params):
                self.backend.widen(view, param, codec)
