"""Optimizer: parameter groups, validation, state buffers, step counters and state_dict.

Subclasses say only what differs between optimizers, through four hooks that forward to
``numba_opt.functional`` (where the host-side arithmetic lives):
- ``_check(hyper)``: validate one group's hyper-parameters (raise, never modify);
- ``_layout(group)``: the kernel name and the state buffers it updates, in kernel order;
- ``_scalars(group, dtype, step, fresh)``: the kernel's scalar namedtuple for this step;
  ``fresh`` names the buffers created just now (SGD's first momentum step depends on it);
- ``_initial_value(name, group)``: the fill value of a new state buffer (0 unless overridden).
"""
from collections.abc import Mapping

import numpy as np

from .. import _validation as check, dispatch

STATE_DICT_FORMAT = 1


class Optimizer:
    #: every state buffer name this optimizer may create (for load_state_dict validation)
    state_names = ()

    def __init__(self, params, defaults, device="auto"):
        self.defaults = dict(defaults)
        groups, names = _normalise_params(params)
        params_flat = [p for group in groups for p in group["params"]]
        self._labels = ([f"params[{n!r}]" for n in names] if names is not None
                        else [f"params[{i}]" for i in range(len(params_flat))])
        self._names = names
        for param, label in zip(params_flat, self._labels):
            check.check_param(param, label)
        _reject_shared_memory(params_flat, self._labels)

        self.param_groups = []
        self._group_indices = []
        start = 0
        for gi, group in enumerate(groups):
            unknown = sorted(set(group) - set(self.defaults) - {"params"})
            if unknown:
                raise ValueError(f"param_groups[{gi}] has unknown hyper-parameter(s) {unknown} "
                                 f"for {type(self).__name__}; known: {sorted(self.defaults)}")
            filled = {**self.defaults, **group, "params": list(group["params"])}
            self._check_labelled(gi, filled)
            self.param_groups.append(filled)
            self._group_indices.append(range(start, start + len(filled["params"])))
            start += len(filled["params"])

        self.device = dispatch.resolve_device(device, zip(self._labels, params_flat))
        self._backend = dispatch.backend(self.device)
        self._params = params_flat
        self._flat_params = [self._backend.flat(p) for p in params_flat]
        self.state = [{} for _ in params_flat]  # per param: "step" and its buffers
        self.step_count = 0

    # ------------------------------------------------------------------------------- stepping
    def step(self, grads):
        """Update every param in place from ``grads`` (same structure and order as the params:
        a sequence, or a dict with the same names).  A ``None`` grad skips its param, as in
        torch.  Everything is validated before anything is modified."""
        grads = self._match_grads(grads)
        for gi, group in enumerate(self.param_groups):
            self._check_labelled(gi, group)
        flat = self._backend.flat
        for group, indices in zip(self.param_groups, self._group_indices):
            kernel_name, names = self._layout(group)
            kernel = getattr(self._backend, kernel_name)
            for i in indices:
                if grads[i] is None:
                    continue
                param, state = self._params[i], self.state[i]
                fresh = [n for n in names if n not in state]
                for name in fresh:
                    state[name] = self._backend.full_like(param, self._initial_value(name, group))
                state["step"] = state.get("step", 0) + 1
                h = self._scalars(group, param.dtype, state["step"], fresh)
                states = tuple(flat(state[n]) for n in names)
                kernel(self._flat_params[i], flat(grads[i]), states, h)
        self.step_count += 1

    def _match_grads(self, grads):
        """grads as a list aligned with the params, every entry checked against its param."""
        if self._names is not None:
            if not isinstance(grads, Mapping):
                raise TypeError("params were given by name, so grads must be a dict with the "
                                f"same names, got {type(grads).__name__}")
            missing = [n for n in self._names if n not in grads]
            extra = [n for n in grads if n not in set(self._names)]
            if missing or extra:
                raise ValueError(f"grads names do not match params: missing {missing}, "
                                 f"unknown {extra}")
            grads = [grads[n] for n in self._names]
        else:
            if not isinstance(grads, (list, tuple)):
                raise TypeError("grads must be a list or tuple with one array per param, in "
                                f"param order, got {type(grads).__name__}")
            if len(grads) != len(self._params):
                raise ValueError(f"got {len(grads)} grads for {len(self._params)} params")
        for grad, param, label in zip(grads, self._params, self._labels):
            if grad is None:
                continue
            name = "grad for " + label
            check.check_like(grad, param, name, label)
            where = dispatch.location(grad)
            if where != self.device:
                raise TypeError(f"{name} lives on {where} but {label} lives on {self.device}; "
                                "numba_opt never copies between host and device")
        return grads

    def _check_labelled(self, group_index, group):
        hyper = {k: v for k, v in group.items() if k != "params"}
        unknown = sorted(set(hyper) - set(self.defaults))
        if unknown:
            raise ValueError(f"param_groups[{group_index}] has unknown hyper-parameter(s) "
                             f"{unknown}; known: {sorted(self.defaults)}")
        try:
            self._check(hyper)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"param_groups[{group_index}]: {exc}") from None

    def _initial_value(self, name, group):
        return 0.0

    # ------------------------------------------------------------------------------ state dict
    def state_dict(self):
        """A checkpoint of the optimizer: hyper-parameters, step counters and host (NumPy) copies
        of every state buffer.  Params are referred to by position, as in torch."""
        to_host = self._backend.to_host
        return {
            "format": STATE_DICT_FORMAT,
            "optimizer": type(self).__name__,
            "step_count": self.step_count,
            "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                              "params": list(indices)}
                             for g, indices in zip(self.param_groups, self._group_indices)],
            "state": {i: {k: (v if k == "step" else to_host(v)) for k, v in st.items()}
                      for i, st in enumerate(self.state) if st},
        }

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``: validated whole before anything changes, then copied in
        (onto this optimizer's device), so a resumed run repeats the uninterrupted one exactly."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"format", "optimizer", "step_count", "param_groups", "state"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}")
        if state_dict["format"] != STATE_DICT_FORMAT:
            raise ValueError(f"state_dict format {state_dict['format']!r} is not "
                             f"{STATE_DICT_FORMAT}")
        if state_dict["optimizer"] != type(self).__name__:
            raise ValueError(f"state_dict comes from {state_dict['optimizer']}, not "
                             f"{type(self).__name__}")
        step_count = check.count("state_dict['step_count']", state_dict["step_count"])
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer has "
                             f"{len(self.param_groups)}")
        new_hyper = []
        for gi, (saved, indices) in enumerate(zip(groups, self._group_indices)):
            if list(saved.get("params", ())) != list(indices):
                raise ValueError(f"state_dict param_groups[{gi}] holds params "
                                 f"{saved.get('params')}, the optimizer's holds {list(indices)}")
            hyper = {k: v for k, v in saved.items() if k != "params"}
            self._check_labelled(gi, {**self.defaults, **hyper})
            new_hyper.append(hyper)
        new_state = [{} for _ in self._params]
        for i, saved in state_dict["state"].items():
            if not (isinstance(i, (int, np.integer)) and 0 <= i < len(self._params)):
                raise ValueError(f"state_dict['state'] has an entry for param {i!r}, the "
                                 f"optimizer has {len(self._params)} params")
            param, label = self._params[i], self._labels[i]
            for key, value in saved.items():
                where = f"state_dict['state'][{i}][{key!r}]"
                if key == "step":
                    new_state[i]["step"] = check.count(where, value)
                    continue
                if key not in self.state_names:
                    raise ValueError(f"{where}: {type(self).__name__} has no state {key!r}")
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"{where} must be a NumPy array, got {type(value).__name__}")
                if value.shape != param.shape:
                    raise ValueError(f"{where} has shape {value.shape}, {label} has {param.shape}")
                if value.dtype != param.dtype:
                    raise TypeError(f"{where} has dtype {value.dtype}, {label} has {param.dtype}")
                new_state[i][key] = value
        # everything checked: now apply
        for group, hyper in zip(self.param_groups, new_hyper):
            group.update(hyper)
        self.state = [{k: (v if k == "step" else self._backend.from_host(v, like=self._params[i]))
                       for k, v in st.items()} for i, st in enumerate(new_state)]
        self.step_count = step_count

    def __repr__(self):
        lines = [f"{type(self).__name__}(device={self.device!r}, params={len(self._params)}, "
                 f"step_count={self.step_count})"]
        for gi, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v!r}" for k, v in group.items() if k != "params")
            lines.append(f"  group {gi} ({len(group['params'])} params): {hyper}")
        return "\n".join(lines)


