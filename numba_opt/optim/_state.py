"""The optimizer's state as users and checkpoints see it: ``opt.state``, ``state_dict()`` and
``load_state_dict()`` with every check a saved state must pass before anything changes, and the
per-buffer questions ``nopt.load`` asks (which buffers a param has, their dtypes and shapes).

``StateMixin`` is one half of ``optim.base.Optimizer`` (the other steps the params); it reads
the buckets (``optim._buckets``) and the options the constructor set.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _codecs, _quant, _validation as check
from .._interface import describe, fortran_order
from ._buckets import ABSMAX, MASTER, _States

STATE_DICT_FORMAT = 1
SEED = _codecs.ROUNDING_SEED  # the state_dict entry of the stochastic rounding seed


def _locked(method):
    """Run ``method`` holding the optimizer's lock (one step, snapshot or load at a time)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


def _frozen(value, sequence=tuple):
    """A hyper-parameter with nothing that can change in place: 0-d arrays as their numbers,
    lists and tuples as ``sequence`` (tuples for the kernels), recursively."""
    if isinstance(value, (list, tuple)):
        return (sequence or type(value))(_frozen(v, sequence) for v in value)
    if isinstance(value, np.ndarray):
        return value.item()
    return value


def _mutable(value):
    """Whether a hyper-parameter can change in place (a list, an array, or a tuple of them)."""
    return isinstance(value, (list, np.ndarray)) or (
        isinstance(value, tuple) and any(_mutable(v) for v in value))


def checked_header(state_dict, optimizer_name):
    """The step count of a state_dict of ``optimizer_name``, after checking its kind, keys,
    format and optimizer (the data-parallel wrapper checks its state_dicts with it too)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    missing = {"format", "optimizer", "step_count", "param_groups", "state"} - set(state_dict)
    if missing:
        raise ValueError(f"state_dict is missing {sorted(missing)}")
    if state_dict["format"] != STATE_DICT_FORMAT:
        raise ValueError(f"state_dict format {state_dict['format']!r} is not "
                         f"{STATE_DICT_FORMAT}")
    if state_dict["optimizer"] != optimizer_name:
        raise ValueError(f"state_dict comes from {state_dict['optimizer']}, not "
                         f"{optimizer_name}")
    return check.count("state_dict['step_count']", state_dict["step_count"])


def checked_entry(owner, cls, i, saved, dtype_options=""):
    """Param ``i``'s saved state entry checked against ``owner`` (an optimizer of class
    ``cls``, or the ZeroRedundancyOptimizer wrapping one: anything with ``_params``,
    ``_labels``, ``state_names``, ``_buffer_dtype`` and ``_buffer_shape``): its keys, its host
    scalars and each buffer's type, shape and dtype."""
    param, label = describe(owner._params[i]), owner._labels[i]
    where = f"state_dict['state'][{i}]"
    if not isinstance(saved, Mapping):
        raise TypeError(f"{where} ({label}'s state) must be a dict, got "
                        f"{type(saved).__name__}")
    for key in ("step", *cls.host_state):
        if key not in saved:
            raise ValueError(f"{where} has no {key!r}")
    for key, value in saved.items():
        at = f"{where}[{key!r}]"
        if key == "step":
            check.count(at, value)
        elif key in cls.host_state:
            cls.host_checks[key](at, value)
        elif key not in owner.state_names:
            raise ValueError(f"{at}: {cls.__name__} has no state {key!r}")
        elif owner._buffer_dtype(i, key) is None:
            raise ValueError(f"{at}: {label} has no {key!r} (master_weights keeps float32 "
                             "copies of bfloat16 and float16 params only; with "
                             f"state_dtype='int8', params of {_quant.MIN_SIZE} elements "
                             "or more have codes and absmax scales, the others float32 "
                             "state)")
        elif not isinstance(value, np.ndarray):
            raise TypeError(f"{at} must be a NumPy array, got {type(value).__name__}")
        elif value.shape != owner._buffer_shape(i, key):
            raise ValueError(f"{at} has shape {value.shape}, the optimizer keeps {key!r} "
                             f"of {label} {tuple(param.shape)} in {owner._buffer_shape(i, key)}")
        elif value.dtype != owner._buffer_dtype(i, key):
            raise TypeError(f"{at} has dtype {value.dtype}, the optimizer keeps {key!r} of "
                            f"{label} ({param.dtype}) in {owner._buffer_dtype(i, key)}"
                            f"{dtype_options}")
    return saved


