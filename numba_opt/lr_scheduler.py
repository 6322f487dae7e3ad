"""Learning-rate schedules with torch.optim.lr_scheduler's behaviour.

A scheduler edits ``optimizer.param_groups[i]["lr"]``; call ``scheduler.step()`` once per epoch
(or per step), after ``optimizer.step(...)``.  Like torch, constructing one applies the epoch-0
learning rate, the formulas are torch's recursive ("chainable") forms, so schedulers compose:
``ChainedScheduler([LinearLR(opt, ...), ExponentialLR(opt, ...)])`` multiplies their effects,
and ``SequentialLR`` runs one after another (warm-up, then cosine decay).  Every scheduler's
``base_lrs`` are the lrs the optimizer had when its first scheduler was made (torch's
``initial_lr``), whatever was made since.
``state_dict()`` / ``load_state_dict()`` save and restore a scheduler's position.  A state_dict
also names its scheduler's class (``"scheduler"``, a key torch's state_dicts lack), and
``load_state_dict`` refuses another class's state; it takes exactly the keys its class saves,
each value checked (types, ranges, one lr per param group), the whole state (every
sub-scheduler's, for ``ChainedScheduler`` and ``SequentialLR``) before anything changes.  A
state without the ``"scheduler"`` key (saved before it existed) loads when its keys match.  A
scheduler subclass written elsewhere saves its own attributes too: they load as they are (the
ones it inherits are checked).  Of a user's callables (LambdaLR's and MultiplicativeLR's
``lr_lambda``, CyclicLR's ``scale_fn``) a state keeps what torch keeps: a callable object's
attributes, and None for a function or lambda, whose code is not saved; loading puts the
attributes back into the loading scheduler's own callables.
A group added by ``add_param_group`` after a scheduler was made is scheduled as torch does:
chainable schedules scale its current lr with the others'; a step whose formula needs its
initial lr (LambdaLR, CyclicLR, OneCycleLR, ...) raises a ValueError and changes nothing; a
ReduceLROnPlateau made with one ``min_lr`` covers it.  Such a scheduler's state (lists for the
groups it was made with, last lrs for every group) loads again.
"""
from __future__ import annotations

import bisect
import contextlib
import copy
import math
import numbers
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import _validation as check

if TYPE_CHECKING:
    from .optim import Optimizer


