"""Learning-rate schedules: the lr sequences equal torch.optim.lr_scheduler's, they drive the
optimizer's steps, and they save and restore their position."""
import numpy as np
import pytest

import numba_opt as nopt
from numba_opt import lr_scheduler as S
from reference import RULES

torch = pytest.importorskip("torch")

SCHEDULES = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=4),
    "ConstantLR": lambda m, o: m.ConstantLR(o, factor=0.5, total_iters=4),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, total_iters=20, power=2.0),
    "PolynomialLR-sqrt": lambda m, o: m.PolynomialLR(o, total_iters=8, power=0.5),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lr_lambda=lambda epoch: 0.95 ** epoch),
    "LambdaLR-per-group": lambda m, o: m.LambdaLR(
        o, lr_lambda=[lambda epoch: 1 / (1 + epoch), lambda epoch: 0.9 ** (epoch // 3)]),
    "MultiplicativeLR": lambda m, o: m.MultiplicativeLR(o, lr_lambda=lambda epoch: 0.97),
    "MultiplicativeLR-per-group": lambda m, o: m.MultiplicativeLR(
        o, lr_lambda=[lambda epoch: 0.9, lambda epoch: 1.0 if epoch % 4 else 0.5]),
    "CyclicLR": lambda m, o: m.CyclicLR(o, base_lr=[0.01, 0.005], max_lr=[0.1, 0.05],
                                        step_size_up=4, step_size_down=6),
    "CyclicLR-triangular2": lambda m, o: m.CyclicLR(
        o, base_lr=0.02, max_lr=0.2, step_size_up=3, mode="triangular2", base_momentum=0.85,
        max_momentum=[0.95, 0.9]),
    "CyclicLR-exp_range": lambda m, o: m.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=5, mode="exp_range", gamma=0.97,
        cycle_momentum=False),
    "CyclicLR-sawtooth": lambda m, o: m.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=4.5,
                                                 step_size_down=0),
    "CyclicLR-scale_fn": lambda m, o: m.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=lambda x: 1 / (1 + 0.1 * x),
        scale_mode="iterations"),
    "CyclicLR-scale_fn-cycle": lambda m, o: m.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=2, step_size_down=3,
        scale_fn=lambda x: 0.8 ** x, mode="exp_range", gamma=0.5),
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(
        o, T_0=5, eta_min=1e-3),
    "CosineAnnealingWarmRestarts-T_mult": lambda m, o: m.CosineAnnealingWarmRestarts(
        o, T_0=2, T_mult=2, eta_min=0.002),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=31),
    "OneCycleLR-3phase-linear": lambda m, o: m.OneCycleLR(
        o, max_lr=0.3, epochs=4, steps_per_epoch=8, anneal_strategy="linear", three_phase=True,
        base_momentum=0.8),
    "ChainedScheduler": lambda m, o: m.ChainedScheduler(
        [m.LinearLR(o, start_factor=0.5, total_iters=3), m.ExponentialLR(o, gamma=0.95)]),
    # the cosine's base_lrs are the lrs before the warm-up (they matter past T_max)
    "ChainedScheduler-cosine": lambda m, o: m.ChainedScheduler(
        [m.LinearLR(o, start_factor=0.5, total_iters=3), m.CosineAnnealingLR(o, T_max=4)]),
    "ChainedScheduler-constant": lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, factor=0.1, total_iters=3), m.ExponentialLR(o, gamma=0.9)]),
    "ChainedScheduler-polynomial": lambda m, o: m.ChainedScheduler(
        [m.PolynomialLR(o, total_iters=12, power=1.5), m.StepLR(o, step_size=4, gamma=0.5)]),
    # made after another scheduler, CyclicLR's step-0 lrs are the initial ones, not base_lr
    "ChainedScheduler-restarts": lambda m, o: m.ChainedScheduler(
        [m.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=3, eta_min=0.001),
         m.ConstantLR(o, factor=0.5, total_iters=4)]),
    "ChainedScheduler-cyclic": lambda m, o: m.ChainedScheduler(
        [m.ExponentialLR(o, gamma=0.9), m.CyclicLR(o, base_lr=0.01, max_lr=0.1,
                                                   step_size_up=3)]),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=4),
            m.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)], milestones=[5]),
    "SequentialLR-3": lambda m, o: m.SequentialLR(
        o, [m.ExponentialLR(o, gamma=0.8), m.LinearLR(o, start_factor=0.2, total_iters=3),
            m.MultiStepLR(o, milestones=[2, 4], gamma=0.5)], milestones=[3, 8]),
    # a milestone restarts PolynomialLR from the initial lrs (torch's closed form at epoch 0)
    "SequentialLR-constant-polynomial": lambda m, o: m.SequentialLR(
        o, [m.ConstantLR(o, factor=0.25, total_iters=5),
            m.PolynomialLR(o, total_iters=15, power=0.9)], milestones=[4]),
    # at its milestone torch gives MultiplicativeLR the lrs left before, times lr_lambda(0)
    "SequentialLR-multiplicative": lambda m, o: m.SequentialLR(
        o, [m.ExponentialLR(o, gamma=0.8),
            m.MultiplicativeLR(o, lambda epoch: 0.5 if epoch == 0 else 0.95)], milestones=[4]),
    "SequentialLR-lambda": lambda m, o: m.SequentialLR(
        o, [m.LambdaLR(o, lambda epoch: (epoch + 1) / 5), m.ExponentialLR(o, gamma=0.9),
            m.LambdaLR(o, lambda epoch: 1 / (1 + 0.2 * epoch))], milestones=[5, 11]),
    "SequentialLR-warmup-cyclic": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=4),
            m.CyclicLR(o, base_lr=0.02, max_lr=0.1, step_size_up=4, mode="triangular2")],
        milestones=[4]),
    "SequentialLR-cyclic-first": lambda m, o: m.SequentialLR(
        o, [m.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3),
            m.PolynomialLR(o, total_iters=10)], milestones=[9]),
    "SequentialLR-constant-restarts": lambda m, o: m.SequentialLR(
        o, [m.ConstantLR(o, factor=0.1, total_iters=3),
            m.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2)], milestones=[3]),
    "SequentialLR-restarts-first": lambda m, o: m.SequentialLR(
        o, [m.CosineAnnealingWarmRestarts(o, T_0=3), m.ExponentialLR(o, gamma=0.9)],
        milestones=[10]),
    "SequentialLR-onecycle": lambda m, o: m.SequentialLR(
        o, [m.StepLR(o, step_size=2, gamma=0.5), m.OneCycleLR(o, max_lr=0.4, total_steps=30)],
        milestones=[6]),
}


