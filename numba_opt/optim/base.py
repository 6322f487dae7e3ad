"""Optimizer: parameter groups, validation, buckets and stepping (its state, state_dict and
load_state_dict are ``_state.StateMixin``; the buckets are ``_buckets``).

Subclasses say only what differs between optimizers, through hooks that forward to
``numba_opt.functional`` (where the host-side arithmetic lives):
- ``hyper_checks``: the table validating one group's hyper-parameters;
- ``_layout(hyper)``: the kernel name and the state buffers it updates, in kernel order;
- ``_scalars(hyper, step, fresh)``: the kernel's scalar namedtuple for this step; ``fresh``
  names the buffers that start with this step (SGD's first momentum step depends on it);
- ``_initial_value(name, hyper)``: the fill value of a new state buffer (0 unless overridden);
- ``step_fields`` and ``_step_scalars(hyper, step)``: the few scalars that change every step
  (Adam's bias corrections) and their values; the rest are computed once per change of a group.
- ``host_state`` and ``_advance_host(hyper, step, host)``: scalars kept on the host per param
  beside the step count, with their initial values (NAdam's running ``mu_product``), and how a
  step changes them; they reach ``_scalars`` and ``_step_scalars`` as keyword arguments (as a
  step leaves them, or as ``_host_for_step`` picks: ASGD's eta and mu as it found them) and
  are part of ``state`` and the state_dict.

How a step runs (the fast path is what makes small steps cheap and big models one pass):
- The params of a group that share a dtype form a *bucket*.  Each state (exp_avg, ...) of a
  bucket is one flat buffer; each param's state is a view into it.
- If the bucket's params lie back to back in one buffer (``FlatParams``) and so do the grads,
  the whole bucket is ONE kernel call.  Otherwise one multi-tensor call over a table of the
  arrays (CPU and GPU; int8 state, and buckets once their params diverged: one per param).
- Grads that are the very objects of the previous step are not validated again, and a group's
  hyper-parameters are validated (and the scalars recomputed) only when an entry changes.
- A ``None`` grad skips its param, whose step count then differs from the others': that bucket
  goes on param by param, with per-param step counts, as torch does.
"""
from __future__ import annotations

import contextlib
import math
import operator
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _codecs, _fork, _math, _quant, _validation as check, dispatch
from .._interface import dtype_of, size_of
from .._codecs import bits
from .._typing import Device, Grads, Params, Real
from ._buckets import ABSMAX, MASTER, _Bucket
from ._grads import Intake
# SEED, STATE_DICT_FORMAT and checked_header: for the data-parallel wrapper, which imports
# them here
from ._state import (SEED, STATE_DICT_FORMAT, StateMixin, _frozen,  # noqa: F401
                     _mutable, checked_header)
from . import _docs, _groups
from ._groups import _normalise_params, _reject_shared_memory

_NO_CLIPPING = (1.0, math.inf)  # the grad_scale and clip_value fields of the scalars, when off
_SALT = 2  # where the scalars hold the rounding salt (stochastic rounding; _math._GRAD_FIELDS)