def _host_shaped(flat, param, backend):
    described = describe(param)
    return flat.reshape(described.shape, order="F" if fortran_order(param) else "C")


def _device_shaped(flat, param, backend):
    return backend.shaped(flat, param)


class StateMixin:
    """State, state_dict and load_state_dict of ``Optimizer`` (see the module docstring)."""

    # ------------------------------------------------------------------------------ the state
    @property
    def state(self) -> list[dict[str, Any]]:
        """Per param (a list in param order): {} before its first step, else its ``step`` count,
        its host scalars (NAdam's ``mu_product``) and a view of each state buffer shaped like
        the param (writing to a view changes the state).  When params were given as a dict, the
        list is indexable by their names too: ``opt.state["W"]``."""
        states = _States() if self._names is None else _States(self._names)
        states.extend(self._entries(self._shaped_view))
        return states

    def _entries(self, buffer_view):
        """Per param, {} before its first step, else its step count, host scalars and
        ``buffer_view(bucket, name, j, i)`` of each state buffer it has (j: its place in the
        bucket, i: in the optimizer)."""
        for i in range(len(self._params)):
            bucket, j = self._bucket_of[i]
            step, started, host = bucket.history(j)
            entry = {"step": step, **host} if step else {}
            if step:
                for name in sorted(started, key=self.state_names.index):
                    entry[name] = buffer_view(bucket, name, j, i)
            yield entry

    def _shaped_view(self, bucket, name, j, i):
        """What ``.state`` shows of param i's buffer ``name``: its view, shaped once per buffer
        (reshaping a device array costs microseconds, and loops read ``.state`` every step)."""
        views = bucket.views[name]
        cached = bucket.shaped_views.get(name)
        if cached is None or cached[0] is not views:  # a new buffer (allocated, or loaded)
            cached = bucket.shaped_views[name] = (views, {})
        if j not in cached[1]:
            cached[1][j] = self._state_view(i, name, self._part(bucket, name, j,
                                                                bucket.buffers[name]),
                                            _device_shaped)
        return cached[1][j]

    def _part(self, bucket, name, j, buffer):
        """Param j's flat part of ``buffer`` (the bucket's buffer ``name``, or a host copy of
        it): its elements, or for absmax scales its blocks'."""
        start, stop = (bucket.block_bounds if name.endswith(ABSMAX) else bucket.bounds)[j]
        return buffer[start:stop]

    def _state_view(self, i, name, flat, shape):
        """Param i's flat part of its state buffer ``name`` as ``state`` and ``state_dict``
        show it: ``shape``d like the param (_device_shaped for views, _host_shaped for host
        copies); absmax scales stay 1-D, one per block."""
        return flat if name.endswith(ABSMAX) else shape(flat, self._params[i], self._backend)

    @_locked
    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of the optimizer: hyper-parameters, step counters and host (NumPy) copies
        of every state buffer.  Params are referred to by position, as in torch."""
        copies = {}  # (bucket, state name) -> the host copy of its buffer

        def host_view(bucket, name, j, i):
            # one device-to-host copy per buffer (pinned memory on the GPU), sliced per param
            key = (id(bucket), name)
            if key not in copies:
                copies[key] = self._backend.to_host(bucket.buffers[name])
            return self._state_view(i, name, self._part(bucket, name, j, copies[key]),
                                    _host_shaped)

        return {
            "format": STATE_DICT_FORMAT,
            "optimizer": type(self).__name__,
            "step_count": self.step_count,
            "param_groups": [{**{k: _frozen(v, None)  # lists stay lists, copied
                                 for k, v in g.items() if k != "params"},
                              "params": list(indices)}
                             for g, indices in zip(self.param_groups, self._group_indices)],
            "state": {i: entry for i, entry in enumerate(self._entries(host_view)) if entry},
            **({SEED: self._rounding_seed} if self._stochastic_rounding else {}),
        }

    @_locked
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``: validated whole before anything changes, then copied in
        (onto this optimizer's device), so a resumed run repeats the uninterrupted one exactly.

        Each saved group must hold every hyper-parameter of this optimizer.  Each param's entry
        in ``state`` must agree with its ``step``: a param that never stepped (no entry, or
        ``step`` 0) holds no buffer; one that stepped holds every buffer all of its steps create
        (Adam's exp_avg and exp_avg_sq: ``state_names`` less ``switched_states``), since
        without it the run would silently restart that average from zero.  A buffer that a
        hyper-parameter switches on (``switched_states``: SGD's momentum_buffer, amsgrad's
        max_exp_avg_sq, ...) may be absent: switched on mid-run, it starts at the param's next
        step, and a state_dict saved before then lacks it.  The limitation: such a buffer
        deleted by hand cannot be told from that case, and starts afresh; nor can a whole
        entry deleted for a param that did step (params with None grads never step)."""
        step_count = checked_header(state_dict, type(self).__name__)
        seed = self._checked_seed(state_dict)
        new_hyper = self._checked_groups(state_dict["param_groups"])
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError("state_dict['state'] must be a dict from param index to that "
                            f"param's state, got {type(saved_state).__name__}")
        new_state = {}
        for i, saved in saved_state.items():
            if not (isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                    and 0 <= i < len(self._params)):
                raise ValueError(f"state_dict['state'] has an entry for param {i!r}, the "
                                 f"optimizer has {len(self._params)} params")
            new_state[int(i)] = self._checked_state(int(i), saved)
        # everything checked: now apply
        for group, hyper in zip(self.param_groups, new_hyper):
            group.update({k: list(v) if isinstance(v, list) else v for k, v in hyper.items()})
        self._group_cache = [None] * len(self.param_groups)
        for bucket in self._buckets:
            self._load_bucket(bucket, new_state)
        self.step_count = step_count
        self._rounding_seed = seed

    def _checked_seed(self, state_dict):
        """The stochastic rounding seed a state_dict holds: there exactly when this optimizer
        rounds stochastically (the run it resumes did too, or the saved state was rounded
        otherwise)."""
        if not self._stochastic_rounding:
            if SEED in state_dict:
                raise ValueError(f"state_dict holds a {SEED!r}: it was saved with "
                                 "stochastic_rounding=True, and this optimizer rounds to "
                                 "nearest; make it with stochastic_rounding=True to resume that "
                                 "run")
            return self._rounding_seed
        if SEED not in state_dict:
            raise ValueError(f"state_dict has no {SEED!r}: it was saved without "
                             "stochastic_rounding, and this optimizer rounds stochastically; "
                             "make it with stochastic_rounding=False to resume that run")
        return check.count(f"state_dict[{SEED!r}]", state_dict[SEED])

    def _checked_groups(self, groups):
        """The saved groups' hyper-parameters (without 'params'), each group checked."""
        if not isinstance(groups, (list, tuple)):
            raise TypeError("state_dict['param_groups'] must be a list of dicts, got "
                            f"{type(groups).__name__}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer has "
                             f"{len(self.param_groups)}")
        new_hyper = []
        for gi, (saved, indices) in enumerate(zip(groups, self._group_indices)):
            if not isinstance(saved, Mapping):
                raise TypeError(f"state_dict['param_groups'][{gi}] must be a dict, got "
                                f"{type(saved).__name__}")
            params = saved.get("params")
            if not isinstance(params, (list, tuple)) or list(params) != list(indices):
                raise ValueError(f"state_dict['param_groups'][{gi}] holds params {params!r}, "
                                 f"the optimizer's holds {list(indices)}")
            saved = {**self.hyper_added_later, **saved}  # a state_dict from before they were
            self._check_labelled(gi, saved, where="state_dict['param_groups']")
            new_hyper.append({k: v for k, v in saved.items() if k != "params"})
        return new_hyper

    #: hyper-parameters added after a release, with the value that reproduces the older
    #: behaviour: a saved group without one loads with that value
    hyper_added_later = {}

    #: the state buffers a hyper-parameter switches on (SGD's momentum_buffer with momentum > 0):
    #: absent, after a step, for a param that stepped before the switch (see load_state_dict)
    switched_states = ()
    #: name -> check(name, value) for every host scalar in ``host_state`` (NAdam's mu_product)
    host_checks = {}

    def _checked_state(self, i, saved):
        """One param's saved state, checked: keys, host scalars, buffers, and that its step
        count and buffers agree (see load_state_dict)."""
        checked_entry(self, type(self), i, saved, self._dtype_options())
        self._check_history(f"state_dict['state'][{i}] ({self._labels[i]})", saved,
                            self._state_names_of(i))
        return saved

    def _buffer_dtype(self, i, name):
        """The dtype of param i's state buffer ``name``; None if it has no such buffer."""
        bucket = self._bucket_of[i][0]
        if name == MASTER:
            return _codecs.FLOAT32 if bucket.storage.master else None
        if name.endswith(ABSMAX):
            return _quant.SCALE if bucket.quantized else None
        return bucket.state_dtype

    def _buffer_shape(self, i, name):
        """The shape of param i's state buffer ``name``: the param's, or one scale per block."""
        shape = describe(self._params[i]).shape
        return (_quant.blocks(math.prod(shape)),) if name.endswith(ABSMAX) else shape

    def _state_names_of(self, i):
        """The state buffers param i may have (MASTER only for master-weighted params, the
        absmax scales only for params with int8 state)."""
        bucket = self._bucket_of[i][0]
        return tuple(n for n in self.state_names
                     if (n != MASTER or bucket.storage.master)
                     and (not n.endswith(ABSMAX) or bucket.quantized))

    def _dtype_options(self):
        return f" (state_dtype={self._state_dtype!r}, master_weights={self._master_weights})"

    @property
    def state_dtype(self):
        """None (the state takes the dtype the update works in: the param's, or float32 with
        master weights), 'float32' or 'bfloat16'; fixed when the optimizer is made."""
        return self._state_dtype

    @state_dtype.setter
    def state_dtype(self, value):
        raise AttributeError("state_dtype is fixed when the optimizer is made (its buffers are "
                             "allocated in it); make a new optimizer with the state_dtype "
                             "you want")

    @property
    def master_weights(self):
        """Whether bfloat16 and float16 params have a float32 master copy in the state; fixed
        when the optimizer is made."""
        return self._master_weights

    @master_weights.setter
    def master_weights(self, value):
        raise AttributeError("master_weights is fixed when the optimizer is made; make a new "
                             "optimizer with the master_weights you want")

    @property
    def stochastic_rounding(self):
        """Whether the values stored in bfloat16 or float16 round stochastically (else to
        nearest, ties to even); fixed when the optimizer is made."""
        return self._stochastic_rounding

    @stochastic_rounding.setter
    def stochastic_rounding(self, value):
        raise AttributeError("stochastic_rounding is fixed when the optimizer is made; make a "
                             "new optimizer with the stochastic_rounding you want")

    @property
    def rounding_seed(self):
        """The seed of stochastic rounding (0 unless given; restored by load_state_dict)."""
        return self._rounding_seed

    def _check_history(self, where, saved, names):
        """A param's step count and the buffers (of ``names``) and host scalars it holds must
        agree."""
        step = saved["step"]
        held = [k for k in names if k in saved]
        if step == 0:
            if held:
                raise ValueError(f"{where} has step 0 but holds {held}: a param that never "
                                 "stepped has no state buffers")
            moved = [k for k, initial in self.host_state.items() if saved[k] != initial]
            if moved:
                raise ValueError(f"{where} has step 0 but {moved} differ from their initial "
                                 f"values {[self.host_state[k] for k in moved]}")
            return
        absent = [k for k in names if k not in saved
                  and k.removesuffix(ABSMAX) not in self.switched_states]
        unpaired = [k for k in names if k.endswith(ABSMAX)
                    and (k in saved) != (k.removesuffix(ABSMAX) in saved)]
        if unpaired:
            raise ValueError(f"{where} holds one of {unpaired[0].removesuffix(ABSMAX)!r} and "
                             f"{unpaired[0]!r} without the other: int8 state is codes and "
                             "their scales together")
        if absent:
            raise ValueError(f"{where} has stepped {step} times but lacks {absent}: every "
                             f"{type(self).__name__} step updates it, and resuming without it "
                             "would restart it from zero")

    def _load_bucket(self, bucket, new_state):
        hyper = {k: v for k, v in self.param_groups[bucket.group_index].items() if k != "params"}
        bucket.reset()
        entries = [new_state.get(i, {}) for i in bucket.indices]
        histories = [[int(e.get("step", 0)), {k for k in e if k in self.state_names},
                      {k: float(e.get(k, v)) for k, v in self.host_state.items()}]
                     for e in entries]
        for name in sorted(set().union(*(h[1] for h in histories)), key=self.state_names.index):
            self._allocate(bucket, name, hyper)
        for j, entry in enumerate(entries):
            for name, value in entry.items():
                if name in self.state_names:
                    self._backend.upload(bucket.views[name][j], value, bucket.params[j])
        if all(h == histories[0] for h in histories):
            bucket.step, bucket.started, bucket.host = histories[0]
        else:
            bucket.per_param = histories