def both_optimizers(name="SGD"):
    ours = getattr(nopt, name)([{"params": [np.zeros(2)], "lr": 0.1},
                                {"params": [np.zeros(3)], "lr": 0.05}])
    theirs = getattr(torch.optim, name)([{"params": [torch.zeros(2)], "lr": 0.1},
                                         {"params": [torch.zeros(3)], "lr": 0.05}])
    return ours, theirs


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_sequence_equals_torch(name, optimizer):
    ours, theirs = both_optimizers(optimizer)
    mine, torchs = SCHEDULES[name](S, ours), SCHEDULES[name](torch.optim.lr_scheduler, theirs)
    for epoch in range(30):
        np.testing.assert_allclose(mine.get_last_lr(), torchs.get_last_lr(), rtol=1e-12,
                                   err_msg=f"epoch {epoch}")
        assert [g["lr"] for g in ours.param_groups] == mine.get_last_lr()
        for key in ("momentum", "betas"):  # OneCycleLR cycles these too
            if key in ours.defaults:
                np.testing.assert_allclose([g[key] for g in ours.param_groups],
                                           [g[key] for g in theirs.param_groups], rtol=1e-12)
        ours.step([np.ones(2), np.ones(3)])
        theirs.step()
        mine.step()
        torchs.step()


def test_sequential_state_dict_resumes_mid_schedule():
    ours, _ = both_optimizers()
    make = SCHEDULES["SequentialLR-3"]
    sched = make(S, ours)
    for _ in range(6):
        ours.step([np.ones(2), np.ones(3)])
        sched.step()
    saved, saved_opt = sched.state_dict(), ours.state_dict()
    expected = []
    for _ in range(6):  # crosses the milestone at epoch 8
        sched.step()
        expected.append(sched.get_last_lr())
    resumed_opt, _ = both_optimizers()
    resumed = make(S, resumed_opt)
    resumed_opt.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    got = []
    for _ in range(6):
        resumed.step()
        got.append(resumed.get_last_lr())
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# the schedules of the later schedulers: a state saved mid-way resumes them exactly
RESUMED = [name for name in SCHEDULES if name.split("-")[0] in (
    "ConstantLR", "PolynomialLR", "LambdaLR", "MultiplicativeLR", "CyclicLR",
    "CosineAnnealingWarmRestarts")] + [
    "ChainedScheduler-constant", "SequentialLR-constant-polynomial",
    "SequentialLR-multiplicative", "SequentialLR-lambda", "ChainedScheduler-cyclic",
    "SequentialLR-warmup-cyclic", "SequentialLR-constant-restarts", "ChainedScheduler-restarts"]


