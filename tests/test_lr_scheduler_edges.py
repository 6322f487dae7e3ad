"""Scheduler edges the main lr tests miss, found by mutation testing (tests/MUTATION.md):
ReduceLROnPlateau's every counter against torch's step by step (ties, zero thresholds, cooldown,
patience 0 and the defaults), OneCycleLR up to its very last step, state dicts saved at boundary
arguments that must load again, and saved fields just outside their range that must not."""
import numpy as np
import pytest

import numba_opt as nopt
from numba_opt import lr_scheduler as S

torch = pytest.importorskip("torch")


def both(name="SGD", **kwargs):
    groups = [({"params": [np.zeros(2)], "lr": 0.1}, {"params": [torch.zeros(2)], "lr": 0.1}),
              ({"params": [np.zeros(3)], "lr": 0.05}, {"params": [torch.zeros(3)], "lr": 0.05})]
    return (getattr(nopt, name)([g[0] for g in groups], **kwargs),
            getattr(torch.optim, name)([g[1] for g in groups], **kwargs))


# exact ties (a metric equal to the best), improvements by exactly the threshold, plateaus longer
# than the default patience of 10
METRICS = [1.0, 1.0, 0.9, 0.9, 0.89, 0.95, 0.5, 0.5, 0.5, 0.6, 0.4, 0.4] + [0.4] * 14 + [0.3]


@pytest.mark.parametrize("kwargs", [
    {},
    dict(mode="max"),
    dict(threshold=0.0, threshold_mode="abs", patience=0),
    dict(threshold=0.0, threshold_mode="rel", patience=1, mode="max"),
    dict(threshold=0.1, threshold_mode="abs", patience=1, cooldown=2, factor=0.5),
    dict(threshold=0.01, patience=0, cooldown=1, factor=0.5, min_lr=[0.02, 0.0]),
    dict(patience=0, factor=0.5, eps=0.03),
], ids=repr)
def test_plateau_counters_follow_torch_step_by_step(kwargs):
    ours, theirs = both()
    mine = S.ReduceLROnPlateau(ours, **kwargs)
    torchs = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **kwargs)
    metrics = METRICS if kwargs.get("mode") != "max" else [-m for m in METRICS]
    for metric in metrics:
        mine.step(metric)
        torchs.step(metric)
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)
        for key in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
            assert getattr(mine, key) == getattr(torchs, key), key


@pytest.mark.filterwarnings("ignore:Detected call of")  # torch: the scheduler steps alone
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_runs_to_its_last_step_as_torch(three_phase):
    ours, theirs = both(momentum=0.9)
    kwargs = dict(max_lr=0.5, total_steps=12, three_phase=three_phase)
    mine = S.OneCycleLR(ours, **kwargs)
    torchs = torch.optim.lr_scheduler.OneCycleLR(theirs, **kwargs)
    for _ in range(12):  # step total_steps times: the last one is past the last phase's end
        mine.step()
        torchs.step()
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)
        assert [g["momentum"] for g in ours.param_groups] == pytest.approx(
            [g["momentum"] for g in theirs.param_groups], rel=1e-12)
    with pytest.raises(ValueError, match="total_steps"):
        mine.step()


# Schedulers built at the edges of their arguments: what they save must load again.
BOUNDARY = {
    "plateau-zeros": (lambda o: S.ReduceLROnPlateau(o, patience=0, cooldown=0, threshold=0.0,
                                                    eps=0.0, min_lr=0.0), "SGD"),
    "plateau-cooling": (lambda o: S.ReduceLROnPlateau(o, patience=0, cooldown=3, factor=0.5),
                        "SGD"),
    "linear-ones": (lambda o: S.LinearLR(o, start_factor=1.0, end_factor=1.0, total_iters=2),
                    "SGD"),
    "linear-down": (lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.5, total_iters=3),
                    "SGD"),
    "linear-to-zero": (lambda o: S.LinearLR(o, start_factor=0.5, end_factor=0.0,
                                            total_iters=3), "SGD"),
    "onecycle-momentum": (lambda o: S.OneCycleLR(o, max_lr=0.3, total_steps=6), "SGD"),
    "onecycle-beta1-zero": (lambda o: S.OneCycleLR(o, max_lr=0.3, total_steps=6,
                                                   base_momentum=0.0, max_momentum=0.5), "Adam"),
    "onecycle-3phase": (lambda o: S.OneCycleLR(o, max_lr=0.3, total_steps=9, three_phase=True,
                                               anneal_strategy="linear"), "SGD"),
}