class _StateDict:
    """``state_dict()`` and ``load_state_dict()`` from a table of checks, one per saved key."""

    # attributes holding a user's callables: saved as torch saves them (see _callable_state)
    _callables = ()

    def state_dict(self):
        return _saved(self)

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()`` of this class: its exact keys, each value checked, all
        before anything changes (see the module docstring)."""
        self._apply(self._checked(state_dict))

    def _state_checks(self, state):
        """key -> check(where, value) returning the value to keep, for every saved key (some
        schedulers' keys depend on a saved flag: ``state`` is the state being loaded)."""
        raise NotImplementedError

    def _check_together(self, values, where):
        """Rules that tie checked values together (none unless overridden)."""

    def _checked(self, state_dict, where="state_dict"):
        """The values to load from ``state_dict``, all checked; nothing is changed."""
        values = _checked_fields(self, state_dict, where)
        self._check_together(values, where)
        return values

    def _apply(self, values):
        self.__dict__.update(values)


class LRScheduler(_StateDict):
    """Base class: ``get_lr()`` gives the new lr of every group from the current ones."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_start(optimizer, last_epoch)
        self.optimizer = optimizer
        with _all_or_nothing(optimizer):
            self.base_lrs = list(_initial_lrs(optimizer))
            self.last_epoch = -1
            self.step()

    def get_lr(self):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        try:
            # a refused step (a user's lr_lambda, say) moves nothing, momenta included
            with _all_or_nothing(self.optimizer):
                self._set_lrs(self.get_lr())
        except BaseException:
            self.last_epoch -= 1
            raise

    def _set_lrs(self, lrs):
        groups = self.optimizer.param_groups
        if len(lrs) != len(groups):
            raise _added_groups_error(self, len(lrs), len(groups))
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def _current(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def _restart(self):
        """Epoch 0 again, from ``base_lrs`` (what torch's SequentialLR does at a milestone: the
        closed form at epoch 0, which every schedule here shares with its first step)."""
        groups = self.optimizer.param_groups
        if len(self.base_lrs) != len(groups):
            raise _added_groups_error(self, len(self.base_lrs), len(groups))
        for group, base in zip(groups, self.base_lrs):
            group["lr"] = base
        self.last_epoch = -1
        self.step()

    def _state_checks(self, state):
        own, now = len(self.base_lrs), len(self.optimizer.param_groups)
        # -1: a scheduler inside a SequentialLR waits there until its milestone
        return {"base_lrs": _lrs(own), "last_epoch": _at_least(-1), "_last_lr": _lrs(own, now)}


def _added_groups_error(scheduler, known, groups):
    """A step whose formula gives lrs for fewer groups than the optimizer has now: groups were
    added (add_param_group) after the scheduler was made, and its formula needs each group's
    initial lr (torch raises too; chainable schedules scale every group's current lr and go
    on)."""
    return ValueError(f"{type(scheduler).__name__} was made for {known} param groups and the "
                      f"optimizer now has {groups} (add_param_group): its formula needs every "
                      f"group's initial lr; make the scheduler after adding the group")


@contextlib.contextmanager
def _all_or_nothing(optimizer):
    """A scheduler that fails while it is made (its first step calls a user's lr_lambda)
    leaves the optimizer's groups and its recorded initial lrs as they were."""
    groups = [dict(group) for group in optimizer.param_groups]
    initial_lrs = optimizer._scheduler_initial_lrs
    try:
        yield
    except BaseException:
        for group, saved in zip(optimizer.param_groups, groups):
            group.clear()
            group.update(saved)
        optimizer._scheduler_initial_lrs = initial_lrs
        raise


def _check_optimizer(optimizer):
    from .optim import Optimizer
    # numba_opt.distributed's ZeroRedundancyOptimizer has param_groups and the initial lrs too
    if not (isinstance(optimizer, Optimizer) or hasattr(optimizer, "_scheduler_initial_lrs")):
        raise TypeError(f"optimizer must be a numba_opt optimizer, got "
                        f"{type(optimizer).__name__}")


def _check_start(optimizer, last_epoch):
    """A scheduler drives a numba_opt optimizer from its start."""
    _check_optimizer(optimizer)
    if last_epoch != -1:
        raise ValueError("last_epoch: resuming is done with load_state_dict(); "
                         "pass last_epoch=-1")


def _saved(scheduler):
    """A scheduler's state: its class name and a copy of its attributes but the optimizer
    (and, of a user's callables, what _callable_state keeps)."""
    callables = scheduler._callables
    state = {"scheduler": type(scheduler).__name__, **copy.deepcopy(
        {k: v for k, v in vars(scheduler).items() if k != "optimizer" and k not in callables})}
    for name in callables:
        value = getattr(scheduler, name)
        state[name] = ([_callable_state(fn) for fn in value] if isinstance(value, list)
                       else _callable_state(value))
    return state


def _callable_state(fn):
    """What a state_dict keeps of a user's callable, as in torch: a copy of a callable
    object's attributes, or None for a function, lambda, method or builtin (code is not
    saved: the scheduler made to load the state brings its own)."""
    if fn is None or not hasattr(fn, "__dict__") or isinstance(
            fn, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return None
    return copy.deepcopy(vars(fn))


def _callable_state_check(fn, what):
    """A saved _callable_state for the scheduler's own callable ``fn`` (named ``what``)."""
    def callable_state(where, value):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be None or a dict of a callable object's "
                            f"attributes, got {type(value).__name__}")
        if _callable_state(fn) is None:
            kind = "None" if fn is None else f"a {type(fn).__name__}"
            raise ValueError(f"{where} holds a callable object's attributes, but this "
                             f"scheduler's {what} is {kind}, which has no attributes to load "
                             f"them into")
        return copy.deepcopy(dict(value))
    return callable_state


def _load_callable_state(fn, state):
    if state is not None:
        vars(fn).update(state)


def _checked_fields(scheduler, state, where):
    """Each value of ``state`` checked by the scheduler's ``_state_checks``: exactly those
    keys, and, if named, the scheduler's own class."""
    name = type(scheduler).__name__
    if not isinstance(state, Mapping):
        raise TypeError(f"{where} must be a dict (a {name} state_dict), got "
                        f"{type(state).__name__}")
    if state.get("scheduler", name) != name:
        raise ValueError(f"{where} comes from {state['scheduler']!r}, not {name}")
    checks = scheduler._state_checks(state)
    if type(scheduler).__module__ != __name__ and type(scheduler).state_dict is _StateDict.state_dict:
        # a subclass written elsewhere saves its own attributes: they load as they are
        checks = {**{k: _as_is for k in vars(scheduler) if k != "optimizer"}, **checks}
    keys = set(state) - {"scheduler"}
    missing, unknown = sorted(set(checks) - keys), sorted(keys - set(checks), key=repr)
    if missing or unknown:
        raise ValueError(f"{where} is not a {name} state: missing keys {missing}, unknown "
                         f"keys {unknown}")
    return {key: checks[key](f"{where}[{key!r}]", state[key]) for key in checks}


def _checked_sub(scheduler, state, where):
    """A sub-scheduler's checked state; a scheduler from elsewhere gets its state as it is,
    for its own load_state_dict, called after every check here passed."""
    return scheduler._checked(state, where) if isinstance(scheduler, _StateDict) else state


def _apply_sub(scheduler, values):
    if isinstance(scheduler, _StateDict):
        scheduler._apply(values)
    else:
        scheduler.load_state_dict(values)


# --- checks for saved values: check(where, value) -> the value to keep
def _lrs(groups, most=None):
    """A list of one lr per param group: exactly ``groups`` of them, or, with ``most``, from
    ``groups`` to ``most``.  A scheduler's own lists (base_lrs, max_lrs, ...) cover the groups
    it was made with; the ``_last_lr`` it saves covers every group at its last step, groups
    added since by ``add_param_group`` too (torch loads such a state: so must we)."""
    most = groups if most is None else most

    def lrs(where, value):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list of {groups} lrs, got "
                            f"{type(value).__name__}")
        if not groups <= len(value) <= most:
            expected = groups if groups == most else f"{groups} to {most}"
            raise ValueError(f"{where} has {len(value)} lrs for {expected} param groups")
        return [check.non_negative(f"{where}[{k}]", v) for k, v in enumerate(value)]
    return lrs


def _none_or(check_value):
    return lambda where, value: None if value is None else check_value(where, value)


def _as_is(where, value):
    """An attribute of a scheduler subclass that declared no checks for it."""
    return copy.deepcopy(value)


def _at_least(low):
    return lambda where, value: check.count(where, value, low)


def _one_of(*options):
    def one_of(where, value):
        if not isinstance(value, str):
            raise TypeError(f"{where} must be one of {list(options)}, got "
                            f"{type(value).__name__}")
        if value not in options:
            raise ValueError(f"{where} must be one of {list(options)}, got {value!r}")
        return value
    return one_of


def _real_or_infinite(where, value):
    """A real number, infinities allowed (ReduceLROnPlateau's best starts at +-inf)."""
    if isinstance(value, float) and math.isinf(value):
        return float(value)
    return check.real(where, value)


def _positive_real(name, value):
    value = check.real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _start_factor(name, value):
    value = check.in_range(name, value, 0.0, 1.0, high_inclusive=True)
    if value == 0:
        raise ValueError(f"{name} must be > 0")
    return value


def _unit_factor(name, value):
    return check.in_range(name, value, 0.0, 1.0, high_inclusive=True)


def _milestone_counts(where, value):
    """MultiStepLR's milestones: epoch -> how many times gamma applies there."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict from epoch to count, got "
                        f"{type(value).__name__}")
    return {_positive_int(f"{where} key", m): _positive_int(f"{where}[{m!r}]", n)
            for m, n in value.items()}


def _milestone_list(count):
    def milestones(where, value):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list of ints, got {type(value).__name__}")
        if len(value) != count:
            raise ValueError(f"{where} has {len(value)} milestones; this SequentialLR's "
                             f"schedulers need {count}")
        value = [_positive_int(f"{where}[{k}]", m) for k, m in enumerate(value)]
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"{where} must be strictly increasing, got {value}")
        return value
    return milestones


def _sub_states(schedulers):
    """The checked states of ``schedulers`` from a saved list of them."""
    def sub_states(where, value):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list of scheduler states, got "
                            f"{type(value).__name__}")
        if len(value) != len(schedulers):
            raise ValueError(f"{where} has {len(value)} scheduler states for "
                             f"{len(schedulers)} schedulers")
        return [_checked_sub(s, saved, f"{where}[{k}]")
                for k, (s, saved) in enumerate(zip(schedulers, value))]
    return sub_states


def _initial_lrs(optimizer, lrs=None):
    """The lrs the optimizer's groups had when its first scheduler was made (torch keeps them
    as ``group["initial_lr"]``; here they sit beside the groups, which hold only
    hyper-parameters).  ``lrs`` replaces them (OneCycleLR does, as in torch).  A group added
    since (``add_param_group``) gets its current lr, as torch's ``setdefault('initial_lr')``."""
    known = optimizer._scheduler_initial_lrs
    if lrs is not None or known is None or len(known) < len(optimizer.param_groups):
        known = [] if lrs is not None or known is None else known
        # numbers, not the groups' objects: a 0-d array lr edited in place must not move them
        # (a new list: _all_or_nothing restores the old one if the scheduler fails)
        optimizer._scheduler_initial_lrs = lrs or known + [
            check.real(f"param_groups[{i}]['lr']", g["lr"])
            for i, g in enumerate(optimizer.param_groups) if i >= len(known)]
    return optimizer._scheduler_initial_lrs


