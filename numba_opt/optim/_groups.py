"""Param groups: reading the ``params`` argument into groups, the one-owner rule for param
memory, and ``Optimizer.add_param_group`` (checked whole, then applied, as at construction)."""
from collections.abc import Mapping

from .. import _validation as check, dispatch
from ..flat import FlatParams
from ._grads import Intake


def add_param_group(opt, param_group):
    """Add ``param_group`` to ``opt`` (see ``Optimizer.add_param_group``): every check first,
    then the new group, its params and buckets are recorded; a refusal changes nothing."""
    if not isinstance(param_group, Mapping):
        raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
    if "params" not in param_group:
        raise ValueError("param_group has no 'params' entry")
    gi = len(opt.param_groups)
    arrays, names = _added_params(opt, param_group["params"], f"param_groups[{gi}]['params']")
    first = len(opt._params)
    labels = ([f"params[{n!r}]" for n in names] if names is not None
              else [f"params[{first + k}]" for k in range(len(arrays))])
    for array, label in zip(arrays, labels):
        check.check_param(array, label)
    owner = {id(p): i for i, p in enumerate(opt._params)}
    for array, label in zip(arrays, labels):
        if id(array) in owner:
            i = owner[id(array)]
            group = next(g for g, ix in enumerate(opt._group_indices) if i in ix)
            raise ValueError(f"{label} is already {opt._labels[i]} in param_groups[{group}]: "
                             "some parameters appear in more than one parameter group")
    params, all_labels = opt._params + arrays, opt._labels + labels
    _reject_shared_memory(params, all_labels)
    group = {**opt.defaults, **param_group, "params": arrays}
    opt._check_labelled(gi, group)
    dispatch.resolve_device(opt.device, zip(labels, arrays))
    indices = list(range(first, len(params)))
    buckets = opt._buckets + opt._group_buckets(gi, indices, params, all_labels)
    intake = Intake(params, all_labels, buckets, opt._backend, opt.device)
    # --- everything checked: apply
    opt.param_groups.append(group)
    opt._group_indices.append(indices)
    opt._group_cache.append(None)
    opt._params, opt._labels = params, all_labels
    if names is not None:
        opt._names = opt._names + names
    opt._adopt_buckets(buckets)
    opt._intake, opt._seen_grads = intake, None


def _added_params(opt, value, where):
    """(arrays, names or None) of an added group's ``params``: named like the optimizer's."""
    if isinstance(value, FlatParams):
        value = value.params
    if opt._names is None:
        if isinstance(value, Mapping):
            raise TypeError(f"{where} is a dict, but the optimizer's params have no names (they "
                            "were not given as a dict); give a list of arrays")
        return _as_param_list([value] if check.is_array(value) else value, where), None
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict name -> array: the optimizer's params were "
                        f"given by name, and grads name every param; got {type(value).__name__}")
    names = list(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"param names must be strings, got {bad[0]!r}")
    taken = [n for n in names if n in set(opt._names)]
    if taken:
        raise ValueError(f"{where} names {taken}, which the optimizer already has")
    return _as_param_list(value.values(), where), names


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
    if isinstance(params, FlatParams):
        params = params.params
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
    spans = sorted((*check.data_span(array), label) for array, label in zip(arrays, labels))
    reach, reach_label = None, None  # the furthest end so far, and whose it is
    for start, end, label in spans:
        if reach is not None and start < reach and end > start:
            raise ValueError(f"{label} shares memory with {reach_label} (the same array twice, "
                             "or overlapping views); each array may appear once")
        if reach is None or end > reach:
            reach, reach_label = end, label