def make_optimizer(name):
    return getattr(nopt, name)([{"params": [np.zeros(2)], "lr": 0.1},
                                {"params": [np.zeros(3)], "lr": 0.05}],
                               **({"momentum": 0.9} if name == "SGD" else {}))


def advance(sched, n):
    for k in range(n):
        sched.step(1.0) if isinstance(sched, S.ReduceLROnPlateau) else sched.step()


@pytest.mark.parametrize("steps", [0, 2, 6])
@pytest.mark.parametrize("name", list(BOUNDARY))
def test_states_saved_at_boundary_arguments_load_again(name, steps):
    make, opt_name = BOUNDARY[name]
    opt = make_optimizer(opt_name)
    sched = make(opt)
    advance(sched, steps)  # 6 is the last step of the 6-step cycles
    saved = sched.state_dict()
    twin_opt = make_optimizer(opt_name)
    twin = make(twin_opt)
    twin.load_state_dict(saved)
    assert twin.state_dict() == saved


# (scheduler, saved key, a value just outside what that key can hold)
OUTSIDE = [
    ("plateau-zeros", "patience", -1), ("plateau-zeros", "cooldown", -1),
    ("plateau-zeros", "num_bad_epochs", -1), ("plateau-zeros", "cooldown_counter", -1),
    ("plateau-zeros", "last_epoch", -1), ("plateau-zeros", "threshold", -0.1),
    ("plateau-zeros", "eps", -0.1), ("plateau-zeros", "factor", 1.0),
    ("plateau-zeros", "factor", -0.1), ("plateau-zeros", "best", float("nan")),
    ("plateau-zeros", "min_lrs", [0.0, -0.1]), ("plateau-cooling", "cooldown_counter", 4),
    ("linear-ones", "end_factor", 1.5), ("linear-ones", "end_factor", -0.1),
    ("linear-ones", "start_factor", 1.5), ("linear-ones", "start_factor", 0.0),
    ("linear-ones", "total_iters", 0), ("onecycle-momentum", "last_epoch", 7),
    ("onecycle-momentum", "total_steps", 0),
]


@pytest.mark.parametrize("name, key, bad", OUTSIDE, ids=lambda v: repr(v))
def test_a_saved_field_outside_its_range_is_refused(name, key, bad):
    make, opt_name = BOUNDARY[name]
    sched = make(make_optimizer(opt_name))
    advance(sched, 1)
    before = sched.state_dict()
    with pytest.raises((ValueError, TypeError)):
        sched.load_state_dict({**before, key: bad})
    assert sched.state_dict() == before


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_a_saved_beta1_outside_zero_one_is_refused(bad):
    make, opt_name = BOUNDARY["onecycle-beta1-zero"]
    sched = make(make_optimizer(opt_name))
    saved = sched.state_dict()
    limits = [dict(limit, base_momentum=bad) for limit in saved["limits"]]
    with pytest.raises(ValueError, match="base_momentum"):
        sched.load_state_dict({**saved, "limits": limits})


DEFAULTS = {  # each scheduler with only its required arguments: the defaults must be torch's
    "StepLR": dict(step_size=3), "MultiStepLR": dict(milestones=[2, 4]),
    "ExponentialLR": dict(gamma=0.9), "CosineAnnealingLR": dict(T_max=5), "LinearLR": {},
    "OneCycleLR": dict(max_lr=0.5, total_steps=20), "ConstantLR": {},
    "CyclicLR": dict(base_lr=0.01, max_lr=0.1, step_size_up=4, mode="exp_range"),  # gamma
}


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("name", list(DEFAULTS))
def test_default_arguments_give_torchs_schedule(name):
    ours, theirs = both(momentum=0.9)
    mine = getattr(S, name)(ours, **DEFAULTS[name])
    torchs = getattr(torch.optim.lr_scheduler, name)(theirs, **DEFAULTS[name])
    for _ in range(12):
        mine.step()
        torchs.step()
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)


