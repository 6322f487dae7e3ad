"""Learning-rate schedules with torch.optim.lr_scheduler's behaviour.

A scheduler edits ``optimizer.param_groups[i]["lr"]``; call ``scheduler.step()`` once per epoch
(or per step), after ``optimizer.step(...)``.  Like torch, constructing one applies the epoch-0
learning rate, the formulas are torch's recursive ("chainable") forms, so schedulers compose:
``ChainedScheduler([LinearLR(opt, ...), ExponentialLR(opt, ...)])`` multiplies their effects,
and ``SequentialLR`` runs one after another (warm-up, then cosine decay).  Every scheduler's
``base_lrs`` are the lrs the optimizer had when its first scheduler was made (torch's
``initial_lr``), whatever was made since.
``state_dict()`` / ``load_state_dict()`` save and restore a scheduler's position.
"""
import bisect
import math

from . import _validation as check


class LRScheduler:
    """Base class: ``get_lr()`` gives the new lr of every group from the current ones."""

    def __init__(self, optimizer, last_epoch=-1):
        _check_start(optimizer, last_epoch)
        self.optimizer = optimizer
        self.base_lrs = list(_initial_lrs(optimizer))
        self.last_epoch = -1
        self.step()

    def get_lr(self):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def _current(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def _restart(self):
        """Epoch 0 again, from ``base_lrs`` (what torch's SequentialLR does at a milestone: the
        closed form at epoch 0, which every schedule here shares with its first step)."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base
        self.last_epoch = -1
        self.step()

    def state_dict(self):
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


def _check_optimizer(optimizer):
    from .optim import Optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a numba_opt optimizer, got "
                        f"{type(optimizer).__name__}")


def _check_start(optimizer, last_epoch):
    """A scheduler drives a numba_opt optimizer from its start."""
    _check_optimizer(optimizer)
    if last_epoch != -1:
        raise ValueError("last_epoch: resuming is done with load_state_dict(); "
                         "pass last_epoch=-1")


def _initial_lrs(optimizer, lrs=None):
    """The lrs the optimizer's groups had when its first scheduler was made (torch keeps them
    as ``group["initial_lr"]``; here they sit beside the groups, which hold only
    hyper-parameters).  ``lrs`` replaces them (OneCycleLR does, as in torch)."""
    if lrs is not None or optimizer._scheduler_initial_lrs is None:
        optimizer._scheduler_initial_lrs = lrs or [g["lr"] for g in optimizer.param_groups]
    return optimizer._scheduler_initial_lrs


def _positive_int(name, value):
    return check.count(name, value, low=1)


def _positive_real(name, value):
    value = check.real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _epochs(name, value):
    """A list from an iterable of epochs (the ints are checked by the caller)."""
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of epochs, got {type(value).__name__}") \
            from None


class StepLR(LRScheduler):
    """lr * gamma every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = check.non_negative("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]


class MultiStepLR(LRScheduler):
    """lr * gamma at each epoch listed in ``milestones``."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
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


class ExponentialLR(LRScheduler):
    """lr * gamma every epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = check.non_negative("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]


class CosineAnnealingLR(LRScheduler):
    """Cosine from the initial lr down to ``eta_min`` over ``T_max`` epochs (then back up)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):  # noqa: N803 (torch's name)
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


class LinearLR(LRScheduler):
    """Linear warm-up (or -down): the lr factor goes from ``start_factor`` to ``end_factor``
    over ``total_iters`` epochs, then stays."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        self.start_factor = check.in_range("start_factor", start_factor, 0.0, 1.0,
                                           high_inclusive=True)
        if self.start_factor == 0:
            raise ValueError("start_factor must be > 0")
        self.end_factor = check.in_range("end_factor", end_factor, 0.0, 1.0,
                                         high_inclusive=True)
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


def _momentum_check(use_beta1):
    """Adam's beta1 must stay in [0, 1) (the optimizer would refuse it at its next step); a
    momentum need only be >= 0."""
    if use_beta1:
        return lambda name, value: check.in_range(name, value, 0.0, 1.0)
    return check.non_negative


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


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch's OneCycleLR): lr rises from max_lr/div_factor to ``max_lr``
    over ``pct_start`` of ``total_steps``, then anneals to max_lr/div_factor/final_div_factor
    (three_phase: back down to the start first); with ``cycle_momentum`` the momentum (or Adam's
    beta1) moves the opposite way between ``max_momentum`` and ``base_momentum``.  Step it
    once per batch."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False,
                 last_epoch=-1):
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
        max_lrs = self._per_group("max_lr", max_lr, groups)
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
                    self.limits, self._per_group("max_momentum", max_momentum, groups, momentum),
                    self._per_group("base_momentum", base_momentum, groups, momentum)):
                limit.update(max_momentum=top, base_momentum=base)
        # everything checked: from here on the optimizer changes
        if self.cycle_momentum:
            self._set_momenta([limit["max_momentum"] for limit in self.limits], groups)
        _initial_lrs(optimizer, [limit["initial_lr"] for limit in self.limits])
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _per_group(name, value, groups, check_one=check.non_negative):
        values = list(value) if isinstance(value, (list, tuple)) else [value] * len(groups)
        if len(values) != len(groups):
            raise ValueError(f"{name} has {len(values)} entries for {len(groups)} param groups")
        return [check_one(name, v) for v in values]

    def _set_momenta(self, momenta, groups):
        for group, momentum in zip(groups, momenta):
            if self.use_beta1:
                group["betas"] = (momentum, *group["betas"][1:])
            else:
                group["momentum"] = momentum

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
            self._set_momenta(momenta, self.optimizer.param_groups)
        return lrs


class ChainedScheduler:
    """Several schedulers on one optimizer, stepped together (their factors multiply)."""

    def __init__(self, schedulers):
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
        return {"schedulers": [s.state_dict() for s in self._schedulers]}

    def load_state_dict(self, state_dict):
        for scheduler, saved in zip(self._schedulers, state_dict["schedulers"]):
            scheduler.load_state_dict(saved)


class SequentialLR:
    """Schedulers one after another: ``schedulers[k]`` drives the lr from epoch
    ``milestones[k - 1]`` on, starting over from its epoch 0 there (torch's SequentialLR, e.g.
    ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5), CosineAnnealingLR(opt, 50)],
    milestones=[5])``).  Making it resets the lrs to the initial ones and undoes the first step
    each scheduler took when it was made."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
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
        return {"last_epoch": self.last_epoch, "milestones": list(self.milestones),
                "_last_lr": list(self._last_lr),
                "schedulers": [s.state_dict() for s in self._schedulers]}

    def load_state_dict(self, state_dict):
        for scheduler, saved in zip(self._schedulers, state_dict["schedulers"]):
            scheduler.load_state_dict(saved)
        self.last_epoch, self._last_lr = state_dict["last_epoch"], list(state_dict["_last_lr"])
        self.milestones = list(state_dict["milestones"])


class ReduceLROnPlateau:
    """Divide the lr by 1/factor when ``metric`` (``step(metric)``) stops improving for
    ``patience`` epochs (torch's rules for mode, threshold, cooldown, min_lr, eps)."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = check.in_range("factor", factor, 0.0, 1.0)
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
        self.last_epoch += 1
        if self._better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(group["lr"] * self.factor, min_lr)
                if group["lr"] - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)