def _as_param_list(value, where):
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"{where} must be an ordered sequence of arrays, got a set (its order "
                        "is arbitrary, so grads could not be matched to params)")
    if check.is_array(value):
        raise TypeError(f"{where} must be a sequence of arrays, got a single array; wrap it "
                        "in a list")
    try:
        params = list(value)
    except TypeError:
        raise TypeError(f"{where} must be a sequence of arrays, got {type(value).__name__}") \
            from None
    if not params:
        raise ValueError(f"{where} is empty")
    return params


def _normalise_params(params):
    """(groups, names): groups as dicts with a 'params' list; names when params was a dict."""
    if isinstance(params, Mapping):
        names = list(params)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"param names must be strings, got {bad[0]!r}")
        return [{"params": _as_param_list(params.values(), "params")}], names
    items = _as_param_list(params, "params")
    if not any(isinstance(item, Mapping) for item in items):
        return [{"params": items}], None
    if not all(isinstance(item, Mapping) for item in items):
        raise TypeError("params mixes arrays and group dicts; give either a list of arrays or "
                        "a list of {'params': [...], ...} groups")
    groups = []
    for gi, group in enumerate(items):
        if "params" not in group:
            raise ValueError(f"param_groups[{gi}] has no 'params' entry")
        groups.append({**group, "params": _as_param_list(group["params"],
                                                        f"param_groups[{gi}]['params']")})
    return groups, None


def _reject_shared_memory(arrays, labels):
    """Each param must own its memory: the same array twice, or overlapping views, would be
    updated twice per step.  Contiguous arrays occupy [start, start + nbytes)."""
    spans = [(*check.data_span(array), label) for array, label in zip(arrays, labels)]
    spans.sort()
    reach, reach_label = None, None  # the furthest end so far, and whose it is
    for start, end, label in spans:
        if reach is not None and start < reach and end > start:
            raise ValueError(f"{label} shares memory with {reach_label} (the same array twice, "
                             "or overlapping views); each array may appear once")
        if reach is None or end > reach:
            reach, reach_label = end, label