@pytest.mark.filterwarnings("ignore:The epoch parameter")
def test_warm_restarts_at_given_epochs_keep_torchs_values_and_types():
    """step(epoch): an int epoch keeps T_cur an int where torch's does (3), a float where the
    restart arithmetic makes one (7 -> 3.0), and a fractional epoch stays fractional."""
    ours, theirs = both(momentum=0.9)
    mine = S.CosineAnnealingWarmRestarts(ours, T_0=4, T_mult=2)
    torchs = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(theirs, T_0=4, T_mult=2)
    for epoch in (3, 7, 2.5, 13, 0):
        mine.step(epoch)
        torchs.step(epoch)
        assert repr(mine.T_cur) == repr(torchs.T_cur) and mine.T_i == torchs.T_i, epoch
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_a_chain_of_three_reports_the_last_schedulers_lr_as_torch():
    ours, theirs = both()
    mine = S.ChainedScheduler([S.LinearLR(ours, start_factor=0.5, total_iters=3),
                               S.ExponentialLR(ours, gamma=0.9), S.StepLR(ours, step_size=2)])
    t = torch.optim.lr_scheduler
    torchs = t.ChainedScheduler([t.LinearLR(theirs, start_factor=0.5, total_iters=3),
                                 t.ExponentialLR(theirs, gamma=0.9), t.StepLR(theirs, step_size=2)])
    for _ in range(6):
        mine.step()
        torchs.step()
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)


def one_cycle_state(**changes):
    sched = BOUNDARY["onecycle-momentum"][0](make_optimizer("SGD"))
    return sched, {**sched.state_dict(), **changes}


def phases(saved, edit):
    out = [list(p) for p in saved["phases"]]
    edit(out)
    return out


# OneCycleLR / ReduceLROnPlateau / SequentialLR states broken one way each: all refused
def _corruptions():
    _, s = one_cycle_state()
    limit = s["limits"][0]
    no_momentum = {k: v for k, v in limit.items() if not k.endswith("momentum")}
    return {
        "limits not a list": dict(limits=limit),
        "limits one short": dict(limits=s["limits"][:1]),
        "limit not a dict": dict(limits=[list(limit.items())] * 2),
        "limit lacks a momentum": dict(limits=[no_momentum] * 2),
        "limit lr negative": dict(limits=[dict(limit, max_lr=-0.1)] * 2),
        "phases not a list": dict(phases="cos"),
        "four phases": dict(phases=s["phases"] * 2),
        "phase names swapped": dict(phases=phases(s, lambda p: p[0].__setitem__(1, "min_lr"))),
        "phase not a list": dict(phases=phases(s, lambda p: p.__setitem__(0, 2.0))),
        "phase end not a number": dict(phases=phases(s, lambda p: p[0].__setitem__(0, "2"))),
        "last phase ends early": dict(phases=phases(s, lambda p: p[-1].__setitem__(0, 4.0))),
        "last phase ends late": dict(phases=phases(s, lambda p: p[-1].__setitem__(0, 6.0))),
        "empty first phase": dict(phases=phases(s, lambda p: p[0].__setitem__(0, 0))),
        "cycle_momentum not a flag": dict(cycle_momentum=1),
        "not cycling, momentum limits kept": dict(cycle_momentum=False),
        "use_beta1 for SGD": dict(use_beta1=True),
        "past total_steps": dict(last_epoch=7),
        "anneal_strategy unknown": dict(anneal_strategy="exp"),
        "anneal_strategy not a str": dict(anneal_strategy=1),
    }


CORRUPTIONS = _corruptions()


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_a_broken_one_cycle_state_is_refused(what):
    sched, _ = one_cycle_state()
    before = sched.state_dict()
    with pytest.raises((ValueError, TypeError)):
        sched.load_state_dict({**before, **CORRUPTIONS[what]})
    assert sched.state_dict() == before


def test_a_one_cycle_state_at_its_last_step_loads():
    sched, saved = one_cycle_state(last_epoch=6)  # last_epoch == total_steps is still valid
    sched.load_state_dict(saved)
    assert sched.last_epoch == 6


