"""Rprop's and ASGD's own behaviour beyond the CASES table: the state torch starts at a param's
first step (Rprop's step sizes at the lr of that moment, ASGD's eta and mu), ASGD's host
scalars through skipped params, lr edits and a resume, and their validation."""
import numpy as np
import pytest

import numba_opt as nopt
import numba_opt.functional as F
from cases import TOLERANCE, make_grads, make_params
from reference import RULES


def run_beside_torch(name, kwargs, history, edits):
    """Step torch.optim's ``name`` (single-tensor loop, float64 host scalars) through
    ``history`` (grads per step, None skips a param), applying ``edits[step]`` (group entries)
    before that step; returns its params."""
    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tensors = [torch.tensor(p) for p in make_params(np.float64, shapes=SHAPES)]
        opt = getattr(torch.optim, name)(tensors, foreach=False, **kwargs)
        for step, grads in enumerate(history, 1):
            opt.param_groups[0].update(edits.get(step, {}))
            for t, g in zip(tensors, grads):
                t.grad = None if g is None else torch.from_numpy(g)
            opt.step()
    finally:
        torch.set_default_dtype(previous)
    return [t.numpy() for t in tensors]


SHAPES = [(6,), (3, 2)]
# lr edits between steps (a scheduler's), while param 1 skips steps 2-4: its state starts late
EDITS = {3: {"lr": 0.02}, 6: {"lr": 0.005}}
RUNS = [("Rprop", {"lr": 0.01}), ("ASGD", {"lr": 0.05, "lambd": 1e-2, "t0": 2.0})]


@pytest.mark.parametrize("name, kwargs", RUNS, ids=[r[0] for r in RUNS])
def test_state_started_late_and_lr_edits_follow_torch_and_survive_a_resume(name, kwargs):
    """Rprop fills a param's step sizes with the lr of its first step and ignores lr later;
    ASGD's eta and mu, computed at the end of each step for the next with that step's lr, are
    per param: a param whose grad is None keeps its own.  A state_dict taken mid-run carries
    them, and the resumed run repeats the trajectory bit for bit."""
    params = make_params(np.float64, shapes=SHAPES)
    opt = getattr(nopt, name)(params, **kwargs)
    ref, ref_state = [p.copy() for p in params], [{}, {}]
    history, checkpoint, saved = [], None, None
    for step in range(1, 11):
        grads = make_grads(params, step)
        if step in (1, 2, 3, 4):
            grads[1] = None
        opt.param_groups[0].update(EDITS.get(step, {}))
        opt.step(grads)
        history.append(grads)
        hyper = {**kwargs, **{k: v for e in (EDITS[s] for s in EDITS if s <= step) for k, v in
                              e.items()}}
        for p, g, st in zip(ref, grads, ref_state):
            if g is not None:
                RULES[name](p, g, st, **hyper)
        if step == 5:
            checkpoint, saved = opt.state_dict(), [p.copy() for p in params]
    assert opt.state[0]["step"] == 10 and opt.state[1]["step"] == 6
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, **TOLERANCE[np.float64])
    if name == "Rprop":  # param 1 started at lr 0.02 (edited before step 3), param 0 at 0.01
        assert ref_state[1]["step_size"].max() != ref_state[0]["step_size"].max()
    else:
        for state, ref_entry in zip(opt.state, ref_state):
            assert state["eta"] == pytest.approx(ref_entry["eta"], rel=1e-15)
            assert state["mu"] == ref_entry["mu"]
        assert opt.state[0]["mu"] != opt.state[1]["mu"]

    resumed_params = [p.copy() for p in saved]
    resumed = getattr(nopt, name)(resumed_params, **kwargs)
    resumed.load_state_dict(checkpoint)
    for step, grads in enumerate(history[5:], 6):
        resumed.param_groups[0].update(EDITS.get(step, {}))
        resumed.step(grads)
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)

    for p, t in zip(params, run_beside_torch(name, kwargs, history, EDITS)):
        np.testing.assert_allclose(p, t, rtol=1e-10, atol=1e-12)