class Optimizer(StateMixin):
    #: every state buffer name this optimizer may create (for load_state_dict validation)
    state_names = ()
    #: name -> check(name, value) for every hyper-parameter (set by each optimizer)
    hyper_checks = {}
    step_fields = ()
    #: per-param host scalars kept beside the step count: name -> initial value
    host_state = {}
    #: constructor parameter -> its meaning, for the docstring (see _docs; shared ones there)
    param_docs = {}
    #: each element's update reads only that element (ZeroRedundancyOptimizer shards by it)
    elementwise = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _docs.document(cls)  # the docstring ends with the arguments, their defaults, meanings

    def __init__(self, params: Params, defaults: Mapping[str, Any], device: Device = "auto",
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        self.defaults = dict(defaults)
        self._state_dtype = _codecs.state_dtype_option(state_dtype)
        self._master_weights = check.flag("master_weights", master_weights)
        self._stochastic_rounding = check.flag("stochastic_rounding", stochastic_rounding)
        if rounding_seed is not None and not stochastic_rounding:
            raise ValueError("rounding_seed seeds stochastic rounding: give it with "
                             "stochastic_rounding=True")
        self._rounding_seed = 0 if rounding_seed is None else check.count(
            "rounding_seed", rounding_seed)
        groups, names = _normalise_params(params)
        params_flat = [p for group in groups for p in group["params"]]
        self._labels = ([f"params[{n!r}]" for n in names] if names is not None
                        else [f"params[{i}]" for i in range(len(params_flat))])
        self._names = names
        for param, label in zip(params_flat, self._labels):
            check.check_param(param, label)
        _reject_shared_memory(params_flat, self._labels)
        if master_weights and not any(_codecs.is_low_precision(dtype_of(p)) for p in params_flat):
            raise TypeError(f"master_weights=True keeps a float32 copy of bfloat16 and float16 "
                            f"params, but no param is either ({self._labels[0]} is "
                            f"{dtype_of(params_flat[0])}); float32 and float64 params are updated "
                            "directly")

        self.param_groups = []
        group_indices = []
        start = 0
        for gi, group in enumerate(groups):
            filled = {**self.defaults, **group, "params": list(group["params"])}
            self._check_labelled(gi, filled)
            self.param_groups.append(filled)
            group_indices.append(list(range(start, start + len(filled["params"]))))
            start += len(filled["params"])

        self.device = dispatch.resolve_device(device, zip(self._labels, params_flat))
        self._backend = dispatch.backend(self.device)
        # the GPU's launch state: the stream and the device clip scale (see _cuda_launch)
        self._launches = (self._backend.LaunchContext(stream)
                          if hasattr(self._backend, "LaunchContext") else None)
        if self._launches is None:
            self._launching(stream)  # refuses a stream on the CPU
        self._params = params_flat
        self._group_indices = group_indices
        self._adopt_buckets([bucket for gi, indices in enumerate(group_indices)
                             for bucket in self._group_buckets(gi, indices, params_flat,
                                                               self._labels)])
        if stochastic_rounding and not any(b.storage.stochastic for b in self._buckets):
            raise TypeError(f"stochastic_rounding=True rounds the values stored in bfloat16 or "
                            f"float16, but nothing is stored so here ({self._labels[0]} is "
                            f"{dtype_of(params_flat[0])}, state_dtype={self._state_dtype!r}, "
                            f"master_weights={self._master_weights}): use bfloat16 or float16 "
                            "params without master weights, or state_dtype='bfloat16'")
        # per group: (hyper-parameters, kernel name, state names, the group's values when
        # checked, its list entries)
        self._group_cache = [None] * len(self.param_groups)
        self._intake = Intake(params_flat, self._labels, self._buckets, self._backend,
                              self.device)
        self._seen_grads = None  # the last step's grads, validated, and what each bucket needs
        self._step_indices = None
        self.step_count = 0
        self._scheduler_initial_lrs = None  # set by the first lr scheduler (lr_scheduler.py)
        # One step, snapshot or load at a time: parallel kernels release the GIL, so without it
        # a state_dict() taken from another thread mid-step mixes buffers from two steps.
        self._lock = threading.RLock()
        _fork.track(self)  # a fork waits for the step in progress (see _fork)

    def _group_buckets(self, gi, indices, params, labels):
        """The buckets of group ``gi`` (param ``indices`` into ``params``, named ``labels``):
        one per dtype and state kind.  Nothing is recorded (see ``_adopt_buckets``)."""
        buckets = []
        for dtype in dict.fromkeys(dtype_of(params[i]) for i in indices):
            members = [i for i in indices if dtype_of(params[i]) == dtype]
            for members, state_dtype in self._state_kinds(members, params):
                storage, buffer_dtype = _codecs.storage(dtype, state_dtype, self._master_weights,
                                                        labels[members[0]],
                                                        self._stochastic_rounding)
                buckets.append(_Bucket(gi, members, [params[i] for i in members], self._backend,
                                       self.host_state, storage, buffer_dtype))
        return buckets

    def _adopt_buckets(self, buckets):
        """Make ``buckets`` (every group's) the optimizer's: which param sits where, and the
        state names they bring (the int8 scales, the master copies)."""
        self._buckets = buckets
        self._bucket_of = [None] * sum(len(b.indices) for b in buckets)  # i -> (bucket, j)
        for bucket in buckets:
            for j, i in enumerate(bucket.indices):
                self._bucket_of[i] = (bucket, j)
        names = type(self).state_names
        if any(bucket.quantized for bucket in self._buckets):
            names = names + tuple(n + ABSMAX for n in names)
        if any(bucket.storage.master for bucket in self._buckets):
            names = names + (MASTER,)
        self.state_names = names

    def _state_kinds(self, members, params):
        """[(param indices, state_dtype)] of one dtype's params of a group: with int8 state,
        params under ``_quant.MIN_SIZE`` elements keep float32 state (quantizing a few thousand
        numbers saves little and costs precision, as in bitsandbytes)."""
        if self._state_dtype != _codecs.INT8:
            return [(members, self._state_dtype)]
        small = [i for i in members if not self._quantizes(i, params[i])]
        large = [i for i in members if self._quantizes(i, params[i])]
        return [(part, kind) for part, kind in ((large, _codecs.INT8), (small, "float32"))
                if part]

    def _quantizes(self, i, param):
        """Whether param i keeps int8 state (with state_dtype='int8'): from MIN_SIZE elements
        (a wrapper that steps slices of params decides by the whole param's size)."""
        return size_of(param) >= _quant.MIN_SIZE

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of params, as torch.optim's ``add_param_group`` (to train frozen layers
        later, say): ``param_group`` is a dict with ``'params'`` (an array, a list of arrays or
        a FlatParams) and any hyper-parameters; missing ones come from ``defaults``, unknown
        ones are refused.  Its params are checked as at construction (dtype, device, shape,
        writeable, no memory shared with another param, none already in a group) and
        everything is checked before anything changes.  A copy of the dict is added.

        When the optimizer's params were given as a dict of names, ``'params'`` must be a dict
        of new names too (grads then name every param); otherwise a list.  The new params come
        after the others (``state[i]``, ``state_dict``'s indices), with their own buckets and
        state, from no step: the next ``step`` takes grads for every param.  As in torch, an lr
        scheduler made before keeps ``base_lrs`` for the groups it knew (a chainable one
        scales every group's current lr, the new one's too); one made after takes the new
        group's lr then as its initial lr."""
        with self._lock:
            _groups.add_param_group(self, param_group)

    # ------------------------------------------------------------------------------- stepping
    def step(self, grads: Grads, *, max_grad_norm: Real | None = None,
             clip_value: Real | None = None, skip_if_nonfinite: bool = False,
             error_if_nonfinite: bool = False, stream: Any = None) -> float | None:
        """Update every param in place from ``grads`` (same structure and order as the params:
        a sequence, or a dict with the same names).  A ``None`` grad skips its param, as in
        torch.  Everything is validated before anything is modified.

        Non-finite grads (inf, NaN) propagate into the params and state by default, as in
        torch.  ``skip_if_nonfinite=True``: if any grad element is inf or NaN, change nothing
        (like AMP's GradScaler; ``step_count`` does not advance) and return the norm.
        ``error_if_nonfinite=True``: raise a ValueError naming the first such grad instead.
        Either costs one read pass over the grads: the test is on the global norm (float64),
        so float64 grads above ~1e154, whose squares overflow, count as non-finite too.

        ``max_grad_norm``: clip the grads to this global L2 norm (torch's clip_grad_norm_: scale
        min(1, max_norm / (norm + 1e-6))), ``clip_value``: clamp each grad element to
        [-clip_value, clip_value].  Both are folded into the update kernel: the grads are read,
        never rewritten (global-norm clipping adds one read pass to compute the norm).
        Returns the global grad norm before clipping when it was computed (with
        ``max_grad_norm`` or a non-finite option), else None.  On the GPU it is a
        ``DeviceNorm``: the norm stays on the device until read (``float(norm)``), and the clip
        scale never leaves it, so a clipped step does not wait for the GPU.

        ``stream`` (CUDA): the stream this step's kernels run on, instead of the optimizer's
        (see ``Optimizer(stream=...)`` and README's CUDA section)."""
        with self._lock, self._launching(stream):
            return self._step(grads, max_grad_norm, clip_value, skip_if_nonfinite,
                              error_if_nonfinite)

    def _launching(self, stream):
        """The context a step's launches run in: on the GPU, its stream (see _cuda_launch)."""
        if self._launches is not None:
            return self._launches.active(stream, self._params[0])
        if stream is not None:
            raise TypeError(f"stream= orders the CUDA kernels, but the optimizer runs on "
                            f"{self.device}")
        return contextlib.nullcontext()

    def _step(self, grads, max_grad_norm, clip_value, skip_if_nonfinite, error_if_nonfinite):
        clipping = None if (max_grad_norm is None and clip_value is None
                            and skip_if_nonfinite is False and error_if_nonfinite is False) \
            else _check_clipping(max_grad_norm, clip_value, skip_if_nonfinite,
                                 error_if_nonfinite)
        grads = self._grad_list(grads)
        seen = self._seen_grads
        if seen is None or len(seen[0]) != len(grads) or not all(
                map(operator.is_, grads, seen[0])):
            seen = self._intake.adopt(grads)  # checks the params are still writeable too
        else:
            self._intake.check_params_writeable()
        stale = self._stale_groups()
        for gi in stale:
            self._check_labelled(gi, self.param_groups[gi])
        norm = None
        if clipping is not None and (max_grad_norm is not None or skip_if_nonfinite
                                     or error_if_nonfinite):
            norm = self._grad_norm(seen, max_grad_norm)
            # (only the non-finite options read the norm: on the GPU, a host sync)
            if (skip_if_nonfinite or error_if_nonfinite) and not math.isfinite(norm):
                if error_if_nonfinite:
                    raise ValueError(f"{self._first_nonfinite(grads)} has non-finite values "
                                     f"(global grad norm {norm}); nothing was changed")
                if skip_if_nonfinite:
                    self._seen_grads = seen
                    return norm
        # --- everything is valid: what remains could fail only allocating new state buffers,
        # which happens for every bucket before any kernel runs (a step is all or nothing)
        self._seen_grads = seen
        grad_scale = 1.0  # the GPU's kernels read the clip scale from the device
        if self._launches is None or not self.elementwise:
            # (Adafactor's and Muon's own kernels take it as a number: on the GPU, a sync)
            grad_scale = _clip_scale(max_grad_norm, None if norm is None else float(norm))
        elif norm is None:
            self._launches.unscale()
        self._grad_fields = _NO_CLIPPING if clipping is None else (
            grad_scale, math.inf if clip_value is None else clip_value)
        for gi in stale:
            self._refresh_group(gi)
        self._step_buckets(seen)
        self.step_count += 1
        return norm

    def _step_buckets(self, seen):
        """Step every bucket with grads (``seen``: ``Intake.adopt``'s answer); the state
        buffers they need are allocated before any param changes (Muon overrides this)."""
        stepping = [(bucket, bucket_seen) for bucket, bucket_seen in zip(self._buckets, seen[1])
                    if bucket_seen[1] != "none"]
        for bucket, _ in stepping:
            hyper, kernel_name, names = self._group_cache[bucket.group_index][:3]
            if bucket.layout != (kernel_name, names):
                self._use_layout(bucket, hyper, kernel_name, names)
        # --- from here on, params and state change
        for bucket, (bucket_grads, presence, grad_span) in stepping:
            if presence == "all" and bucket.per_param is None:
                self._step_bucket(bucket, bucket_grads, grad_span, seen[2])
            else:  # some grads are None, now or in an earlier step
                self._step_params(bucket, bucket_grads, seen[2])

    def _stale_groups(self):
        """The groups whose hyper-parameters changed since they were last checked: an entry is a
        new object (tuple == compares by identity first), or a list entry was edited in place
        (betas[0] = ...), which counts as a reassignment."""
        stale = []
        for gi, (group, cached) in enumerate(zip(self.param_groups, self._group_cache)):
            try:
                if (cached is None or tuple(group.values()) != cached[3]
                        or (cached[4] and any(_frozen(group[k]) != v for k, v in cached[4]))):
                    stale.append(gi)
            except (TypeError, ValueError):  # an entry that does not compare (lr=np.array([..]))
                stale.append(gi)             # is stale: the check then names it
        return stale

    def _grad_norm(self, seen, max_grad_norm):
        """The global L2 norm of all grads (float64 accumulation, one read pass); on the GPU a
        DeviceNorm, with the clip scale for ``max_grad_norm`` left on the device."""
        if self._launches is not None:
            return self._launches.grad_norm(self._buckets, seen, max_grad_norm)
        total = 0.0
        for bucket, (bucket_grads, presence, grad_span) in zip(self._buckets, seen[1]):
            codec = bucket.storage.param
            if grad_span is not None:
                total += self._backend.sum_squares(grad_span, codec)
            elif presence == "all" and bucket.table is not None:  # one pass over the table
                total += self._backend.table_sum_squares(seen[2], bucket.table,
                                                         bucket.flat_params[0], codec)
            else:
                total += sum(self._backend.sum_squares(g, codec)
                             for g in bucket_grads if g is not None)
        return math.sqrt(total)

    def _first_nonfinite(self, grads):
        """The label of the first grad holding inf or NaN (or whose squares overflow)."""
        for grad, label in zip(grads, self._labels):
            if grad is not None and not math.isfinite(self._backend.sum_squares(
                    bits(self._backend.flat(grad)), _codecs.codec_of(dtype_of(grad)))):
                return "grad for " + label
        return "a grad"

    def _step_bucket(self, bucket, grads, grad_span, grad_addresses):
        """One step of a bucket whose params all step together.  ``grads``: their flat views;
        ``grad_span``: the same as one span, or None; ``grad_addresses``: every grad's address
        (for the multi-tensor table), or None."""
        hyper = self._group_cache[bucket.group_index][0]
        started, names = bucket.started, bucket.names
        fresh = () if len(started) == len(names) else tuple(n for n in names if n not in started)
        step = bucket.step + 1
        host = self._advance_host(hyper, step, bucket.host)
        used = self._host_for_step(hyper, step, bucket.host, host)
        # the scalars: made anew when the group or the fresh states change, otherwise only the
        # step_fields (Adam's bias corrections) are rewritten
        scalars = bucket.scalars
        if scalars is None or bucket.scalars_fresh != fresh:
            scalars = self._backend.scalars_argument(self._scalars(hyper, step, fresh, **used),
                                                     bucket.compute_dtype)
        elif self.step_fields:
            scalars = self._backend.update_scalars(scalars, self._step_indices,
                                                   self._step_scalars(hyper, step, **used))
        grad_fields = _signed(self._grad_fields, hyper)
        if scalars is not bucket.scalars or bucket.grad_fields != grad_fields:
            scalars = self._backend.update_scalars(scalars, (0, 1), grad_fields)
        if bucket.storage.stochastic:
            scalars = self._salted(scalars, step)
        bucket.scalars, bucket.scalars_fresh, bucket.grad_fields = scalars, fresh, grad_fields
        if MASTER in fresh:
            bucket.start_master()
        if grad_span is not None:  # params and grads each one span: one call
            bucket.span_call(bucket.param_span, grad_span, *bucket.span_states, scalars)
        elif bucket.table_call is not None:  # separate arrays: one multi-tensor call
            bucket.table_call(self._intake.param_addresses, grad_addresses, *bucket.table,
                              *bucket.table_states, scalars)
        else:
            for param, grad, (call, states) in zip(bucket.flat_params, grads, bucket.param_calls):
                call(param, grad, *states, scalars)
        bucket.step, bucket.host = step, host
        if fresh:
            started.update(names)

    def _use_layout(self, bucket, hyper, kernel_name, names):
        storage, buffers = bucket.storage, names
        if bucket.quantized and names:  # each state as codes and scales; signed maps by name
            storage = storage._replace(signs=tuple(map(_quant.is_signed, names)))
            buffers = tuple(b for n in names for b in (n, n + ABSMAX))
        elif bucket.quantized:  # no state to quantize (plain SGD): the ordinary kernel
            storage = storage._replace(state="native")
        if storage.master:
            buffers = buffers + (MASTER,)
        for name in buffers:
            if name not in bucket.buffers:
                self._allocate(bucket, name, hyper)
        bucket.use_layout((kernel_name, names), self._backend.kernel(kernel_name, storage),
                          buffers)
        if self._step_indices is None:  # where the step_fields sit in the scalars namedtuple
            fields = _math.SCALARS[_math.KERNELS[kernel_name][1]]._fields
            self._step_indices = [fields.index(name) for name in self.step_fields]

    def _step_params(self, bucket, grads, all_grads=None):
        """Each param with its own step count (once some grads were None): the params whose
        histories are alike step together, in one launch over a table of them where the
        backend has such tables (CUDA; ``all_grads``: every flat grad), else one call each."""
        hyper, names = self._group_cache[bucket.group_index][0], bucket.names
        bucket.diverge()
        alike = {}  # (step count, started states, host scalars) -> the params with grads
        for j, (grad, (step, started, host)) in enumerate(zip(grads, bucket.per_param)):
            if grad is not None:
                alike.setdefault((step, frozenset(started), tuple(host.items())), []).append(j)
        for positions in alike.values():
            step, started, host = bucket.per_param[positions[0]]
            fresh = tuple(n for n in names if n not in started)
            step += 1
            after = self._advance_host(hyper, step, host)
            used = self._host_for_step(hyper, step, host, after)
            scalars = self._backend.update_scalars(self._backend.scalars_argument(
                self._scalars(hyper, step, fresh, **used), bucket.compute_dtype),
                (0, 1), _signed(self._grad_fields, hyper))
            if bucket.storage.stochastic:
                scalars = self._salted(scalars, step)
            for j in positions:
                if MASTER in fresh:
                    bucket.start_master(j)
                history = bucket.per_param[j]
                history[0], history[2] = step, after
                history[1].update(names)
            subset = bucket.table_of(positions)
            if subset is not None:
                bucket.table_call(None, all_grads, *subset, *bucket.table_states, scalars)
                continue
            for j in positions:
                call, states = bucket.param_calls[j]
                call(bucket.flat_params[j], grads[j], *states, scalars)

    def _salted(self, scalars, step):
        """``scalars`` with the rounding salt of step number ``step`` (a param's own count)."""
        return self._backend.update_scalars(
            scalars, (_SALT,), (_codecs.rounding_salt(self._rounding_seed, step),))

    def _allocate(self, bucket, name, hyper):
        bounds = bucket.bounds  # each param's part of the buffer
        if name == MASTER:  # filled from the params at their first step (Bucket.start_master)
            buffer = self._backend.full(bucket.size, _codecs.FLOAT32, 0.0)
        elif bucket.quantized:
            # the initial value v0 (0, or Adagrad's initial_accumulator_value ...) is v0 itself
            # as scale and the code of 1 (or scale 0 and the code of 0): exact
            state = name.removesuffix(ABSMAX)
            initial = float(self._initial_value(state, hyper))
            if name != state:  # the scales: one per block
                buffer = self._backend.full(bucket.blocks, _quant.SCALE, abs(initial))
                bounds = bucket.block_bounds
            else:
                codes, _ = _quant.quantize_array(np.array([1.0 if initial else 0.0]),
                                                 _quant.is_signed(state))
                buffer = self._backend.full(bucket.size, _quant.CODE, codes[0])
        else:
            buffer = self._backend.full(bucket.size, bucket.state_dtype,
                                        self._initial_value(name, hyper))
        bucket.buffers[name] = buffer
        bucket.views[name] = [buffer[start:stop] for start, stop in bounds]

    # ------------------------------------------------------------------------ grads and groups
    def _grad_list(self, grads):
        return grad_list(grads, self._names, len(self._params))

    def _refresh_group(self, gi):
        group = self.param_groups[gi]
        # the kernels use a frozen copy: lists (betas=[...]) as the tuples they held when checked,
        # 0-d arrays (lr=np.array(0.1)) as their numbers
        hyper = {k: _frozen(v) for k, v in group.items() if k != "params"}
        kernel_name, names = self._layout(hyper)
        # the entries that can change in place, and their frozen values: compared every step
        mutable = tuple((k, v) for k, v in hyper.items() if _mutable(group[k]))
        self._group_cache[gi] = (hyper, kernel_name, names, tuple(group.values()), mutable)
        for bucket in self._buckets:
            if bucket.group_index == gi:
                bucket.scalars = None

    def _check_labelled(self, group_index, group, where="param_groups"):
        """Check one group's hyper-parameters: every known one present (a deleted ``eps``
        would otherwise surface as a kernel-argument error), none unknown, each valid."""
        label = f"{where}[{group_index}]"
        hyper = {k: v for k, v in group.items() if k != "params"}
        unknown = sorted(set(hyper) - set(self.defaults), key=repr)
        if unknown:
            raise ValueError(f"{label} has unknown hyper-parameter(s) {unknown} for "
                             f"{type(self).__name__}; known: {sorted(self.defaults)}")
        missing = sorted(set(self.defaults) - set(hyper))
        if missing:
            raise ValueError(f"{label} is missing hyper-parameter(s) {missing} of "
                             f"{type(self).__name__}")
        try:
            self._check(hyper)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{label}: {exc}") from None

    def _check(self, hyper):
        from .. import functional
        functional.check_hyper(self.hyper_checks, hyper)

    def _initial_value(self, name, hyper):
        return 0.0

    def _advance_host(self, hyper, step, host):
        """The host scalars after step number ``step`` (a new dict; ``host`` is not changed)."""
        return host

    def _host_for_step(self, hyper, step, before, after):
        """The host scalars step number ``step`` computes with, given those it found
        (``before``) and those it leaves (``after``): ``after`` unless overridden (NAdam's
        mu_product includes this step's mu_t; ASGD's eta and mu are the previous step's)."""
        return after

    def __repr__(self):
        lines = [f"{type(self).__name__}(device={self.device!r}, params={len(self._params)}, "
                 f"step_count={self.step_count})"]
        for gi, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v!r}" for k, v in group.items() if k != "params")
            lines.append(f"  group {gi} ({len(group['params'])} params): {hyper}")
        return "\n".join(lines)