@pytest.mark.parametrize("changes", [
    dict(mode="up"), dict(mode=1), dict(threshold_mode="log"), dict(threshold_mode=None),
    dict(cooldown=1, cooldown_counter=2), dict(best="low"), dict(best=True),
    dict(_last_lr=[0.1]), dict(patience=1.5),
], ids=repr)
def test_a_broken_plateau_state_is_refused(changes):
    sched = S.ReduceLROnPlateau(make_optimizer("SGD"))
    before = sched.state_dict()
    with pytest.raises((ValueError, TypeError)):
        sched.load_state_dict({**before, **changes})
    assert sched.state_dict() == before


def test_plateau_states_with_infinite_or_plain_best_load():
    sched = S.ReduceLROnPlateau(make_optimizer("SGD"), mode="max")
    for best in (-np.inf, np.inf, 2, 0.5):
        sched.load_state_dict({**sched.state_dict(), "best": best})
        assert sched.best == best and isinstance(sched.best, float)


class NotedStepLR(S.StepLR):
    """A subclass written outside numba_opt, with an attribute of its own."""

    def __init__(self, optimizer, note, **kwargs):
        self.note = note
        super().__init__(optimizer, **kwargs)


def test_a_subclass_from_elsewhere_saves_and_loads_its_own_attributes():
    sched = NotedStepLR(make_optimizer("SGD"), note={"run": 1}, step_size=2)
    sched.step()
    saved = sched.state_dict()
    assert saved["note"] == {"run": 1}
    twin = NotedStepLR(make_optimizer("SGD"), note={"run": 2}, step_size=2)
    twin.load_state_dict(saved)
    assert twin.note == {"run": 1} and twin.last_epoch == sched.last_epoch
    with pytest.raises(ValueError, match="unknown keys"):  # its keys are still exact
        twin.load_state_dict({**saved, "other": 0})
    plain = S.StepLR(make_optimizer("SGD"), step_size=2)
    with pytest.raises(ValueError, match="unknown keys"):  # and numba_opt's own take no extras
        plain.load_state_dict({**plain.state_dict(), "note": 1})


class Foreign:
    """A scheduler from elsewhere in a chain: it loads its own state."""

    def __init__(self, optimizer):
        self.optimizer, self.loaded = optimizer, None

    def step(self):
        pass

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"mine": 7}

    def load_state_dict(self, state):
        self.loaded = state


def test_a_chain_hands_a_foreign_scheduler_its_own_state():
    opt = make_optimizer("SGD")
    foreign = Foreign(opt)
    chain = S.ChainedScheduler([S.StepLR(opt, step_size=2), foreign])
    chain.step()
    chain.load_state_dict(chain.state_dict())
    assert foreign.loaded == {"mine": 7}


@pytest.mark.parametrize("milestones", [[], [3, 5], [0], [2.5]], ids=repr)
def test_a_sequential_state_with_wrong_milestones_is_refused(milestones):
    opt = make_optimizer("SGD")
    seq = S.SequentialLR(opt, [S.StepLR(opt, step_size=2), S.ExponentialLR(opt, gamma=0.9)],
                         milestones=[3])
    before = seq.state_dict()
    with pytest.raises((ValueError, TypeError)):
        seq.load_state_dict({**before, "milestones": milestones})
    assert seq.state_dict() == before


# --- the lr_scheduler survivors of the first mutation run (tests/MUTATION.md)