def run(scheduler, opt, epochs):
    """(lrs, momentum, betas) of every group after each of ``epochs`` steps."""
    seen = []
    for _ in range(epochs):
        opt.step([np.ones(2), np.ones(3)])
        scheduler.step()
        seen.append([(g["lr"], g.get("momentum"), g.get("betas")) for g in opt.param_groups])
        assert scheduler.get_last_lr() == [g["lr"] for g in opt.param_groups]
    return seen


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("name", RESUMED)
def test_state_dict_resumes_mid_schedule(name, optimizer):
    opt, _ = both_optimizers(optimizer)
    scheduler = SCHEDULES[name](S, opt)
    run(scheduler, opt, 7)
    saved, saved_opt = scheduler.state_dict(), opt.state_dict()
    expected = run(scheduler, opt, 12)
    resumed_opt, _ = both_optimizers(optimizer)
    resumed = SCHEDULES[name](S, resumed_opt)
    resumed_opt.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    assert run(resumed, resumed_opt, 12) == expected

def test_reduce_on_plateau_equals_torch():
    ours, theirs = both_optimizers()
    kwargs = dict(mode="min", factor=0.5, patience=2, threshold=0.01, cooldown=1, min_lr=0.01)
    mine = S.ReduceLROnPlateau(ours, **kwargs)
    torchs = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **kwargs)
    metrics = [1.0, 0.9, 0.95, 0.91, 0.9, 0.92, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    for metric in metrics:
        mine.step(metric)
        torchs.step(metric)
        np.testing.assert_allclose(mine.get_last_lr(), torchs.get_last_lr(), rtol=1e-12)
    assert mine.get_last_lr()[0] < 0.1  # it did reduce


def test_schedule_drives_the_update_rule():
    param = np.linspace(-1, 1, 5)
    ref = param.copy()
    opt = nopt.Adam([param], lr=0.1)
    sched = S.StepLR(opt, step_size=2, gamma=0.5)
    state = {}
    for epoch in range(6):
        grad = np.cos(param + epoch)
        RULES["Adam"](ref, grad.copy(), state, lr=0.1 * 0.5 ** (epoch // 2))
        opt.step([grad])
        sched.step()
    np.testing.assert_allclose(param, ref, rtol=1e-12)


def test_state_dict_resumes_the_schedule():
    ours, _ = both_optimizers()
    sched = S.CosineAnnealingLR(ours, T_max=5)
    for _ in range(3):
        sched.step()
    saved = sched.state_dict()
    expected = []
    for _ in range(4):
        sched.step()
        expected.append(sched.get_last_lr())
    resumed_opt, _ = both_optimizers()
    resumed = S.CosineAnnealingLR(resumed_opt, T_max=5)
    resumed.load_state_dict(saved)
    for group, lr in zip(resumed_opt.param_groups, saved["_last_lr"]):
        group["lr"] = lr  # the optimizer's own state_dict carries its lrs
    got = []
    for _ in range(4):
        resumed.step()
        got.append(resumed.get_last_lr())
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("make, error, message", [
    (lambda o: S.StepLR(o, step_size=0), ValueError, "step_size must be >= 1"),
    (lambda o: S.StepLR(o, step_size=2, gamma=-1), ValueError, "gamma must be >= 0"),
    (lambda o: S.MultiStepLR(o, milestones=[5, 2]), ValueError, "increasing"),
    (lambda o: S.LinearLR(o, start_factor=0), ValueError, "start_factor must be > 0"),
    (lambda o: S.ExponentialLR(o, gamma=0.9, last_epoch=3), ValueError, "last_epoch"),
    (lambda o: S.ConstantLR(o, factor=0), ValueError, "factor must be > 0"),
    (lambda o: S.ConstantLR(o, factor=1.5), ValueError, r"factor must be in \[0.0, 1.0\]"),
    (lambda o: S.ConstantLR(o, total_iters=0), ValueError, "total_iters must be >= 1"),
    (lambda o: S.ConstantLR(o, total_iters=2.0), TypeError, "total_iters must be an int"),
    (lambda o: S.PolynomialLR(o, total_iters=0), ValueError, "total_iters must be >= 1"),
    (lambda o: S.PolynomialLR(o, power=-1.0), ValueError, "power must be >= 0"),
    (lambda o: S.LambdaLR(o, [lambda e: 1.0]), ValueError,
     "lr_lambda has 1 functions for 2 param groups"),
    (lambda o: S.LambdaLR(o, 0.5), TypeError, "lr_lambda must be callable"),
    (lambda o: S.MultiplicativeLR(o, [lambda e: 1.0, 0.9]), TypeError,
     r"lr_lambda\[1\] must be callable"),
    (lambda o: S.MultiplicativeLR(object(), lambda e: 1.0), TypeError, "numba_opt optimizer"),
    # LambdaLR's first lr is lr * lr_lambda(0): refused before it is set
    (lambda o: S.LambdaLR(o, lambda e: -1.0), ValueError,
     r"lr \* lr_lambda\(0\) for param_groups\[0\] must be >= 0"),
    (lambda o: S.LambdaLR(o, lambda e: "1"), TypeError,
     r"lr_lambda\(0\) for param_groups\[0\] must be a real number"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=0), ValueError,
     "step_size_up must be > 0"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_down=-1), ValueError,
     "step_size_down must be >= 0"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, mode="cosine"), ValueError,
     r"mode must be one of \['triangular', 'triangular2', 'exp_range'\], got 'cosine'"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, scale_fn=lambda x: 1.0, scale_mode="epoch"),
     ValueError, "scale_mode must be one of"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, scale_fn=0.5), TypeError, "scale_fn must be callable"),
    (lambda o: S.CyclicLR(o, [0.01], 0.1), ValueError, "base_lr has 1 entries for 2"),
    (lambda o: S.CyclicLR(o, 0.01, -0.1), ValueError, "max_lr must be >= 0"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, base_momentum=-0.5), ValueError,
     "base_momentum must be >= 0"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, cycle_momentum=1), TypeError,
     "cycle_momentum must be True or False"),
    (lambda o: S.CyclicLR(o, 0.01, 0.1, last_epoch=5), ValueError, "last_epoch"),
    # the first step calls the user's scale_fn: the lrs and momenta set before are put back
    (lambda o: S.CyclicLR(o, 0.01, 0.1, scale_fn=lambda x: float("inf")), ValueError,
     r"scale_fn\(1\) must be finite"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0 must be >= 1"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2.0), TypeError, "T_0 must be an int"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0), ValueError,
     "T_mult must be >= 1"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=1.5), TypeError,
     "T_mult must be an int"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, eta_min=-1e-3), ValueError,
     "eta_min must be >= 0"),
    (lambda o: S.ReduceLROnPlateau(o, mode="up"), ValueError, "mode must be"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "min_lr has 1 entries"),
    (lambda o: S.StepLR(object(), step_size=2), TypeError, "numba_opt optimizer"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1), ValueError, "give total_steps"),
    (lambda o: S.OneCycleLR(o, max_lr=[0.1], total_steps=5), ValueError, "1 entries for 2"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=5, anneal_strategy="exp"), ValueError,
     "anneal_strategy"),
    (lambda o: S.SequentialLR(o, [], milestones=[]), ValueError, "schedulers is empty"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 3)], milestones=[]), ValueError,
     "milestones has 0 entries"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2)] * 3, milestones=[4, 4]), ValueError,
     "strictly increasing"),
    (lambda o: S.SequentialLR(o, [S.ReduceLROnPlateau(o)], milestones=[]), TypeError,
     r"schedulers\[0\] must be an epoch scheduler"),
    (lambda o: S.SequentialLR(o, [S.StepLR(nopt.SGD([np.zeros(1)]), 2)], milestones=[]),
     ValueError, "another optimizer"),
])
def test_bad_arguments_raise_and_leave_the_lr(make, error, message):
    ours, _ = both_optimizers()
    before = [dict(g) for g in ours.param_groups]
    with pytest.raises(error, match=message):
        make(ours)
    assert [dict(g) for g in ours.param_groups] == before