def _positive_int(name, value):
    return check.count(name, value, low=1)


def _epochs(name, value):
    """A list from an iterable of epochs (the ints are checked by the caller)."""
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of epochs, got {type(value).__name__}") \
            from None


class StepLR(LRScheduler):
    """lr * gamma every ``step_size`` epochs."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = check.non_negative("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _state_checks(self, state):
        return {**super()._state_checks(state), "step_size": _positive_int,
                "gamma": check.non_negative}


class MultiStepLR(LRScheduler):
    """lr * gamma at each epoch listed in ``milestones``."""

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        milestones = [_positive_int("milestones[]", m) for m in _epochs("milestones", milestones)]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.milestones = {m: milestones.count(m) for m in milestones}
        self.gamma = check.non_negative("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._current()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._current()]

    def _state_checks(self, state):
        return {**super()._state_checks(state), "milestones": _milestone_counts,
                "gamma": check.non_negative}


class ExponentialLR(LRScheduler):
    """lr * gamma every epoch."""

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = check.non_negative("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _state_checks(self, state):
        return {**super()._state_checks(state), "gamma": check.non_negative}


class CosineAnnealingLR(LRScheduler):
    """Cosine from the initial lr down to ``eta_min`` over ``T_max`` epochs (then back up)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:  # noqa: N803 (torch's name)
        self.T_max = _positive_int("T_max", T_max)
        self.eta_min = check.non_negative("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, T = self.last_epoch, self.T_max  # noqa: N806
        if t == 0:
            return self._current()
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (base - self.eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for lr, base in zip(self._current(), self.base_lrs)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (lr - self.eta_min) + self.eta_min for lr in self._current()]

    def _state_checks(self, state):
        return {**super()._state_checks(state), "T_max": _positive_int,
                "eta_min": check.non_negative}


class LinearLR(LRScheduler):
    """Linear warm-up (or -down): the lr factor goes from ``start_factor`` to ``end_factor``
    over ``total_iters`` epochs, then stays."""

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        self.start_factor = _start_factor("start_factor", start_factor)
        self.end_factor = _unit_factor("end_factor", end_factor)
        self.total_iters = _positive_int("total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, n = self.last_epoch, self.total_iters
        if t == 0:
            return [lr * self.start_factor for lr in self._current()]
        if t > n:
            return self._current()
        change = self.end_factor - self.start_factor
        return [lr * (1.0 + change / (n * self.start_factor + (t - 1) * change))
                for lr in self._current()]

    def _state_checks(self, state):
        return {**super()._state_checks(state), "start_factor": _start_factor,
                "end_factor": _unit_factor, "total_iters": _positive_int}



class ConstantLR(LRScheduler):
    """lr * ``factor`` for the first ``total_iters`` epochs, then the lr again (a constant
    warm-up)."""

    def __init__(self, optimizer: Optimizer, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        # torch takes factor=0 and then divides by it at total_iters
        self.factor = _start_factor("factor", factor)
        # torch takes 0 (and negatives), keeping the factor forever where its closed form
        # would drop it: refused here
        self.total_iters = _positive_int("total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t = self.last_epoch
        if t == 0:
            return [lr * self.factor for lr in self._current()]
        if t != self.total_iters:
            return self._current()
        return [lr * (1.0 / self.factor) for lr in self._current()]  # torch's operation order

    def _state_checks(self, state):
        return {**super()._state_checks(state), "factor": _start_factor,
                "total_iters": _positive_int}


class PolynomialLR(LRScheduler):
    """lr * (1 - epoch / ``total_iters``) ** ``power``, reaching 0 at ``total_iters``."""

    def __init__(self, optimizer: Optimizer, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1) -> None:
        self.total_iters = _positive_int("total_iters", total_iters)
        # a negative power divides by zero at total_iters (torch's too)
        self.power = check.non_negative("power", power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, n = self.last_epoch, self.total_iters
        if t == 0 or t > n:
            return self._current()
        factor = ((1.0 - t / n) / (1.0 - (t - 1) / n)) ** self.power
        return [lr * factor for lr in self._current()]

    def _state_checks(self, state):
        return {**super()._state_checks(state), "total_iters": _positive_int,
                "power": check.non_negative}


def _lr_lambdas(lr_lambda, groups):
    """LambdaLR's and MultiplicativeLR's ``lr_lambda``: one callable for every param group, or
    a list of one per group."""
    if not isinstance(lr_lambda, (list, tuple)):
        if not callable(lr_lambda):
            raise TypeError(f"lr_lambda must be callable (a function of the epoch), got "
                            f"{type(lr_lambda).__name__}")
        return [lr_lambda] * groups
    if len(lr_lambda) != groups:
        raise ValueError(f"lr_lambda has {len(lr_lambda)} functions for {groups} param groups")
    for k, fn in enumerate(lr_lambda):
        if not callable(fn):
            raise TypeError(f"lr_lambda[{k}] must be callable (a function of the epoch), got "
                            f"{type(fn).__name__}")
    return list(lr_lambda)


def _times_lambda(lr, fn, epoch, k):
    """``lr * fn(epoch)``, refused (ValueError) unless it is an lr the optimizer can take."""
    factor = check.real(f"lr_lambda({epoch}) for param_groups[{k}]", fn(epoch))
    return check.non_negative(f"lr * lr_lambda({epoch}) for param_groups[{k}]", lr * factor)


class _LambdaStates:
    """The saved ``lr_lambdas`` of LambdaLR and MultiplicativeLR (see _callable_state)."""

    _callables = ("lr_lambdas",)

    def _lambda_states_check(self, where, value):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list, got {type(value).__name__}")
        if len(value) != len(self.lr_lambdas):
            raise ValueError(f"{where} has {len(value)} entries for {len(self.lr_lambdas)} "
                             f"param groups")
        return [_callable_state_check(fn, f"lr_lambda[{k}]")(f"{where}[{k}]", saved)
                for k, (fn, saved) in enumerate(zip(self.lr_lambdas, value))]

    def _state_checks(self, state):
        return {**super()._state_checks(state), "lr_lambdas": self._lambda_states_check}

    def _apply(self, values):
        super()._apply({k: v for k, v in values.items() if k != "lr_lambdas"})
        for fn, saved in zip(self.lr_lambdas, values["lr_lambdas"]):
            _load_callable_state(fn, saved)


class LambdaLR(_LambdaStates, LRScheduler):
    """The initial lr times ``lr_lambda(epoch)``: one function for every param group, or a
    list of one per group.  A state_dict keeps a callable object's attributes, and nothing of
    a function or lambda (as torch): the scheduler loading it uses its own ``lr_lambda``."""

    def __init__(self, optimizer: Optimizer,
                 lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.lr_lambdas = _lr_lambdas(lr_lambda, len(optimizer.param_groups))
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t = self.last_epoch
        return [_times_lambda(base, fn, t, k)
                for k, (fn, base) in enumerate(zip(self.lr_lambdas, self.base_lrs))]


class MultiplicativeLR(_LambdaStates, LRScheduler):
    """lr * ``lr_lambda(epoch)`` every epoch after the first (one function for every param
    group, or a list of one per group).  Saved as LambdaLR is."""

    def __init__(self, optimizer: Optimizer,
                 lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.lr_lambdas = _lr_lambdas(lr_lambda, len(optimizer.param_groups))
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:  # made (or started by SequentialLR): the lrs stay
            return self._current()
        return self._times_lambdas()

    def _times_lambdas(self):
        t = self.last_epoch
        return [_times_lambda(lr, fn, t, k)
                for k, (fn, lr) in enumerate(zip(self.lr_lambdas, self._current()))]

    def _restart(self):
        """At a SequentialLR milestone torch steps it to epoch 0 without its first-step rule:
        the lrs the schedule before it left, times lr_lambda(0)."""
        last = self.last_epoch
        self.last_epoch = 0
        try:
            lrs = self._times_lambdas()
        except BaseException:
            self.last_epoch = last
            raise
        self._set_lrs(lrs)

def _momentum_check(use_beta1):
    """Adam's beta1 must stay in [0, 1) (the optimizer would refuse it at its next step); a
    momentum need only be >= 0."""
    if use_beta1:
        return lambda name, value: check.in_range(name, value, 0.0, 1.0)
    return check.non_negative


def _per_group(name, value, groups, check_one=check.non_negative):
    """One checked value per param group: ``value`` for each, or a list of one per group."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * len(groups)
    if len(values) != len(groups):
        raise ValueError(f"{name} has {len(values)} entries for {len(groups)} param groups")
    return [check_one(name, v) for v in values]


def _set_momenta(groups, momenta, use_beta1):
    """The cycled momentum lives in group["betas"][0] (Adam family) or group["momentum"]."""
    for group, momentum in zip(groups, momenta):
        if use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


def _use_beta1_check(optimizer):
    """A saved use_beta1: which momentum is cycled follows from the optimizer, as when made."""
    def use_beta1(where, value):
        value = check.flag(where, value)
        defaults = optimizer.defaults
        if "betas" not in defaults and "momentum" not in defaults:
            raise ValueError(f"{where}: cycle_momentum needs an optimizer with momentum or "
                             f"betas, and {type(optimizer).__name__} has neither")
        if value != ("betas" in defaults):
            raise ValueError(f"{where} is {value}, but {type(optimizer).__name__} cycles "
                             f"{'beta1' if 'betas' in defaults else 'momentum'}")
        return value
    return use_beta1


# the (lr from, lr to, momentum from, momentum to) of each OneCycleLR phase
_TWO_PHASES = (("initial_lr", "max_lr", "max_momentum", "base_momentum"),
               ("max_lr", "min_lr", "base_momentum", "max_momentum"))
_THREE_PHASES = (("initial_lr", "max_lr", "max_momentum", "base_momentum"),
                 ("max_lr", "initial_lr", "base_momentum", "max_momentum"),
                 ("initial_lr", "min_lr", "max_momentum", "max_momentum"))


def _phase_plan(pct, n, three_phase):
    """OneCycleLR's phases: (the step it ends at, *its limits), as torch computes them."""
    if three_phase:
        return [(end, *names) for end, names in zip((pct * n - 1, 2 * pct * n - 2, n - 1),
                                                     _THREE_PHASES)]
    return [(end, *names) for end, names in zip((pct * n - 1, n - 1), _TWO_PHASES)]


def _reject_empty_phase(phases, what):
    """A phase that ends at the step it starts at divides by zero when a step lands in it
    (torch's too: pct_start=1 fails at the last step, pct_start * total_steps = 1 at once)."""
    start = 0
    for k, phase in enumerate(phases):
        if phase[0] == start:
            raise ValueError(f"{what} gives phase {k} of the schedule no length (it starts and "
                             f"ends at step {start}): its lr would divide by zero")
        start = phase[0]


def _phase_list(where, value):
    """Saved OneCycleLR phases: 2 or 3, each (a real end step, *the limits of its kind))."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where} must be a list of phases, got {type(value).__name__}")
    kinds = {2: _TWO_PHASES, 3: _THREE_PHASES}.get(len(value))
    if kinds is None:
        raise ValueError(f"{where} has {len(value)} phases; a OneCycleLR has 2 or 3")
    phases = []
    for k, (phase, names) in enumerate(zip(value, kinds)):
        if not isinstance(phase, (list, tuple)) or tuple(phase[1:]) != names:
            raise ValueError(f"{where}[{k}] must be (end step, {', '.join(names)}), got "
                             f"{phase!r}")
        phases.append((check.real(f"{where}[{k}][0]", phase[0]), *names))
    return phases


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch's OneCycleLR): lr rises from max_lr/div_factor to ``max_lr``
    over ``pct_start`` of ``total_steps``, then anneals to max_lr/div_factor/final_div_factor
    (three_phase: back down to the start first); with ``cycle_momentum`` the momentum (or Adam's
    beta1) moves the opposite way between ``max_momentum`` and ``base_momentum``.  Step it
    once per batch."""

    def __init__(self, optimizer: Optimizer, max_lr: float | Sequence[float],
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | Sequence[float] = 0.85,
                 max_momentum: float | Sequence[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        _check_start(optimizer, last_epoch)  # before the groups' momenta change
        groups = optimizer.param_groups
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("give total_steps, or epochs and steps_per_epoch")
            total_steps = _positive_int("epochs", epochs) * _positive_int("steps_per_epoch",
                                                                         steps_per_epoch)
        self.total_steps = _positive_int("total_steps", total_steps)
        pct = check.in_range("pct_start", pct_start, 0.0, 1.0, high_inclusive=True)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        three_phase = check.flag("three_phase", three_phase)
        div_factor = _positive_real("div_factor", div_factor)
        final_div_factor = _positive_real("final_div_factor", final_div_factor)
        max_lrs = _per_group("max_lr", max_lr, groups)
        self.limits = [{"initial_lr": m / div_factor, "max_lr": m,
                        "min_lr": m / div_factor / final_div_factor} for m in max_lrs]
        self.phases = _phase_plan(pct, self.total_steps, three_phase)
        _reject_empty_phase(self.phases, f"pct_start={pct} with total_steps={self.total_steps}")
        self.cycle_momentum = check.flag("cycle_momentum", cycle_momentum)
        if self.cycle_momentum:
            self.use_beta1 = "betas" in optimizer.defaults
            if not self.use_beta1 and "momentum" not in optimizer.defaults:
                raise ValueError("cycle_momentum needs an optimizer with momentum or betas")
            momentum = _momentum_check(self.use_beta1)
            for limit, top, base in zip(
                    self.limits, _per_group("max_momentum", max_momentum, groups, momentum),
                    _per_group("base_momentum", base_momentum, groups, momentum)):
                limit.update(max_momentum=top, base_momentum=base)
        # everything checked: from here on the optimizer changes
        if self.cycle_momentum:
            _set_momenta(groups, [limit["max_momentum"] for limit in self.limits],
                         self.use_beta1)
        _initial_lrs(optimizer, [limit["initial_lr"] for limit in self.limits])
        super().__init__(optimizer, last_epoch)

    def _state_checks(self, state):
        cycling = state.get("cycle_momentum")  # the key set depends on it; checked below
        cycling = isinstance(cycling, (bool, np.bool_)) and bool(cycling)
        checks = {**super()._state_checks(state), "total_steps": _positive_int,
                  "anneal_strategy": _one_of("cos", "linear"),
                  "limits": self._limits_check(cycling), "phases": _phase_list,
                  "cycle_momentum": check.flag}
        if cycling:
            checks["use_beta1"] = _use_beta1_check(self.optimizer)
        return checks

    def _limits_check(self, cycling):
        """Per group: the lrs (and momenta, when cycling) the phases run between."""
        keys = {"initial_lr", "max_lr", "min_lr"}
        if cycling:
            keys |= {"max_momentum", "base_momentum"}
        groups = len(self.limits)  # the groups it was made with (see _lrs)
        momentum = _momentum_check("betas" in self.optimizer.defaults)

        def limits(where, value):
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"{where} must be a list of dicts, got {type(value).__name__}")
            if len(value) != groups:
                raise ValueError(f"{where} has {len(value)} entries for {groups} param groups")
            checked = []
            for k, limit in enumerate(value):
                at = f"{where}[{k}]"
                if not isinstance(limit, Mapping):
                    raise TypeError(f"{at} must be a dict, got {type(limit).__name__}")
                if set(limit) != keys:
                    raise ValueError(f"{at} must have the keys {sorted(keys)}, has "
                                     f"{sorted(limit, key=repr)}")
                checked.append({name: (momentum if name.endswith("momentum")
                                       else check.non_negative)(f"{at}[{name!r}]", v)
                                for name, v in limit.items()})
            return checked
        return limits

    def _check_together(self, values, where):
        n, phases = values["total_steps"], values["phases"]
        if phases[-1][0] != n - 1:
            raise ValueError(f"{where}['phases'] ends at step {phases[-1][0]}, but "
                             f"total_steps is {n}: it must end at {n - 1}")
        _reject_empty_phase(phases, f"{where}['phases']")
        if values["last_epoch"] > n:
            raise ValueError(f"{where}['last_epoch'] is {values['last_epoch']}, past "
                             f"total_steps ({n})")

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"stepped {step} times; total_steps is {self.total_steps}")
        lrs, momenta = [], []
        for limit in self.limits:
            start = 0.0
            for i, (end, lr_from, lr_to, m_from, m_to) in enumerate(self.phases):
                if step <= end or i == len(self.phases) - 1:
                    pct = (step - start) / (end - start)
                    lrs.append(self._anneal(limit[lr_from], limit[lr_to], pct))
                    if self.cycle_momentum:
                        momenta.append(self._anneal(limit[m_from], limit[m_to], pct))
                    break
                start = end
        if self.cycle_momentum:
            _set_momenta(self.optimizer.param_groups, momenta, self.use_beta1)
        return lrs



# the scale_mode each built-in CyclicLR mode implies (a user's scale_fn takes scale_mode's)
_CYCLIC_SCALE_MODES = {"triangular": "cycle", "triangular2": "cycle", "exp_range": "iterations"}


def _momenta(groups, momentum):
    """A saved list of one momentum per param group, each checked by ``momentum``."""
    def momenta(where, value):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list of {groups} momenta, got "
                            f"{type(value).__name__}")
        if len(value) != groups:
            raise ValueError(f"{where} has {len(value)} momenta for {groups} param groups")
        return [momentum(f"{where}[{k}]", v) for k, v in enumerate(value)]
    return momenta


def _step_ratio(where, value):
    """CyclicLR's share of a cycle going up: in (0, 1]."""
    return _start_factor(where, value)


class CyclicLR(LRScheduler):
    """The cyclical learning rate policy (torch's CyclicLR): each step moves the lr between
    ``base_lr`` and ``max_lr``, up over ``step_size_up`` steps and down over ``step_size_down``
    (``step_size_up`` if None); the height is scaled by ``mode`` ("triangular": 1,
    "triangular2": halved every cycle, "exp_range": ``gamma`` ** step) or by ``scale_fn``
    (of the cycle number or the step, as ``scale_mode`` says).  With ``cycle_momentum`` the
    momentum (or Adam's beta1) moves the opposite way, from ``max_momentum`` at ``base_lr`` to
    ``base_momentum`` at ``max_lr``.  Step it once per batch.  A state_dict keeps a callable
    object's attributes of ``scale_fn`` and nothing of a function, as LambdaLR's."""

    _callables = ("_scale_fn_custom",)

    def __init__(self, optimizer: Optimizer, base_lr: float | Sequence[float],
                 max_lr: float | Sequence[float], step_size_up: int = 2000,
                 step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
                 scale_fn: Callable[[float], float] | None = None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: float | Sequence[float] = 0.8,
                 max_momentum: float | Sequence[float] = 0.9, last_epoch: int = -1) -> None:
        _check_start(optimizer, last_epoch)  # before the groups' lrs and momenta change
        groups = optimizer.param_groups
        base_lrs = _per_group("base_lr", base_lr, groups)
        self.max_lrs = _per_group("max_lr", max_lr, groups)
        up = _positive_real("step_size_up", step_size_up)
        # 0 steps down is a sawtooth: torch never divides by it
        down = up if step_size_down is None else check.non_negative("step_size_down",
                                                                     step_size_down)
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        # torch ignores mode when scale_fn is given; a misspelt one is refused here all the same
        self.mode = _one_of(*_CYCLIC_SCALE_MODES)("mode", mode)
        self.gamma = check.non_negative("gamma", gamma)
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable or None, got {type(scale_fn).__name__}")
        self._scale_fn_custom = scale_fn
        # torch treats any scale_mode but "cycle" as "iterations"; only those two pass here
        scale_mode = _one_of("cycle", "iterations")("scale_mode", scale_mode)
        self.scale_mode = scale_mode if scale_fn is not None else _CYCLIC_SCALE_MODES[mode]
        self.cycle_momentum = check.flag("cycle_momentum", cycle_momentum)
        if self.cycle_momentum:
            defaults = optimizer.defaults
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError(f"cycle_momentum=True needs an optimizer with momentum or "
                                 f"betas, and {type(optimizer).__name__} has neither: pass "
                                 f"cycle_momentum=False")
            self.use_beta1 = "betas" in defaults
            momentum = _momentum_check(self.use_beta1)
            self.base_momentums = _per_group("base_momentum", base_momentum, groups, momentum)
            self.max_momentums = _per_group("max_momentum", max_momentum, groups, momentum)
        # everything checked: from here on the optimizer changes (and is put back if the
        # first step fails: a user's scale_fn)
        with _all_or_nothing(optimizer):
            for group, lr in zip(groups, base_lrs):
                group["lr"] = lr
            if self.cycle_momentum:
                _set_momenta(groups, self.max_momentums, self.use_beta1)
            # as torch's, the first step starts from the initial lrs recorded on the optimizer
            # (base_lr, unless a scheduler made before recorded others): at step 0 the lr is
            # them; every later step cycles from base_lr
            super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x):
        """The height scale at cycle (or step) ``x``: the user's scale_fn, or the mode's."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma ** x

    def _scale(self, x):
        return check.real(f"scale_fn({x})", self.scale_fn(x))

    def get_lr(self):
        t = self.last_epoch
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle  # how far into this cycle, in [0, 1)
        if x <= self.step_ratio:
            rise = x / self.step_ratio
        else:
            rise = (x - 1) / (self.step_ratio - 1)
        at = cycle if self.scale_mode == "cycle" else t
        # torch's operation order, and one scale_fn call per group for the lrs and again for
        # the momenta, as torch calls it
        lrs = [check.non_negative(f"the lr scale_fn({at}) gives param_groups[{k}]",
                                  base + (top - base) * rise * self._scale(at))
               for k, (base, top) in enumerate(zip(self.base_lrs, self.max_lrs))]
        if self.cycle_momentum:
            momentum = _momentum_check(self.use_beta1)
            momenta = [momentum(f"the momentum scale_fn({at}) gives param_groups[{k}]",
                                top - (top - base) * rise * self._scale(at))
                       for k, (base, top) in enumerate(zip(self.base_momentums,
                                                           self.max_momentums))]
            _set_momenta(self.optimizer.param_groups, momenta, self.use_beta1)
        return lrs

    def _state_checks(self, state):
        cycling = state.get("cycle_momentum")  # the key set depends on it; checked below
        cycling = isinstance(cycling, (bool, np.bool_)) and bool(cycling)
        groups = len(self.base_lrs)  # the groups it was made with (see _lrs)
        checks = {**super()._state_checks(state), "max_lrs": _lrs(groups),
                  "total_size": _positive_real, "step_ratio": _step_ratio,
                  "mode": _one_of(*_CYCLIC_SCALE_MODES), "gamma": check.non_negative,
                  "scale_mode": _one_of("cycle", "iterations"), "cycle_momentum": check.flag,
                  "_scale_fn_custom": _callable_state_check(self._scale_fn_custom, "scale_fn")}
        if cycling:
            momentum = _momentum_check("betas" in self.optimizer.defaults)
            checks.update(use_beta1=_use_beta1_check(self.optimizer),
                          base_momentums=_momenta(groups, momentum),
                          max_momentums=_momenta(groups, momentum))
        return checks

    def _apply(self, values):
        values = dict(values)
        _load_callable_state(self._scale_fn_custom, values.pop("_scale_fn_custom"))
        if self._scale_fn_custom is None:  # as torch: the built-in mode sets the scale_mode
            values["scale_mode"] = _CYCLIC_SCALE_MODES[values["mode"]]
        if not values["cycle_momentum"]:  # no stale momenta to save next time
            for name in ("use_beta1", "base_momentums", "max_momentums"):
                self.__dict__.pop(name, None)
        super()._apply(values)


def _non_negative_number(name, value):
    """A real number >= 0 that stays an int if it is one (an epoch, fractional allowed)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return check.count(name, value)
    return check.non_negative(name, value)


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (torch's CosineAnnealingWarmRestarts): a cosine from the initial lr down to
    ``eta_min`` over ``T_0`` epochs, then again from the top, each period ``T_mult`` times the
    one before.  ``step()`` goes one epoch on; ``step(epoch)`` goes to ``epoch``, which may be
    fractional (``step(epoch + batch / batches)`` every batch), as torch allows."""

    def __init__(self, optimizer: Optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:  # noqa: N803
        self.T_0 = self.T_i = _positive_int("T_0", T_0)  # noqa: N815 (torch's names)
        self.T_mult = _positive_int("T_mult", T_mult)  # noqa: N815
        self.eta_min = check.non_negative("eta_min", eta_min)
        self.T_cur = -1  # noqa: N815 (the first step makes it 0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [self.eta_min + (base - self.eta_min)
                * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2 for base in self.base_lrs]

    def step(self, epoch=None):
        """One epoch on, or to ``epoch`` (a real number >= 0) when given."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0  # its first step, when made (or started by SequentialLR)
        if epoch is None:
            epoch, t_cur, t_i = self.last_epoch + 1, self.T_cur + 1, self.T_i
            if t_cur >= t_i:
                t_cur, t_i = t_cur % t_i, t_i * self.T_mult
        else:
            epoch = _non_negative_number("epoch", epoch)
            t_cur, t_i = self._position(epoch)
        before = self.T_cur, self.T_i, self.last_epoch
        self.T_cur, self.T_i, self.last_epoch = t_cur, t_i, math.floor(epoch)
        try:
            self._set_lrs(self.get_lr())
        except BaseException:  # a refused step (see _added_groups_error) moves nothing
            self.T_cur, self.T_i, self.last_epoch = before
            raise

    def _position(self, epoch):
        """(T_cur, T_i) at ``epoch``, computed as torch does, its float logarithm included: at
        some restarts (T_0=1, T_mult=10, epoch 111) it rounds down, and the epoch is the end
        of the period before (lr eta_min) rather than the start of the next."""
        t_0, mult = self.T_0, self.T_mult
        if epoch < t_0:
            return epoch, t_0
        if mult == 1:
            return epoch % t_0, t_0
        n = int(math.log(epoch / t_0 * (mult - 1) + 1, mult))
        return epoch - t_0 * (mult ** n - 1) / (mult - 1), t_0 * mult ** n

    def _state_checks(self, state):
        return {**super()._state_checks(state), "T_0": _positive_int, "T_i": _positive_int,
                "T_mult": _positive_int, "eta_min": check.non_negative,
                "T_cur": _non_negative_number}

    def _check_together(self, values, where):
        period, t_i = values["T_0"], values["T_i"]
        while values["T_mult"] > 1 and period < t_i:
            period *= values["T_mult"]
        if period != t_i:
            raise ValueError(f"{where}['T_i'] is {t_i}: a period is T_0 ({values['T_0']}) "
                             f"times a power of T_mult ({values['T_mult']})")

class ChainedScheduler(_StateDict):
    """Several schedulers on one optimizer, stepped together (their factors multiply)."""

    def __init__(self, schedulers: Sequence[LRScheduler]) -> None:
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("schedulers is empty")
        for k, scheduler in enumerate(schedulers):
            if not hasattr(scheduler, "optimizer"):
                raise TypeError(f"schedulers[{k}] must be a scheduler (StepLR, LinearLR, ...), "
                                f"got {type(scheduler).__name__}")
        optimizer = schedulers[0].optimizer
        if any(s.optimizer is not optimizer for s in schedulers):
            raise ValueError("every chained scheduler must drive the same optimizer")
        self.optimizer, self._schedulers = optimizer, schedulers

    def step(self):
        for scheduler in self._schedulers:
            scheduler.step()

    def get_last_lr(self):
        return self._schedulers[-1].get_last_lr()

    def state_dict(self):
        return {"scheduler": type(self).__name__,
                "schedulers": [s.state_dict() for s in self._schedulers]}

    def _state_checks(self, state):
        return {"schedulers": _sub_states(self._schedulers)}

    def _apply(self, values):
        for scheduler, saved in zip(self._schedulers, values["schedulers"]):
            _apply_sub(scheduler, saved)


class SequentialLR(_StateDict):
    """Schedulers one after another: ``schedulers[k]`` drives the lr from epoch
    ``milestones[k - 1]`` on, starting over from its epoch 0 there (torch's SequentialLR, e.g.
    ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5), CosineAnnealingLR(opt, 50)],
    milestones=[5])``).  Making it resets the lrs to the initial ones and undoes the first step
    each scheduler took when it was made."""

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Iterable[int], last_epoch: int = -1) -> None:
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("schedulers is empty")
        for k, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(f"schedulers[{k}] must be an epoch scheduler (StepLR, LinearLR, "
                                f"...), got {type(scheduler).__name__}")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"schedulers[{k}] drives another optimizer")
        milestones = [_positive_int("milestones[]", m) for m in _epochs("milestones", milestones)]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"milestones has {len(milestones)} entries; {len(schedulers)} "
                             f"schedulers need {len(schedulers) - 1}")
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        if last_epoch != -1:
            raise ValueError("last_epoch: resuming is done with load_state_dict(); "
                             "pass last_epoch=-1")
        self.optimizer, self._schedulers, self.milestones = optimizer, schedulers, milestones
        for group, lr in zip(optimizer.param_groups, _initial_lrs(optimizer)):
            group["lr"] = lr
        for scheduler in schedulers:  # undo the step each took when it was made
            scheduler.last_epoch -= 1
        self.last_epoch = 0
        schedulers[0].step()
        self._last_lr = schedulers[0].get_last_lr()

    def step(self):
        self.last_epoch += 1
        k = bisect.bisect_right(self.milestones, self.last_epoch)
        scheduler = self._schedulers[k]
        if k > 0 and self.milestones[k - 1] == self.last_epoch:
            scheduler._restart()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {"scheduler": type(self).__name__, "last_epoch": self.last_epoch,
                "milestones": list(self.milestones), "_last_lr": list(self._last_lr),
                "schedulers": [s.state_dict() for s in self._schedulers]}

    def _state_checks(self, state):
        return {"last_epoch": _at_least(0),
                "milestones": _milestone_list(len(self._schedulers) - 1),
                # every group it was made with, and any added since (see _lrs)
                "_last_lr": _lrs(max(len(s.base_lrs) for s in self._schedulers),
                                 len(self.optimizer.param_groups)),
                "schedulers": _sub_states(self._schedulers)}

    def _apply(self, values):
        for scheduler, saved in zip(self._schedulers, values["schedulers"]):
            _apply_sub(scheduler, saved)
        self.last_epoch, self._last_lr = values["last_epoch"], values["_last_lr"]
        self.milestones = values["milestones"]


class ReduceLROnPlateau(_StateDict):
    """Divide the lr by 1/factor when ``metric`` (``step(metric)``) stops improving for
    ``patience`` epochs (torch's rules for mode, threshold, cooldown, min_lr, eps)."""

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] = 0.0,
                 eps: float = 1e-8) -> None:
        _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = _factor("factor", factor)
        self.optimizer, self.mode, self.threshold_mode = optimizer, mode, threshold_mode
        self.patience = check.count("patience", patience)
        self.cooldown = check.count("cooldown", cooldown)
        self.threshold = check.non_negative("threshold", threshold)
        self.eps = check.non_negative("eps", eps)
        groups = len(optimizer.param_groups)
        min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * groups
        if len(min_lrs) != groups:
            raise ValueError(f"min_lr has {len(min_lrs)} entries for {groups} param groups")
        self.min_lrs = [check.non_negative("min_lr", m) for m in min_lrs]
        # torch's: a single min_lr also covers groups added later (a list cannot)
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else self.min_lrs[0]
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def _better(self, value):
        if self.mode == "min":
            limit = self.best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return value < limit
        limit = self.best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return value > limit

    def step(self, metric):
        value = check.real("metric", metric)
        better = self._better(value)
        # the counters after this epoch, worked out before anything changes
        bad = 0 if better else self.num_bad_epochs + 1
        cooldown = self.cooldown_counter
        if cooldown > 0:
            cooldown, bad = cooldown - 1, 0
        reduce = bad > self.patience
        groups = len(self.optimizer.param_groups)
        if reduce and groups != len(self.min_lrs):
            # groups added since it was made (add_param_group): torch's rule
            if self.default_min_lr is None:
                raise ValueError(f"ReduceLROnPlateau was made with a min_lr list for "
                                 f"{len(self.min_lrs)} param groups and the optimizer now has "
                                 f"{groups} (add_param_group): set its min_lrs to one per "
                                 f"group")
            self.min_lrs = [self.default_min_lr] * groups
        self.last_epoch += 1
        if better:
            self.best = value
        if reduce:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(group["lr"] * self.factor, min_lr)
                if group["lr"] - new > self.eps:
                    group["lr"] = new
            cooldown, bad = self.cooldown, 0
        self.cooldown_counter, self.num_bad_epochs = cooldown, bad
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def _state_checks(self, state):
        # min_lrs grow to cover groups added since it was made (default_min_lr), see _lrs
        own, now = len(self.min_lrs), len(self.optimizer.param_groups)
        checks = {"factor": _factor, "mode": _one_of("min", "max"),
                "threshold_mode": _one_of("rel", "abs"), "patience": _at_least(0),
                "cooldown": _at_least(0), "threshold": check.non_negative,
                "eps": check.non_negative, "min_lrs": _lrs(own, now),
                "best": _real_or_infinite, "num_bad_epochs": _at_least(0),
                "cooldown_counter": _at_least(0), "last_epoch": _at_least(0),
                "_last_lr": _lrs(own, now)}
        if "default_min_lr" in state:  # saved since it existed; an older state keeps ours
            checks["default_min_lr"] = _none_or(check.non_negative)
        return checks

    def _check_together(self, values, where):
        if values["cooldown_counter"] > values["cooldown"]:
            raise ValueError(f"{where}['cooldown_counter'] is {values['cooldown_counter']}, "
                             f"more than its cooldown ({values['cooldown']})")


def _factor(name, value):
    """ReduceLROnPlateau's factor: the lr is multiplied by it, so it must be < 1."""
    return check.in_range(name, value, 0.0, 1.0)