def test_error_messages_give_the_right_numbers_and_names():
    """The numbers and words in an error are part of it: a user reads them to fix the call."""
    sched, saved = one_cycle_state()
    early = phases(saved, lambda p: p[-1].__setitem__(0, 4.0))
    with pytest.raises(ValueError, match=r"ends at step 4\.0, but total_steps is 6: it must "
                                         r"end at 5$"):
        sched.load_state_dict({**saved, "phases": early})
    with pytest.raises(ValueError, match=r"has 4 phases; a OneCycleLR has 2 or 3$"):
        sched.load_state_dict({**saved, "phases": saved["phases"] * 2})
    empty = phases(saved, lambda p: p[0].__setitem__(0, 0))
    with pytest.raises(ValueError, match=r"gives phase 0 of the schedule no length \(it starts "
                                         r"and ends at step 0\)"):
        sched.load_state_dict({**saved, "phases": empty})
    with pytest.raises(ValueError, match=r"use_beta1'\] is True, but SGD cycles momentum$"):
        sched.load_state_dict({**saved, "use_beta1": True})
    adam = BOUNDARY["onecycle-beta1-zero"][0](make_optimizer("Adam"))
    with pytest.raises(ValueError, match=r"use_beta1'\] is False, but Adam cycles beta1$"):
        adam.load_state_dict({**adam.state_dict(), "use_beta1": False})
    with pytest.raises(ValueError, match=r"past total_steps \(6\)$"):
        sched.load_state_dict({**saved, "last_epoch": 7})

    opt = make_optimizer("SGD")
    two = [S.StepLR(opt, step_size=2), S.ExponentialLR(opt, gamma=0.9)]
    with pytest.raises(ValueError, match=r"^milestones has 2 entries; 2 schedulers need 1$"):
        S.SequentialLR(opt, two, milestones=[2, 4])
    seq = S.SequentialLR(opt, two, milestones=[3])
    with pytest.raises(ValueError, match=r"has 0 milestones; this SequentialLR's schedulers "
                                         r"need 1$"):
        seq.load_state_dict({**seq.state_dict(), "milestones": []})


@pytest.mark.parametrize("factor", ["div_factor", "final_div_factor"])
def test_one_cycle_refuses_a_zero_div_factor(factor):
    # not a ZeroDivisionError from max_lr / 0: the parameter is named
    for bad in (0, 0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^{factor} must be > 0, got"):
            S.OneCycleLR(make_optimizer("SGD"), max_lr=0.3, total_steps=6, **{factor: bad})


@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("kwargs", [
    dict(div_factor=1.0), dict(final_div_factor=1.0), dict(div_factor=1, final_div_factor=1),
    dict(div_factor=0.5, final_div_factor=0.25),
], ids=repr)
def test_one_cycle_div_factors_of_one_or_less_follow_torch(kwargs):
    ours, theirs = both(momentum=0.9)
    mine = S.OneCycleLR(ours, max_lr=0.5, total_steps=8, **kwargs)
    torchs = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=0.5, total_steps=8, **kwargs)
    for _ in range(8):
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)
        mine.step()
        torchs.step()


class Halving(S.LRScheduler):
    """A user's scheduler built on LRScheduler itself, leaving last_epoch to its default."""

    def __init__(self, optimizer):
        super().__init__(optimizer)

    def get_lr(self):
        return [base * 0.5 ** self.last_epoch for base in self.base_lrs]


def test_a_user_subclass_of_lr_scheduler_starts_at_epoch_zero():
    opt = make_optimizer("SGD")
    sched = Halving(opt)
    assert sched.last_epoch == 0 and sched.get_last_lr() == [0.1, 0.05]
    sched.step()
    assert sched.last_epoch == 1 and sched.get_last_lr() == [0.05, 0.025]


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_one_cycle_without_momentum_cycling_follows_torch_and_leaves_momentum():
    ours, theirs = both(momentum=0.9)
    kwargs = dict(max_lr=0.5, total_steps=6, cycle_momentum=False)
    mine = S.OneCycleLR(ours, **kwargs)
    torchs = torch.optim.lr_scheduler.OneCycleLR(theirs, **kwargs)
    for _ in range(6):
        mine.step()
        torchs.step()
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)
        assert [g["momentum"] for g in ours.param_groups] == [0.9, 0.9]
    saved = mine.state_dict()
    assert saved["cycle_momentum"] is False and "use_beta1" not in saved
    twin = S.OneCycleLR(make_optimizer("SGD"), **kwargs)
    twin.load_state_dict(saved)
    assert twin.state_dict() == saved
    # an optimizer with neither momentum nor betas can be driven without cycling
    plain = nopt.Adagrad([np.zeros(2)], lr=0.1)
    S.OneCycleLR(plain, **kwargs).step()


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_three_phase_one_cycle_takes_pct_start_one_as_torch():
    ours, theirs = both(momentum=0.9)
    kwargs = dict(max_lr=0.5, total_steps=7, three_phase=True, pct_start=1.0)
    mine = S.OneCycleLR(ours, **kwargs)
    torchs = torch.optim.lr_scheduler.OneCycleLR(theirs, **kwargs)
    for _ in range(7):
        mine.step()
        torchs.step()
        assert mine.get_last_lr() == pytest.approx(torchs.get_last_lr(), rel=1e-12)