def test_asgd_step_returns_the_eta_and_mu_to_pass_on():
    """Passing asgd_step's (eta, mu) back in equals the closed form (None) and the class while
    the hyper-parameters stay; after an lr edit only the passed-on values follow the class."""
    params = make_params(np.float64, shapes=[(9,)])
    chained, closed = params[0].copy(), params[0].copy()
    axes = [np.zeros(9), np.zeros(9)]
    opt = nopt.ASGD(params, lr=0.05, t0=3.0)
    eta, mu = None, None
    for step in range(1, 8):
        grad = make_grads(params, step)[0]
        opt.step([grad])
        eta, mu = F.asgd_step(chained, grad, axes[0], step=step, eta=eta, mu=mu, lr=0.05,
                              t0=3.0)
        F.asgd_step(closed, grad, axes[1], step=step, lr=0.05, t0=3.0)
    assert (eta, mu) == (opt.state[0]["eta"], opt.state[0]["mu"])
    assert mu == 1 / (7 - 3)
    np.testing.assert_array_equal(chained, params[0])
    np.testing.assert_array_equal(closed, params[0])
    np.testing.assert_array_equal(axes[0], opt.state[0]["ax"])
    opt.param_groups[0]["lr"] = 0.01
    grad = make_grads(params, 8)[0]
    opt.step([grad])
    F.asgd_step(chained, grad, axes[0], step=8, eta=eta, mu=mu, lr=0.01, t0=3.0)
    F.asgd_step(closed, grad, axes[1], step=8, lr=0.01, t0=3.0)
    np.testing.assert_array_equal(chained, params[0])
    assert not np.array_equal(closed, params[0])


def test_rprop_step_starts_its_state_at_step_one():
    """At step 1 rprop_step fills step_size with lr and takes prev as 0, whatever they held."""
    params = make_params(np.float64, shapes=[(9,)])
    mine = params[0].copy()
    prev, step_size = np.full(9, 7.0), np.full(9, -3.0)
    opt = nopt.Rprop(params, lr=0.03)
    for step in range(1, 5):
        grad = make_grads(params, step)[0]
        opt.step([grad])
        F.rprop_step(mine, grad, prev, step_size, step=step, lr=0.03)
    np.testing.assert_array_equal(mine, params[0])
    np.testing.assert_array_equal(step_size, opt.state[0]["step_size"])
    np.testing.assert_array_equal(prev, opt.state[0]["prev"])


def test_rprop_clamps_the_first_step_size_and_stops_moving_after_a_sign_flip():
    param = np.zeros(3)
    opt = nopt.Rprop([param], lr=1.0, etas=(0.5, 2.0), step_sizes=(0.1, 0.4))
    opt.step([np.array([1.0, -1.0, 0.0])])
    np.testing.assert_array_equal(param, [-0.4, 0.4, 0.0])  # lr 1 clamped to 0.4
    opt.step([np.array([-1.0, -1.0, 2.0])])  # flip, same sign, first sign
    np.testing.assert_array_equal(opt.state[0]["step_size"], [0.2, 0.4, 0.4])
    np.testing.assert_array_equal(param, [-0.4, 0.8, -0.4])  # the flipped one stays
    np.testing.assert_array_equal(opt.state[0]["prev"], [0.0, -1.0, 2.0])
    opt.step([np.array([-1.0, 1.0, 2.0])])  # after a flip, prev 0: step size kept
    np.testing.assert_array_equal(opt.state[0]["step_size"], [0.2, 0.2, 0.4])
    np.testing.assert_array_equal(param, [-0.2, 0.8, -0.8])