def test_a_refused_lambda_changes_nothing():
    """A user's lr_lambda refused at the first step records no initial lrs (a later
    scheduler starts from the lrs of its own time), and mid-run leaves the epoch and lrs."""
    ours, _ = both_optimizers()
    with pytest.raises(ValueError, match=r"lr \* lr_lambda\(0\) for param_groups\[0\]"):
        S.LambdaLR(ours, lambda epoch: -1.0)
    ours.param_groups[0]["lr"] = 0.3
    assert S.StepLR(ours, step_size=2).base_lrs == [0.3, 0.05]

    ours, _ = both_optimizers()
    sched = S.MultiplicativeLR(ours, lambda epoch: 0.5 if epoch < 3 else float("nan"))
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match=r"lr_lambda\(3\) for param_groups\[0\] must be "
                                         "finite"):
        sched.step()
    assert sched.last_epoch == 2 and sched.get_last_lr() == [0.025, 0.0125]
    assert [g["lr"] for g in ours.param_groups] == [0.025, 0.0125]


class Warmup:
    """A callable object as lr_lambda: its attributes are saved, as torch saves them."""

    def __init__(self, epochs):
        self.epochs, self.calls = epochs, 0

    def __call__(self, epoch):
        self.calls += 1
        return min(1.0, (epoch + 1) / self.epochs)