def test_two_phase_one_cycle_refuses_pct_start_one():
    # its second phase would have no length (torch divides by zero at the last step)
    with pytest.raises(ValueError, match=r"gives phase 1 of the schedule no length"):
        S.OneCycleLR(make_optimizer("SGD"), max_lr=0.5, total_steps=6, pct_start=1.0)


def test_a_saved_one_cycle_state_with_an_empty_later_phase_is_refused():
    sched, saved = one_cycle_state()
    for edit in (lambda p: p[0].__setitem__(0, 5.0),  # phase 1 from 5 to 5
                 lambda p: p[0].__setitem__(0, p[1][0])):
        with pytest.raises(ValueError, match=r"gives phase 1 of the schedule no length"):
            sched.load_state_dict({**saved, "phases": phases(saved, edit)})
    three = BOUNDARY["onecycle-3phase"][0](make_optimizer("SGD"))
    saved = three.state_dict()
    middle = phases(saved, lambda p: p[1].__setitem__(0, p[0][0]))
    with pytest.raises(ValueError, match=r"gives phase 1 of the schedule no length"):
        three.load_state_dict({**saved, "phases": middle})


@pytest.mark.parametrize("milestones", [[5, 3], [3, 3]], ids=repr)
def test_a_sequential_state_with_two_unordered_milestones_is_refused(milestones):
    opt = make_optimizer("SGD")
    seq = S.SequentialLR(opt, [S.StepLR(opt, step_size=2), S.ExponentialLR(opt, gamma=0.9),
                               S.ConstantLR(opt, factor=0.5)], milestones=[3, 5])
    before = seq.state_dict()
    with pytest.raises(ValueError, match=r"must be strictly increasing"):
        seq.load_state_dict({**before, "milestones": milestones})
    assert seq.state_dict() == before


def test_a_sequential_state_saved_before_its_first_step_loads():
    def make():
        opt = make_optimizer("SGD")
        return S.SequentialLR(opt, [S.StepLR(opt, step_size=2),
                                    S.ExponentialLR(opt, gamma=0.9)], milestones=[3])
    saved = make().state_dict()
    assert saved["last_epoch"] == 0
    twin = make()
    twin.load_state_dict(saved)
    assert twin.state_dict() == saved


def test_a_chain_refuses_something_that_is_not_a_scheduler():
    opt = make_optimizer("SGD")
    with pytest.raises(TypeError, match=r"^schedulers\[1\] must be a scheduler"):
        S.ChainedScheduler([S.StepLR(opt, step_size=2), object()])


@pytest.mark.parametrize("pct_start", [-0.1, 1.5])
def test_one_cycle_refuses_pct_start_outside_zero_one(pct_start):
    for three_phase in (False, True):
        with pytest.raises(ValueError, match=r"^pct_start must be in \[0\.0, 1\.0\]"):
            S.OneCycleLR(make_optimizer("SGD"), max_lr=0.5, total_steps=6, pct_start=pct_start,
                         three_phase=three_phase)


def test_a_three_phase_state_ending_early_names_its_last_phase():
    three = BOUNDARY["onecycle-3phase"][0](make_optimizer("SGD"))  # phases end 1.7, 4.4, 8
    saved = three.state_dict()
    early = phases(saved, lambda p: p[2].__setitem__(0, 7.0))
    with pytest.raises(ValueError, match=r"ends at step 7\.0, but total_steps is 9: it must "
                                         r"end at 8$"):
        three.load_state_dict({**saved, "phases": early})


def test_a_sequential_state_with_a_negative_last_epoch_is_refused():
    opt = make_optimizer("SGD")
    seq = S.SequentialLR(opt, [S.StepLR(opt, step_size=2), S.ExponentialLR(opt, gamma=0.9)],
                         milestones=[3])
    before = seq.state_dict()
    with pytest.raises(ValueError, match=r"last_epoch"):
        seq.load_state_dict({**before, "last_epoch": -1})
    assert seq.state_dict() == before