def grad_list(grads, names, count):
    """``grads`` as a list aligned with ``count`` params (named ``names``, or in order when None):
    the structure checked, the arrays not yet (the data-parallel wrapper uses it too)."""
    if names is not None:
        if not isinstance(grads, Mapping):
            raise TypeError("params were given by name, so grads must be a dict with the "
                            f"same names, got {type(grads).__name__}")
        try:
            if len(grads) == len(names):  # all names found and none unknown
                return [grads[n] for n in names]
        except KeyError:
            pass
        # a name the optimizer does not have would never be trained: refuse it too
        missing = [n for n in names if n not in grads]
        extra = [n for n in grads if n not in set(names)]
        raise ValueError(f"grads names do not match params: missing {missing}, "
                         f"unknown {extra}")
    if not isinstance(grads, (list, tuple)):
        raise TypeError("grads must be a list or tuple with one array per param, in "
                        f"param order, got {type(grads).__name__}")
    if len(grads) != count:
        raise ValueError(f"got {len(grads)} grads for {count} params")
    return grads


def _check_clipping(max_grad_norm, clip_value, skip_if_nonfinite, error_if_nonfinite):
    """None when step() was asked for no clipping or non-finite check, else True (after
    checking)."""
    check.flag("skip_if_nonfinite", skip_if_nonfinite)
    check.flag("error_if_nonfinite", error_if_nonfinite)
    if skip_if_nonfinite and error_if_nonfinite:
        raise ValueError("give skip_if_nonfinite or error_if_nonfinite, not both")
    if max_grad_norm is not None and clip_value is not None:
        raise ValueError("give max_grad_norm or clip_value, not both")
    if max_grad_norm is not None:
        check.non_negative("max_grad_norm", max_grad_norm)
    if clip_value is not None:
        check.non_negative("clip_value", clip_value)
    if max_grad_norm is None and clip_value is None and not (skip_if_nonfinite
                                                             or error_if_nonfinite):
        return None
    return True


def _signed(grad_fields, hyper):
    """The (grad_scale, clip_value) scalars fields of a group: the scale is negated to
    maximize (see _math.prepared_grad)."""
    return (-grad_fields[0], grad_fields[1]) if hyper["maximize"] else grad_fields


def _clip_scale(max_grad_norm, norm):
    """torch.nn.utils.clip_grad_norm_'s factor, min(1, max_norm / (norm + 1e-6)); NaN stays."""
    if max_grad_norm is None:
        return 1.0
    coefficient = max_grad_norm / (norm + 1e-6)
    return coefficient if math.isnan(coefficient) else min(coefficient, 1.0)