@pytest.mark.parametrize("kind", ["LambdaLR", "MultiplicativeLR"])
def test_lambda_state_keeps_a_callable_objects_attributes_not_a_functions(kind):
    ours, theirs = both_optimizers()
    mine = getattr(S, kind)(ours, [Warmup(4), lambda epoch: 0.9])
    torchs = getattr(torch.optim.lr_scheduler, kind)(theirs, [Warmup(4), lambda epoch: 0.9])
    for _ in range(5):
        theirs.step()  # no grads: nothing moves, and torch does not warn about the order
        mine.step()
        torchs.step()
    saved = mine.state_dict()
    assert saved["lr_lambdas"] == torchs.state_dict()["lr_lambdas"]  # called as often, too
    assert saved["lr_lambdas"][1] is None and saved["lr_lambdas"][0]["epochs"] == 4
    resumed = getattr(S, kind)(both_optimizers()[0], [Warmup(10), lambda epoch: 0.9])
    resumed.load_state_dict(saved)
    assert vars(resumed.lr_lambdas[0]) == saved["lr_lambdas"][0]
    assert resumed.state_dict() == saved
    # an object's attributes have nowhere to go in a plain function: refused, whole
    plain = getattr(S, kind)(both_optimizers()[0], lambda epoch: 0.9)
    before = plain.state_dict()
    with pytest.raises(ValueError, match=r"\['lr_lambdas'\]\[0\] holds a callable object's "
                                         r"attributes, but this scheduler's lr_lambda\[0\] "
                                         "is a function"):
        plain.load_state_dict(saved)
    assert plain.state_dict() == before


@pytest.mark.parametrize("name, key", [("RMSprop", "momentum"), ("NAdam", "betas")])
def test_cyclic_momentum_cycles_like_torchs(name, key):
    """The momentum (RMSprop's group["momentum"], NAdam's beta1) runs opposite to the lr,
    max_momentum at base_lr; beta2 is left alone."""
    ours, theirs = both_optimizers(name)
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=3, step_size_down=5, mode="triangular2",
                  base_momentum=0.7, max_momentum=[0.95, 0.9])
    mine = S.CyclicLR(ours, **kwargs)
    torchs = torch.optim.lr_scheduler.CyclicLR(theirs, **kwargs)
    seen = []
    for epoch in range(24):
        momenta = [g[key] for g in ours.param_groups]
        np.testing.assert_allclose(momenta, [g[key] for g in theirs.param_groups], rtol=1e-12,
                                   err_msg=f"epoch {epoch}")
        seen.append(momenta[0] if key == "momentum" else momenta[0][0])
        np.testing.assert_allclose(mine.get_last_lr(), torchs.get_last_lr(), rtol=1e-12)
        ours.step([np.ones(2), np.ones(3)])
        theirs.step()
        mine.step()
        torchs.step()
    assert max(seen) == 0.95 and min(seen) == pytest.approx(0.7)  # it did cycle
    if key == "betas":
        assert all(g["betas"][1] == 0.999 for g in ours.param_groups)