@pytest.mark.parametrize("make, error, message", [
    (lambda p: nopt.Rprop(p, etas=(0.5, 1.0)), ValueError, r"etas must satisfy 0 < etaminus"),
    (lambda p: nopt.Rprop(p, etas=(0.0, 1.2)), ValueError, r"etas must satisfy 0 < etaminus"),
    (lambda p: nopt.Rprop(p, etas=(1.0, 1.2)), ValueError, r"etas must satisfy 0 < etaminus"),
    (lambda p: nopt.Rprop(p, etas=0.5), TypeError, r"etas must be a pair"),
    (lambda p: nopt.Rprop(p, etas=(0.5, float("inf"))), ValueError, r"etas\[1\] must be finite"),
    (lambda p: nopt.Rprop(p, step_sizes=(-1e-6, 50)), ValueError,
     r"step_sizes\[0\] must be >= 0"),
    (lambda p: nopt.Rprop(p, step_sizes=(1.0, 0.5)), ValueError,
     r"step_sizes must satisfy step_size_min"),
    (lambda p: nopt.Rprop(p, step_sizes=(1e-6,)), TypeError, r"step_sizes must be a pair"),
    (lambda p: nopt.Rprop(p, step_sizes=(1e-6, "50")), TypeError, r"step_sizes\[1\] must be a"),
    (lambda p: nopt.Rprop(p, lr=-0.1), ValueError, r"lr must be >= 0"),
    (lambda p: nopt.Rprop(p, maximize=1), TypeError, r"maximize must be True or False"),
    (lambda p: nopt.ASGD(p, lr=-0.1), ValueError, r"lr must be >= 0"),
    (lambda p: nopt.ASGD(p, lambd=-1e-4), ValueError, r"lambd must be >= 0"),
    (lambda p: nopt.ASGD(p, alpha=-0.75), ValueError, r"alpha must be >= 0"),
    (lambda p: nopt.ASGD(p, t0=float("nan")), ValueError, r"t0 must be finite"),
    (lambda p: nopt.ASGD(p, t0=True), TypeError, r"t0 must be a real number"),
    (lambda p: nopt.ASGD(p, weight_decay=-0.1), ValueError, r"weight_decay must be >= 0"),
    (lambda p: nopt.ASGD(p, maximize="no"), TypeError, r"maximize must be True or False"),
], ids=["etaplus 1", "etaminus 0", "etaminus 1", "etas scalar", "etaplus inf", "min < 0",
        "min > max", "step_sizes short", "step_sizes string", "rprop lr", "rprop maximize",
        "asgd lr", "lambd", "alpha", "t0 nan", "t0 bool", "weight_decay", "asgd maximize"])
def test_hyper_parameters_are_checked(make, error, message):
    with pytest.raises(error, match=r"param_groups\[0\]: " + message):
        make([np.zeros(3)])


@pytest.mark.parametrize("key, value, error, message", [
    ("eta", -0.1, ValueError, r"\['eta'\] must be >= 0"),
    ("eta", float("nan"), ValueError, r"\['eta'\] must be finite"),
    ("mu", 0.0, ValueError, r"\['mu'\] must be in \(0, 1\]"),
    ("mu", 1.5, ValueError, r"\['mu'\] must be in \(0, 1\]"),
    ("mu", "1", TypeError, r"\['mu'\] must be a real number"),
])
def test_asgd_host_scalars_are_checked_on_load(key, value, error, message):
    params = [np.zeros(3)]
    opt = nopt.ASGD(params)
    opt.step([np.ones(3)])
    saved = opt.state_dict()
    saved["state"][0][key] = value
    before = (opt.state[0]["eta"], opt.state[0]["mu"], opt.state[0]["ax"].copy())
    with pytest.raises(error, match=message):
        opt.load_state_dict(saved)
    assert (opt.state[0]["eta"], opt.state[0]["mu"]) == before[:2]
    np.testing.assert_array_equal(opt.state[0]["ax"], before[2])


def test_asgd_eta_is_zero_where_its_decay_overflows():
    """Where torch's float arithmetic raises OverflowError, eta takes its limit, 0."""
    assert F.asgd_advance(10, lr=1e10, lambd=1e10, alpha=40.0, t0=0.0)["eta"] == 0.0