def test_cyclic_momentum_needs_an_optimizer_with_one():
    ours = nopt.Adagrad([{"params": [np.zeros(2)], "lr": 0.1}])
    before = [dict(g) for g in ours.param_groups]
    with pytest.raises(ValueError, match="cycle_momentum=True needs an optimizer with momentum "
                                         "or betas, and Adagrad has neither"):
        S.CyclicLR(ours, base_lr=0.01, max_lr=0.1)
    assert [dict(g) for g in ours.param_groups] == before
    with pytest.raises(ValueError):  # torch refuses it too
        torch.optim.lr_scheduler.CyclicLR(torch.optim.Adagrad([torch.zeros(2)]), 0.01, 0.1)
    S.CyclicLR(ours, base_lr=0.01, max_lr=0.1, cycle_momentum=False)
    assert ours.param_groups[0]["lr"] == 0.01


# torch's way (a fractional epoch every batch), then plain steps, a jump back, and for
# T_mult=10 the restart at epoch 111 that torch's float log rounds into the period before
WARM_EPOCHS = [e + b / 4 for e in range(12) for b in range(4)] + [
    None, None, 2.5, None, 0, 7, 111, 111.5, None, 30.25, 1110, 1111]


@pytest.mark.parametrize("T_0, T_mult", [(3, 1), (2, 2), (1, 10)])
def test_warm_restarts_at_fractional_epochs_equal_torchs(T_0, T_mult):  # noqa: N803
    ours, theirs = both_optimizers()
    mine = S.CosineAnnealingWarmRestarts(ours, T_0=T_0, T_mult=T_mult, eta_min=1e-3)
    torchs = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        theirs, T_0=T_0, T_mult=T_mult, eta_min=1e-3)
    for epoch in WARM_EPOCHS:
        mine.step(epoch)
        torchs.step(epoch)
        np.testing.assert_allclose(mine.get_last_lr(), torchs.get_last_lr(), rtol=1e-12,
                                   err_msg=f"epoch {epoch}")
        assert (mine.T_i, mine.last_epoch) == (torchs.T_i, torchs.last_epoch)
        assert mine.T_cur == pytest.approx(torchs.T_cur, rel=1e-12, abs=1e-12)
    if T_mult == 10:
        mine.step(111)
        assert mine.get_last_lr() == pytest.approx([1e-3, 1e-3])  # torch's rounding, kept


def test_warm_restarts_refuse_a_bad_epoch_and_change_nothing():
    ours, _ = both_optimizers()
    sched = S.CosineAnnealingWarmRestarts(ours, T_0=3)
    sched.step(1.5)
    before = sched.state_dict()
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        sched.step(-1)
    with pytest.raises(TypeError, match="epoch must be a real number"):
        sched.step("2")
    with pytest.raises(ValueError, match="epoch must be finite"):
        sched.step(float("inf"))
    assert sched.state_dict() == before


BAD_STATES = [
    ("ConstantLR", lambda sd: sd.update(factor=0.0), ValueError, r"\['factor'\] must be > 0"),
    ("ConstantLR", lambda sd: sd.update(total_iters=0), ValueError,
     r"\['total_iters'\] must be >= 1"),
    ("PolynomialLR", lambda sd: sd.update(power=-1.0), ValueError, r"\['power'\] must be >= 0"),
    ("LambdaLR-per-group", lambda sd: sd.update(lr_lambdas=[None]), ValueError,
     r"\['lr_lambdas'\] has 1 entries for 2 param groups"),
    ("MultiplicativeLR", lambda sd: sd["lr_lambdas"].__setitem__(1, "f"), TypeError,
     r"\['lr_lambdas'\]\[1\] must be None or a dict"),
    ("LambdaLR", lambda sd: sd.pop("lr_lambdas"), ValueError, r"missing keys \['lr_lambdas'\]"),
    ("CyclicLR", lambda sd: sd.update(step_ratio=0.0), ValueError,
     r"\['step_ratio'\] must be > 0"),
    ("CyclicLR", lambda sd: sd.update(total_size=-4.0), ValueError,
     r"\['total_size'\] must be > 0"),
    ("CyclicLR", lambda sd: sd.update(mode="cosine"), ValueError, r"\['mode'\] must be one of"),
    ("CyclicLR", lambda sd: sd["max_lrs"].pop(), ValueError,
     r"\['max_lrs'\] has 1 lrs for 2 param groups"),
    ("CyclicLR", lambda sd: sd["max_momentums"].pop(), ValueError,
     r"\['max_momentums'\] has 1 momenta for 2 param groups"),
    ("CyclicLR", lambda sd: sd.update(use_beta1=True), ValueError,
     r"\['use_beta1'\] is True, but SGD cycles momentum"),
    ("CyclicLR", lambda sd: sd.update(cycle_momentum=False), ValueError,
     r"unknown keys \['base_momentums', 'max_momentums', 'use_beta1'\]"),
    ("CyclicLR-exp_range", lambda sd: sd.update(cycle_momentum=True), ValueError,
     r"missing keys \['base_momentums', 'max_momentums', 'use_beta1'\]"),
    ("CyclicLR", lambda sd: sd.update(_scale_fn_custom={"k": 1}), ValueError,
     r"\['_scale_fn_custom'\] holds a callable object's attributes, but this scheduler's "
     "scale_fn is None"),
    ("CosineAnnealingWarmRestarts-T_mult", lambda sd: sd.update(T_i=6), ValueError,
     r"\['T_i'\] is 6: a period is T_0 \(2\) times a power of T_mult \(2\)"),
    ("CosineAnnealingWarmRestarts", lambda sd: sd.update(T_cur=-1), ValueError,
     r"\['T_cur'\] must be >= 0"),
    ("CosineAnnealingWarmRestarts", lambda sd: sd.update(T_mult=1.5), TypeError,
     r"\['T_mult'\] must be an int"),
    # the first sub-state is fine: nothing of it may load before the second is checked
    ("SequentialLR-constant-restarts", lambda sd: sd["schedulers"][1].update(T_0=0),
     ValueError, r"state_dict\['schedulers'\]\[1\]\['T_0'\] must be >= 1"),
]


@pytest.mark.parametrize("name, change, error, message", BAD_STATES,
                         ids=[f"{case[0]}-{k}" for k, case in enumerate(BAD_STATES)])
def test_bad_states_are_refused_whole(name, change, error, message):
    opt, _ = both_optimizers()
    scheduler = SCHEDULES[name](S, opt)
    run(scheduler, opt, 4)
    saved = scheduler.state_dict()
    change(saved)
    subs = getattr(scheduler, "_schedulers", [])
    before = (scheduler.state_dict(), [s.state_dict() for s in subs],
              [dict(g) for g in opt.param_groups])
    with pytest.raises(error, match=message):
        scheduler.load_state_dict(saved)
    assert (scheduler.state_dict(), [s.state_dict() for s in subs],
            [dict(g) for g in opt.param_groups]) == before


def test_cyclic_state_from_another_mode_takes_that_modes_scale():
    """As torch: a CyclicLR without scale_fn scales as the loaded mode does."""
    opt, _ = both_optimizers()
    source = SCHEDULES["CyclicLR-exp_range"](S, opt)
    run(source, opt, 5)
    target_opt, _ = both_optimizers()
    target = S.CyclicLR(target_opt, 0.01, 0.1, step_size_up=5, cycle_momentum=False)
    target.load_state_dict(source.state_dict())
    assert (target.mode, target.scale_mode) == ("exp_range", "iterations")
    assert run(target, target_opt, 8) == run(source, opt, 8)


class Halving:
    """A callable object as CyclicLR's scale_fn: saved as torch saves it."""

    def __init__(self):
        self.calls = 0

    def __call__(self, cycle):
        self.calls += 1
        return 0.5 ** (cycle - 1)


def test_cyclic_state_keeps_a_callable_scale_fns_attributes():
    ours, theirs = both_optimizers()
    mine = S.CyclicLR(ours, 0.01, 0.1, step_size_up=2, scale_fn=Halving())
    torchs = torch.optim.lr_scheduler.CyclicLR(theirs, 0.01, 0.1, step_size_up=2,
                                               scale_fn=Halving())
    for _ in range(6):
        ours.step([np.ones(2), np.ones(3)])
        theirs.step()
        mine.step()
        torchs.step()
    np.testing.assert_allclose(mine.get_last_lr(), torchs.get_last_lr(), rtol=1e-12)
    saved = mine.state_dict()
    # called as often as torch's: once per group for the lrs and once for the momenta
    assert saved["_scale_fn_custom"] == torchs.state_dict()["_scale_fn_custom"] == {"calls": 28}
    resumed = S.CyclicLR(both_optimizers()[0], 0.01, 0.1, step_size_up=2, scale_fn=Halving())
    resumed.load_state_dict(saved)
    assert resumed._scale_fn_custom.calls == 28 and resumed.state_dict() == saved
